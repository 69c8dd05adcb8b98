"""Peak memory of a build against the activation-cache budget (not a test).

Builds the bench_engine fixture (random 2-layer model, d_model 256, standard SAE) at
N and 2N sequences with ``features.activation_cache_mb`` set below the size of the
hook activations, so both spill to the on-disk memmap, and once more at 2N with a
budget large enough to keep everything in memory; then at N, building only the first
quarter of the dictionary's features. Each build runs in its own process, which
reports the peak RSS of loading the sources and, separately, of the build itself
(Linux: VmHWM, reset after loading). Doubling the data beyond the budget should not
raise the build's peak by more than 10%, and building 4x the features (4x the
feature batches) should not raise it at all beyond noise.

    python benchmarks/bench_memory.py                 # N = 1024 sequences x 128 tokens
    python benchmarks/bench_memory.py --n-seq 256     # quicker
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


def child(config: Path) -> None:
    sys.path.insert(0, str(HERE.parent))
    sys.path.insert(0, str(HERE))
    from bench_engine import peak_rss_mib, reset_peak_rss

    from sitegen.compute import build_feature_cache
    from sitegen.config import load_config
    from sitegen.sources import load_sources

    src = load_sources(load_config(config))
    load = peak_rss_mib()
    if not reset_peak_rss():
        raise SystemExit("needs Linux's /proc/self/clear_refs to separate the build's peak from the loading's")
    anon = AnonPeak()
    manifest = build_feature_cache(src, config.parent / "cache", progress=False)
    print(
        json.dumps(
            {
                "peak_mib": peak_rss_mib(),
                "anon_mib": anon.stop(),
                "load_mib": load,
                "passes": manifest["stats"]["model_passes"],
            }
        )
    )


class AnonPeak:
    """Peak of RssAnon (heap, not the page cache of memmapped files, which VmHWM also counts
    and the kernel can drop), sampled every 5 ms by a thread."""

    def __init__(self):
        self.peak, self.done = 0.0, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.done.wait(0.005):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    self.peak = max(self.peak, int(line.split()[1]) / 1024)

    def stop(self) -> float:
        self.done.set()
        self.thread.join()
        return self.peak


def measure(args, n_seq: int, budget_mb: int, root: Path, features: str | None = None) -> dict:
    sys.path.insert(0, str(HERE))
    import bench_engine

    bench = bench_engine.parse(
        [
            "--n-seq",
            str(n_seq),
            "--d-sae",
            str(args.d_sae),
            "--effects",
            args.effects,
            "--d-vocab",
            "4096",
        ]
    )
    root.mkdir(parents=True)
    config = bench_engine.write_project(bench, root)
    cfg = yaml.safe_load(config.read_text())
    cfg["features"]["activation_cache_mb"] = budget_mb
    if features:
        cfg["dictionaries"][0]["features"] = features
    config.write_text(yaml.safe_dump(cfg))
    out = subprocess.run([sys.executable, __file__, "--child", str(config)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result.update(
        n_seq=n_seq, budget_mb=budget_mb, hook_mib=n_seq * 128 * 256 * 4 / 2**20, features=features or f"0:{args.d_sae}"
    )
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
            measure(args, args.n_seq, args.budget_mb, Path(tmp) / "n-quarter", f"0:{args.d_sae // 4}"),
        ]
    print(
        f"{'sequences':>9} {'hook acts MiB':>13} {'budget MiB':>10} {'features':>10} {'build peak MiB':>14} "
        f"{'of it heap':>10} {'load peak':>9}"
    )
    for r in runs:
        budget = "none" if r["budget_mb"] >= 1_000_000 else r["budget_mb"]
        print(
            f"{r['n_seq']:>9} {r['hook_mib']:>13.0f} {budget:>10} {r['features']:>10} {r['peak_mib']:>14.0f} "
            f"{r['anon_mib']:>10.0f} {r['load_mib']:>9.0f}"
        )
    for key, what in (("peak_mib", "peak RSS"), ("anon_mib", "peak heap (RssAnon)")):
        growth = runs[1][key] / runs[0][key] - 1
        print(f"doubling the data beyond the budget raised the {what} by {growth:+.1%} (target <= +10%)")
        print(
            f"  in memory instead of memmap at 2N: {runs[2][key] / runs[1][key]:.2f} x; building all {args.d_sae} "
            f"features instead of {args.d_sae // 4}: {runs[0][key] / runs[3][key] - 1:+.1%} (target: none)"
        )


if __name__ == "__main__":
    main()
