"""Index page at 100,000 features: data size, render time, and in headless Chromium the
time to first paint and to each search (performance.now() in the page).

Usage: python benchmarks/bench_index.py [--features 100000]
Needs Debian chromium + chromedriver (/usr/bin). Prints one table; writes nothing outside a temp folder.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from chromium import chromium  # noqa: E402
from site_fixtures import DictSpec, index_rows, site_config, write_cache  # noqa: E402

from sitegen.cache.manifest import read_manifest  # noqa: E402
from sitegen.render.site import DictionaryListing, SiteWriter  # noqa: E402

QUERIES = ["1", "#12345", "the", "word12", "brackets", "zzzz", ""]
SEARCH = """
var done = arguments[arguments.length - 1], box = document.getElementById("search"), t0 = performance.now();
box.value = arguments[0];
box.dispatchEvent(new Event("input"));
var handled = performance.now() - t0;
requestAnimationFrame(function () { setTimeout(function () {
  done([handled, performance.now() - t0, document.getElementById("count").textContent]); }, 0); });
"""
SORT = """
var done = arguments[arguments.length - 1], t0 = performance.now();
document.querySelector('th[data-sort="' + arguments[0] + '"]').click();
var handled = performance.now() - t0;
requestAnimationFrame(function () { setTimeout(function () { done([handled, performance.now() - t0]); }, 0); });
"""


def build_index(folder: Path, n: int) -> tuple[float, int]:
    """Write index.html + assets/ for ``n`` synthetic features; returns (seconds, data bytes)."""
    cache = write_cache(
        folder / "cache", [DictSpec(name="sae", feature_ids=(0,)), DictSpec(name="mlp", feature_ids=(0,))]
    )
    rows = index_rows(n)
    start = time.perf_counter()
    writer = SiteWriter(folder / "site", cache, site_config(folder), read_manifest(cache), {}, [])
    listings = [
        DictionaryListing(
            name,
            "sae",
            "blocks.6.hook_resid_post",
            262_144,
            sum(r.dict_index == d for r in rows),
            sum(r.dead and r.dict_index == d for r in rows),
        )
        for d, name in enumerate(["sae", "mlp"])
    ]
    writer.write_index(rows, listings)
    return time.perf_counter() - start, (folder / "site" / "assets" / "index-data.js").stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--features", type=int, default=100_000)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="sitegen-bench-index-"))
    try:
        seconds, data_bytes = build_index(folder, args.features)
        print(f"features: {args.features:,}")
        print(f"index-data.js: {data_bytes:,} bytes = {data_bytes / args.features:.1f} bytes/feature")
        print(f"render index (python): {seconds * 1000:.0f} ms")
        with chromium(folder / "profile") as driver:
            driver.set_script_timeout(30)
            driver.get((folder / "site" / "index.html").as_uri())
            drawn = driver.execute_script("return performance.getEntriesByName('sitegen-index-drawn')[0].startTime")
            paint = driver.execute_script(
                "var p = performance.getEntriesByName('first-contentful-paint')[0]; return p ? p.startTime : null"
            )
            print(f"first rows drawn (since navigation start): {drawn:.0f} ms")
            print(f"first contentful paint: {paint:.0f} ms" if paint else "first contentful paint: n/a")
            for key in ("density", "top", "id"):
                handled, painted = driver.execute_async_script(SORT, key)
                print(f"sort all by {key!r:>9}: handler {handled:6.1f} ms, to next frame {painted:6.1f} ms")
            for query in QUERIES:
                handled, painted, count = driver.execute_async_script(SEARCH, query)
                print(f"search {query!r:>10}: handler {handled:6.1f} ms, to next frame {painted:6.1f} ms ({count})")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
