"""Peak memory of a build against the activation-cache budget (not a test).

Builds the bench_engine fixture (random 2-layer model, d_model 256, standard SAE) at
N and 2N sequences with ``features.activation_cache_mb`` set below the size of the
hook activations, so both spill to the on-disk memmap, and once more at 2N with a
budget large enough to keep everything in memory. Each build runs in its own
process, which reports its own peak RSS. Doubling the data beyond the budget should
not raise peak RSS by more than 10%.

    python benchmarks/bench_memory.py                 # N = 1024 sequences x 128 tokens
    python benchmarks/bench_memory.py --n-seq 256     # quicker
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


def child(config: Path) -> None:
    sys.path.insert(0, str(HERE.parent))
    from sitegen.compute import build_feature_cache
    from sitegen.config import load_config
    from sitegen.sources import load_sources

    src = load_sources(load_config(config))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    manifest = build_feature_cache(src, config.parent / "cache", progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mib": peak / 1024, "after_load_mib": base / 1024,
                      "passes": manifest["stats"]["model_passes"]}))


def measure(args, n_seq: int, budget_mb: int, root: Path) -> dict:
    sys.path.insert(0, str(HERE))
    import bench_engine

    bench = bench_engine.parse([
        "--n-seq", str(n_seq), "--d-sae", str(args.d_sae), "--effects", args.effects, "--d-vocab", "4096",
    ])
    root.mkdir(parents=True)
    config = bench_engine.write_project(bench, root)
    cfg = yaml.safe_load(config.read_text())
    cfg["features"]["activation_cache_mb"] = budget_mb
    config.write_text(yaml.safe_dump(cfg))
    out = subprocess.run([sys.executable, __file__, "--child", str(config)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result.update(n_seq=n_seq, budget_mb=budget_mb, hook_mib=n_seq * 128 * 256 * 4 / 2**20)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", type=Path)
    p.add_argument("--n-seq", type=int, default=1024)
    p.add_argument("--d-sae", type=int, default=2048)
    p.add_argument("--budget-mb", type=int, default=32)
    p.add_argument("--effects", default="direct")
    args = p.parse_args()
    if args.child:
        return child(args.child)
    with tempfile.TemporaryDirectory(prefix="sitegen-mem-") as tmp:
        runs = [
            measure(args, args.n_seq, args.budget_mb, Path(tmp) / "n"),
            measure(args, 2 * args.n_seq, args.budget_mb, Path(tmp) / "2n"),
            measure(args, 2 * args.n_seq, 1_000_000, Path(tmp) / "2n-in-memory"),
        ]
    print(f"{'sequences':>9} {'hook acts MiB':>13} {'budget MiB':>10} {'peak RSS MiB':>12} {'after load':>10}")
    for r in runs:
        budget = "none" if r["budget_mb"] >= 1_000_000 else r["budget_mb"]
        print(f"{r['n_seq']:>9} {r['hook_mib']:>13.0f} {budget:>10} {r['peak_mib']:>12.0f} {r['after_load_mib']:>10.0f}")
    growth = runs[1]["peak_mib"] / runs[0]["peak_mib"] - 1
    print(f"doubling the data beyond the budget raised peak RSS by {growth:+.1%} (target <= +10%)")
    print(f"in memory instead of memmap at 2N: {runs[2]['peak_mib'] / runs[1]['peak_mib']:.2f} x the peak")


if __name__ == "__main__":
    main()
