"""Benchmark of the feature engine (not a test).

Builds a synthetic project: a random 2-layer model (d_model 256), a standard SAE
with 4096 features whose per-feature firing rates are log-uniform in [0.1%, 3%]
(L0 around 35), and 2048 x 128 random tokens. Times the floor (one forward pass to
the hook + one SAE encode of all tokens) and the full ``build_feature_cache``,
and prints tokens/s, features/s, model passes, peak RSS and the time per phase. With
effects on, it also times the floor through every block: hovers need the final residual
stream, so the build's one model pass cannot stop at the hook.

    python benchmarks/bench_engine.py                  # the figures in benchmarks/README.md
    python benchmarks/bench_engine.py --small          # a quick run
    python benchmarks/bench_engine.py --effects none --d-vocab 50257 --device cuda
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from transformer_lens import HookedTransformer, HookedTransformerConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sitegen.compute import build_feature_cache  # noqa: E402
from sitegen.compute.store import CPU_ENCODE_ELEMENTS, chunk_rows  # noqa: E402
from sitegen.config import load_config  # noqa: E402
from sitegen.sources import load_sources  # noqa: E402
from sitegen.sources.model import save_tl_checkpoint  # noqa: E402


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-seq", type=int, default=2048)
    p.add_argument("--ctx", type=int, default=128)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--d-vocab", type=int, default=512)
    p.add_argument("--d-sae", type=int, default=4096)
    p.add_argument("--hook", default="blocks.1.hook_resid_pre")
    p.add_argument("--effects", default="direct", choices=["direct", "exact", "none"])
    p.add_argument("--feature-batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--small", action="store_true", help="256 sequences, 1024 features")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument(
        "--budget-mb",
        type=int,
        default=None,
        help="features.activation_cache_mb (default: the config's, which keeps this fixture in memory)",
    )
    args = p.parse_args(argv)
    if args.small:
        args.n_seq, args.d_sae = 256, 1024
    return args


def make_model(args) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=args.n_layers,
        d_model=args.d_model,
        n_heads=args.d_model // 64,
        d_head=64,
        d_mlp=4 * args.d_model,
        d_vocab=args.d_vocab,
        n_ctx=args.ctx,
        act_fn="gelu",
        normalization_type="LN",
        seed=args.seed,
        device=args.device,
    )
    return HookedTransformer(cfg).eval()


@torch.no_grad()
def make_sae(args, model: HookedTransformer, tokens: torch.Tensor):
    """A random standard SAE; b_enc puts each feature's firing rate at a log-uniform target."""
    from sae_lens import SAE

    torch.manual_seed(args.seed)
    d_in = args.d_model
    sae = SAE.from_dict(
        {
            "architecture": "standard",
            "d_in": d_in,
            "d_sae": args.d_sae,
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": False,
            "normalize_activations": "none",
            "metadata": {"hook_name": args.hook, "model_name": "bench"},
        }
    )
    sae.W_enc.normal_(0, 1 / d_in**0.5)
    sae.W_dec.normal_(0, 1 / d_in**0.5)
    sae.b_dec.zero_()
    _, cache = model.run_with_cache(tokens[:64].to(args.device), names_filter=[args.hook])
    pre = cache[args.hook].reshape(-1, d_in).cpu() @ sae.W_enc  # [n, d_sae]
    rate = torch.exp(torch.empty(args.d_sae).uniform_(math.log(1e-3), math.log(3e-2)))
    sae.b_enc.copy_(-quantiles(pre, 1 - rate))
    return sae


