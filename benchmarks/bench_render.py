"""``sitegen render`` of a synthetic cache of many features (not a test): how long the
command takes to start (its imports: no torch) and to write every page, in its process pool
and sequentially.

Usage: python benchmarks/bench_render.py [--features 10000]
Writes a synthetic cache (tests/site_fixtures.py) and the site into a temp folder; prints
the start-up time (a fresh process importing the CLI and everything render uses), beside the
import of torch alone for scale, then the wall time, ms per page and pages per second of
``sitegen render`` (feature pages in a pool of one worker per core) and of the same render in
one process (``render_site(..., workers=1)``), each a fresh process timed from start to end.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from site_fixtures import DictSpec, write_cache  # noqa: E402

from sitegen.config import load_config  # noqa: E402
from sitegen.render import scaffold_project  # noqa: E402
from sitegen.render.pages_pool import pool_size  # noqa: E402

START = "import time; t = time.perf_counter(); import {modules}; print(time.perf_counter() - t)"
SEQUENTIAL = (
    "from sitegen.config import load_config; from sitegen.render import render_site; "
    "cfg = load_config('site_config.yaml'); render_site(cfg.resolve(cfg.cache), cfg, cfg.resolve(cfg.out), workers=1)"
)


def import_seconds(modules: str) -> float:
    """Best of three fresh processes."""
    runs = [
        float(
            subprocess.run(
                [sys.executable, "-c", START.format(modules=modules)], capture_output=True, text=True, check=True
            ).stdout
        )
        for _ in range(3)
    ]
    return min(runs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--features", type=int, default=10_000)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="sitegen-bench-render-"))
    try:
        scaffold_project(folder)
        cfg = load_config(folder / "site_config.yaml")
        spec = DictSpec(
            name="mlp-l6",
            kind="neurons",
            hook_name="blocks.6.mlp.hook_post",
            d_sae=args.features,
            feature_ids=tuple(range(args.features)),
        )
        config = folder / "site_config.yaml"
        config.write_text(config.read_text().replace('features: "0:128"', f'features: "0:{args.features}"'))
        write_cache(folder / cfg.cache, [spec], config=load_config(config), batch_size=256)
        cli = import_seconds("sitegen.cli, sitegen.render, sitegen.cache.files, sitegen.cache.manifest")
        torch = import_seconds("torch")
        n_batches = len(list((folder / cfg.cache / "features").glob("*/*.json")))
        workers = pool_size(args.features, n_batches, None)
        print(f"features: {args.features:,} in {n_batches} batch files")
        print(f"start (import of the CLI and render, best of 3): {cli:.2f} s; torch alone: {torch:.2f} s")
        for label, code in [
            (f"sitegen render, {workers} worker(s)", "from sitegen.cli import main; main()"),
            ("sequential (workers=1)", SEQUENTIAL),
        ]:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code, "render"], cwd=folder, check=True, capture_output=True)
            total = time.perf_counter() - t0
            print(
                f"{label}: {total:.1f} s, {total * 1000 / args.features:.2f} ms/page, "
                f"{args.features / total:,.0f} pages/s"
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
