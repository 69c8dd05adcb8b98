"""Benchmark of the attention-head records (not a test).

Loads a site config (default: the embedded default, ``site_config.yaml``: Gemma-3-270M over
the bundled corpus) and, for an ``attention_heads`` dictionary over ``--layers`` (default all),
times the one model pass through every block with and without the head recorders (best of
``--repeats`` each, the same pass capturing the final residual stream as a site with effects
does), and prints the extra seconds and the ratio. Then it builds that heads-only feature cache,
renders it, and prints the head pages' sizes (min / median / max KB) and the share of a page
that is its JSON data.

    python benchmarks/bench_heads.py                    # the figures in benchmarks/README.md
    python benchmarks/bench_heads.py --layers 5,6,7 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sitegen.compute import build_feature_cache  # noqa: E402
from sitegen.compute.activations import capture_activations, final_resid_hook  # noqa: E402
from sitegen.compute.heads import HeadRecorder  # noqa: E402
from sitegen.config import load_config  # noqa: E402
from sitegen.render import render_site  # noqa: E402
from sitegen.sources import load_sources  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "site_config.yaml"))
    p.add_argument("--layers", default="all", help='"all" or a comma-separated list')
    p.add_argument("--repeats", type=int, default=2)
    return p.parse_args()


def heads_config(args, folder: Path) -> Path:
    """The config with its dictionaries replaced by one heads dictionary (paths made absolute)."""
    base = Path(args.config).resolve()
    raw = yaml.safe_load(base.read_text())
    layers = "all" if args.layers == "all" else [int(x) for x in args.layers.split(",")]
    raw["dictionaries"] = [{"name": "heads", "kind": "attention_heads", "layers": layers}]
    raw["dataset"]["paths"] = [str((base.parent / p).resolve()) for p in raw["dataset"]["paths"]]
    raw["site"] = {"title": "heads benchmark"}
    raw["cache"], raw["out"] = str(folder / "cache"), str(folder / "site")
    path = folder / "site_config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def pass_seconds(src, folder: Path, with_heads: bool) -> tuple[float, float]:
    """(seconds of one model pass through every block, of it in the recorders' hooks)."""
    model, fc = src.model, src.config.features
    recorders = [
        HeadRecorder(h, model, tokens=src.data.tokens, ignore=src.data.ignore, fc=fc, hc=src.config.heads, seed=0)
        for h in src.heads
    ]
    widths = {final_resid_hook(model): model.cfg.d_model}
    t0 = time.perf_counter()
    cache = capture_activations(
        model,
        src.data.tokens,
        widths,
        fc.token_batch_size,
        fc.activation_cache_mb,
        folder,
        False,
        recorders if with_heads else [],
    )
    seconds = time.perf_counter() - t0
    cache.close()
    return seconds, sum(r.seconds for r in recorders)


def main() -> None:
    args = parse()
    with tempfile.TemporaryDirectory(prefix="sitegen-bench-heads-") as tmp:
        folder = Path(tmp)
        cfg = load_config(heads_config(args, folder))
        src = load_sources(cfg)
        n_heads = sum(len(h.feature_ids) for h in src.heads)
        n_seq, ctx = src.data.tokens.shape
        print(f"{n_heads} heads over {n_seq} x {ctx} tokens; layers {args.layers}")
        plain, heads, inside = [], [], []
        for _ in range(args.repeats):  # interleaved: the machine is shared
            plain.append(pass_seconds(src, folder, False)[0])
            s, r = pass_seconds(src, folder, True)
            heads.append(s)
            inside.append(r)
        p, h = min(plain), min(heads)
        print(f"model pass (every block): {p:.1f} s; with head records {h:.1f} s (+{h - p:.1f} s, {h / p:.2f}x)")
        per_head = min(inside) / n_heads * 1000
        print(f"  of which in the recorders' hooks: {min(inside):.1f} s ({per_head:.0f} ms per head)")
        t0 = time.perf_counter()
        build_feature_cache(src, folder / "cache", progress=False)
        t1 = time.perf_counter()
        render_site(folder / "cache", cfg, folder / "site")
        t2 = time.perf_counter()
        pages = sorted((folder / "site" / "features").rglob("*.html"))
        sizes = [p.stat().st_size / 1000 for p in pages]
        data = []
        for page in pages:
            text = page.read_text(encoding="utf-8")
            start = text.find('id="data">')
            data.append((text.find("</script>", start) - start) / max(len(text), 1))
        print(f"heads-only cache {t1 - t0:.1f} s, render {t2 - t1:.1f} s ({len(pages)} pages)")
        print(
            f"head pages: min {min(sizes):.1f} KB, median {statistics.median(sizes):.1f} KB, max {max(sizes):.1f} KB;"
            f" JSON data {statistics.median(data) * 100:.0f}% of a page (median)"
        )


if __name__ == "__main__":
    main()