def quantiles(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Per-column quantile q[j] of x[:, j]."""
    s = torch.sort(x, dim=0).values
    idx = (q * (len(x) - 1)).round().long().clamp(0, len(x) - 1)
    return s[idx, torch.arange(x.shape[1])]


def write_project(args, root: Path) -> Path:
    rng = np.random.default_rng(args.seed)
    tokens = rng.integers(0, args.d_vocab, size=(args.n_seq, args.ctx)).astype(np.int64)
    np.save(root / "tokens.npy", tokens)
    model = make_model(args)
    save_tl_checkpoint(model, root / "model")
    make_sae(args, model, torch.from_numpy(tokens)).save_model(root / "sae")
    cfg = {
        "model": {"name": "model", "device": args.device},
        "dictionaries": [{"name": "sae", "path": "sae"}],
        "dataset": {"paths": ["tokens.npy"], "context_length": args.ctx, "max_tokens": args.n_seq * args.ctx},
        "features": {"effects": args.effects, "feature_batch_size": args.feature_batch_size},
    }
    if args.budget_mb is not None:
        cfg["features"]["activation_cache_mb"] = args.budget_mb
    (root / "site_config.yaml").write_text(yaml.safe_dump(cfg))
    return root / "site_config.yaml"


def reset_peak_rss() -> bool:
    """Start a new peak-RSS window (Linux: ``clear_refs`` 5 resets VmHWM); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """Peak RSS since the last reset (VmHWM). Not ``ru_maxrss``: Linux carries that over
    ``execve``, so a child process would report its parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 2**20)


@torch.no_grad()
def floor_seconds(src, layer: int | None = None) -> dict[str, float]:
    """One forward pass to the hook (or through ``layer`` blocks) + one SAE encode of all
    tokens, as plainly as possible."""
    model, d = src.model, src.dictionaries[0]
    tokens = src.data.tokens
    bs = src.config.features.token_batch_size
    layer = int(d.hook_name.split(".")[1]) if layer is None else layer
    t0 = time.perf_counter()
    acts = []
    for s in range(0, len(tokens), bs):
        acts.append(model(tokens[s : s + bs].to(model.cfg.device), stop_at_layer=layer).reshape(-1, d.d_in))
    cuda = torch.device(model.cfg.device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    forward = time.perf_counter() - t0
    # in cache-sized chunks on CPU (the fastest plain chunking: 256 rows of 4096 features
    # encode in 55 % of the time of 4096 rows), one chunk per token batch on a GPU
    rows = chunk_rows(d.d_sae, CPU_ENCODE_ELEMENTS) if not cuda else bs * tokens.shape[1]
    t0 = time.perf_counter()
    for x in acts:
        for c in range(0, len(x), rows):
            d.encode(x[c : c + rows])
    if cuda:
        torch.cuda.synchronize()
    return {"forward to hook": forward, "encode": time.perf_counter() - t0}


def main() -> None:
    args = parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="sitegen-bench-") as tmp:
        root = Path(tmp)
        config = write_project(args, root)
        src = load_sources(load_config(config))
        assert args.hook.endswith("hook_resid_pre"), "the floor measures forward passes to a resid_pre hook"
        # best of two: the first also warms up allocator, kernels and caches for the build after it
        floor = min((floor_seconds(src) for _ in range(2)), key=lambda f: sum(f.values()))
        # effects need the final residual stream: the same floor through every block
        whole = floor_seconds(src, args.n_layers) if args.effects != "none" else None
        windowed = reset_peak_rss()  # the build's own peak, not the floor's or the fixture's
        t0 = time.perf_counter()
        manifest = build_feature_cache(src, root / "cache", progress=True)
        rss = peak_rss_mib()
        total = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in (root / "cache").rglob("*") if p.is_file())
    n_tok = args.n_seq * args.ctx
    floor_total = sum(floor.values())
    stats = manifest["stats"]
    print(f"\nmachine: {torch.get_num_threads()} torch threads, device {args.device}, torch {torch.__version__}")
    print(
        f"fixture: {args.n_layers} layers, d_model {args.d_model}, d_vocab {args.d_vocab}, SAE {args.d_sae} "
        f"features on {args.hook}, {args.n_seq} x {args.ctx} = {n_tok} tokens, effects {args.effects}"
    )
    print(f"floor: {floor_total:.1f}s (" + ", ".join(f"{k} {v:.1f}s" for k, v in floor.items()) + ")")
    print(f"build: {total:.1f}s = {total / floor_total:.2f} x floor; model passes {stats['model_passes']}")
    if whole:
        print(
            f"floor through all {args.n_layers} layers (what effects need): {sum(whole.values()):.1f}s; "
            f"build = {total / sum(whole.values()):.2f} x that"
        )
    print(f"throughput: {n_tok / total:,.0f} tokens/s, {args.d_sae / total:,.1f} features/s")
    print("phases: " + ", ".join(f"{k} {v:.1f}s" for k, v in stats["seconds"].items()))
    print(
        f"peak RSS {rss:,.0f} MiB ({'the build' if windowed else 'the whole process'}), cache {size / 2**20:,.1f} MiB"
    )


if __name__ == "__main__":
    main()
