"""The local executor against Ray with 1 and 2 workers, on the engine benchmark's fixture
(bench_engine.py: random 2-layer model, 4,096-feature SAE, 262,144 tokens), cut the same way
for every run (``--token-shards``, ``--feature-shards``), so every run writes the same bytes
(checked). Prints each run's time per stage and the Ray runs' overhead over the local one,
then a projection of a large build from the measured per-shard throughputs.

The floor of a Ray run is the local run of the same shards: the same work in one process.
A Ray run's time is ``build_feature_cache`` with its actors already up; starting Ray and the
actors (each loads the sources) is printed apart. One worker gets both cores (``num_cpus``
2, so its torch uses 2 threads like the local run); two workers get one core each.

    python benchmarks/bench_executors.py             # the full fixture
    python benchmarks/bench_executors.py --small     # 256 sequences, 1,024 features
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import bench_engine  # noqa: E402
import ray  # noqa: E402
import yaml  # noqa: E402

from sitegen.compute import build_feature_cache  # noqa: E402
from sitegen.compute.executors import RayExecutor  # noqa: E402
from sitegen.config import load_config  # noqa: E402
from sitegen.sources import load_sources  # noqa: E402

STAGES = ("token shards", "feature shards", "hovers", "writing", "finish")


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def config_with_shards(config: Path, args) -> Path:
    cfg = yaml.safe_load(config.read_text())
    cfg["executor"] = {"token_shards": args.token_shards, "feature_shards": args.feature_shards}
    config.write_text(yaml.safe_dump(cfg))
    return config


def run_local(config: Path, cache: Path) -> dict:
    src = load_sources(load_config(config))
    t0 = time.perf_counter()
    stats = build_feature_cache(src, cache, progress=False)["stats"]
    return {"total": time.perf_counter() - t0, **stats["seconds"], "n_hovers": stats.get("hovers", 0)}


def run_ray(config: Path, cache: Path, workers: int) -> dict:
    cfg = load_config(config)
    cfg.executor.kind, cfg.executor.workers, cfg.executor.num_cpus = "ray", workers, 2 / workers
    t0 = time.perf_counter()
    executor = RayExecutor(cfg, workers)
    ray.get([a.run.remote(lambda s, b, k: {}, None, 0) for a in executor.actors])  # actors loaded
    start = time.perf_counter() - t0
    try:
        src = load_sources(cfg)
        t0 = time.perf_counter()
        stats = build_feature_cache(src, cache, progress=False, executor=executor)["stats"]
        total = time.perf_counter() - t0
    finally:
        executor.close()
    per_shard = {name: sorted(times) for name, times in executor.seconds.items()}
    return {"total": total, **stats["seconds"], "start": start, "per_shard": per_shard}


def row(name: str, r: dict, floor: float | None) -> str:
    cells = [f"{r.get(s, 0.0):6.1f}" for s in STAGES]
    ratio = "" if floor is None else f"{r['total'] / floor:5.2f}x ({100 * (r['total'] / floor - 1):+.0f} %)"
    start = f"{r['start']:5.1f}" if "start" in r else "    -"
    return f"{name:<22} {r['total']:6.1f}  " + "  ".join(cells) + f"  {start}  {ratio}"


def project(local: dict, n_hovers: int, n_tok: int, n_features: int) -> list[str]:
    """A large build from this run's rates per worker (a projection: CPU workers, this fixture's
    model and vocabulary). Scaling: token shards with tokens x dictionary size (the encode and
    the Gram partials), feature shards with features x tokens (each feature's activations),
    hovers with features (a feature shows a fixed number of examples)."""
    big_tok, big_features, workers = 10_000_000, 16_384, 8
    tok_rate = n_tok / local["token shards"]
    feat_rate = n_features / local["feature shards"]
    hover_rate = n_hovers / max(local.get("hovers", 0.0), 1e-9)
    token_seconds = big_tok / tok_rate * (big_features / n_features)
    feature_seconds = big_features / feat_rate * (big_tok / n_tok)
    hover_seconds = big_features * (n_hovers / n_features) / hover_rate
    hours = [x / workers / 3600 for x in (token_seconds, feature_seconds, hover_seconds)]
    return [
        f"projection (not a measurement): {big_features:,} features x {big_tok:,} tokens on {workers} workers",
        f"  per-worker rates measured here: {tok_rate:,.0f} tokens/s (token shards, {n_features:,}-feature SAE), "
        f"{feat_rate:,.1f} features/s (feature shards over {n_tok:,} tokens), {hover_rate:,.0f} hovers/s",
        f"  token shards {hours[0]:.1f} h + feature shards {hours[1]:.1f} h + hovers {hours[2]:.1f} h "
        f"= {sum(hours):.1f} h (stages in sequence, every worker busy, storage not the bottleneck)",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true")
    p.add_argument("--token-shards", type=int, default=4)
    p.add_argument("--feature-shards", type=int, default=4)
    p.add_argument("--runs", type=int, default=2, help="rounds of (local, ray 1, ray 2)")
    p.add_argument("--device", default="cpu", help="the model's device (cuda: measure a GPU worker's rates)")
    own = p.parse_args()
    args = bench_engine.parse((["--small"] if own.small else []) + ["--device", own.device])
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    with tempfile.TemporaryDirectory(prefix="sitegen-bench-ray-") as tmp:
        root = Path(tmp)
        config = config_with_shards(bench_engine.write_project(args, root), own)
        print(
            f"fixture: {args.n_seq} x {args.ctx} tokens, SAE {args.d_sae} features, {own.token_shards} token shards, "
            f"{own.feature_shards} feature shards, effects {args.effects}; seconds:"
        )
        print(f"{'run':<22} {'total':>6}  " + "  ".join(f"{s[:6]:>6}" for s in STAGES) + "  start  vs local")
        first = None
        for r in range(own.runs):
            local = run_local(config, root / f"local-{r}")
            print(row("local", local, None), flush=True)
            first = first or tree(root / f"local-{r}")
            for workers in (1, 2):
                out = run_ray(config, root / f"ray{workers}-{r}", workers)
                print(row(f"ray, {workers} worker(s)", out, local["total"]), flush=True)
                per = ", ".join(f"{k} {min(v):.2f}-{max(v):.2f}" for k, v in out["per_shard"].items())
                print(f"    per shard on its worker (s): {per}")
                assert tree(root / f"ray{workers}-{r}") == first, "the Ray build's bytes differ from the local build's"
        print("every run wrote the same cache, byte for byte")
        n_tok = args.n_seq * args.ctx
        for line in project(local, local["n_hovers"], n_tok, args.d_sae):
            print(line)
    ray.shutdown()


if __name__ == "__main__":
    main()
