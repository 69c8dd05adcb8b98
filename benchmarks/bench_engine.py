"""Benchmark of the feature engine (not a test).

Builds a synthetic project: a random 2-layer model (d_model 256), a standard SAE
with 4096 features whose per-feature firing rates are log-uniform in [0.1%, 3%]
(L0 around 35), and 2048 x 128 random tokens. Times the floor (one forward pass to
the hook + one SAE encode of all tokens) and the full ``build_feature_cache``,
and prints tokens/s, features/s, model passes, peak RSS and the time per phase. With
effects on, it also times the floor through every block: hovers need the final residual
stream, so the build's one model pass cannot stop at the hook. It prints the hovers
computed, the distinct positions whose clean logits the build unembedded
(``hover_positions``) and the distinct (sequence, position) of the shown tokens with a
hover (read back from the written cache).

With effects direct it also times, after the build (best of 2 each), the floor of issue
#15: the floor through every block + one unembedding (addmm + log_softmax) of every
distinct hover position + one pass of every built feature's direction (SAE decoder rows,
neurons' W_out rows) through the unembedding, in chunks of 256 rows; and that floor plus
the least per-hover vocabulary work the exact dLSE needs (one expm1 of c*u and one
multiply-add with the position's probabilities over the vocabulary per hover, timed on
random data in chunks of 256 hovers, at most 64 chunks, scaled to the build's hover count).

Flags beyond the sizes: ``--gemma`` (d_model 640, d_vocab 262144 unless given; the other
sizes as given), ``--vocab`` (= ``--d-vocab``), ``--neurons N`` (also build a ``kind:
neurons`` dictionary of the first N neurons of the MLP layer before the SAE's hook: layer
L-1 for ``blocks.L.hook_resid_pre``, 0 for L = 0), ``--sae-features N`` (build only SAE
features 0..N-1; the floor then encodes only those; 0: no SAE dictionary, the floor's
forward pass then stops after the neurons' layer, at the hook's layer for L > 0).

    python benchmarks/bench_engine.py                  # the figures in benchmarks/README.md
    python benchmarks/bench_engine.py --small          # a quick run
    python benchmarks/bench_engine.py --effects none --d-vocab 50257 --device cuda
    # Gemma-scale vocabulary, 128 x 128 = 16,384 tokens (the default site's size):
    python benchmarks/bench_engine.py --d-model 640 --d-vocab 262144 --n-seq 128 --sae-features 256 --neurons 32
    python benchmarks/bench_engine.py --gemma --n-seq 128 --sae-features 256            # SAE only
    python benchmarks/bench_engine.py --gemma --n-seq 128 --sae-features 0 --neurons 32  # neurons only
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

from sitegen.cache.files import read_features  # noqa: E402
from sitegen.compute import build_feature_cache  # noqa: E402
from sitegen.compute.store import CPU_ENCODE_ELEMENTS, chunk_rows  # noqa: E402
from sitegen.config import load_config  # noqa: E402
from sitegen.sources import load_sources  # noqa: E402
from sitegen.sources.model import save_tl_checkpoint  # noqa: E402


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-seq", type=int, default=2048)
    p.add_argument("--ctx", type=int, default=128)
    p.add_argument("--d-model", type=int, default=None, help="default 256 (--gemma: 640)")
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--d-vocab", "--vocab", dest="d_vocab", type=int, default=None, help="default 512 (--gemma: 262144)")
    p.add_argument("--gemma", action="store_true", help="Gemma-scale d_model 640 and d_vocab 262144 (unless given)")
    p.add_argument("--d-sae", type=int, default=4096)
    p.add_argument(
        "--sae-features", type=int, default=None, help="build SAE features 0..N-1 only (default all; 0: none)"
    )
    p.add_argument(
        "--neurons",
        type=int,
        default=0,
        help="also build neurons 0..N-1 of the MLP layer before the hook (kind: neurons; default 0: none)",
    )
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
    if args.d_model is None:
        args.d_model = 640 if args.gemma else 256
    if args.d_vocab is None:
        args.d_vocab = 262144 if args.gemma else 512
    if args.sae_features is not None and not 0 <= args.sae_features <= args.d_sae:
        p.error(f"--sae-features {args.sae_features} is outside 0..{args.d_sae}")
    if not 0 <= args.neurons <= 4 * args.d_model:
        p.error(f"--neurons {args.neurons} is outside 0..{4 * args.d_model} (d_mlp)")
    if args.sae_features == 0 and not args.neurons:
        p.error("--sae-features 0 needs --neurons: nothing to build")
    return args


def hook_layer_of(args) -> int:
    """L of the SAE's hook blocks.L.hook_resid_pre."""
    return int(args.hook.split(".")[1])


def neuron_layer(args) -> int:
    """The MLP layer the SAE's hook reads from: the block before blocks.L.hook_resid_pre (0 for L = 0)."""
    return max(hook_layer_of(args) - 1, 0)


def n_sae_features(args) -> int:
    return args.d_sae if args.sae_features is None else args.sae_features


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
    # stop after the hook's block: no unembedding ([64 * ctx, d_vocab] logits at a 262k vocabulary)
    layer = hook_layer_of(args)
    _, cache = model.run_with_cache(tokens[:64].to(args.device), names_filter=[args.hook], stop_at_layer=layer + 1)
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
    dictionaries: list[dict] = []
    if n_sae_features(args):
        make_sae(args, model, torch.from_numpy(tokens)).save_model(root / "sae")
        dictionaries.append({"name": "sae", "path": "sae"})
        if args.sae_features is not None:
            dictionaries[-1]["features"] = f"0:{args.sae_features}"
    if args.neurons:
        dictionaries.append(
            {"name": "neurons", "kind": "neurons", "layer": neuron_layer(args), "features": f"0:{args.neurons}"}
        )
    cfg = {
        "model": {"name": "model", "device": args.device},
        "dictionaries": dictionaries,
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
    tokens, as plainly as possible. The encode is of the built features only (all by default;
    a TopK-style SAE needs the full encode); without an SAE dictionary it is 0 s and the pass
    stops after the neurons' layer."""
    model, tokens = src.model, src.data.tokens
    saes = [d for d in src.dictionaries if d.kind == "sae"]
    d = saes[0] if saes else None
    bs = src.config.features.token_batch_size
    if layer is None:
        layer = int(d.hook_name.split(".")[1]) if d else max(n.layer for n in src.dictionaries) + 1
    t0 = time.perf_counter()
    acts = []
    for s in range(0, len(tokens), bs):
        acts.append(model(tokens[s : s + bs].to(model.cfg.device), stop_at_layer=layer).reshape(-1, model.cfg.d_model))
    cuda = torch.device(model.cfg.device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    forward = time.perf_counter() - t0
    if d is None:
        return {"forward to hook": forward, "encode": 0.0}
    subset = len(d.feature_ids) < d.d_sae and not d.needs_full_encode
    ids = torch.tensor(d.feature_ids, device=model.cfg.device)
    # in cache-sized chunks on CPU (the fastest plain chunking: 256 rows of 4096 features
    # encode in 55 % of the time of 4096 rows), one chunk per token batch on a GPU
    width = len(ids) if subset else d.d_sae
    rows = chunk_rows(width, CPU_ENCODE_ELEMENTS) if not cuda else bs * tokens.shape[1]
    t0 = time.perf_counter()
    for x in acts:
        for c in range(0, len(x), rows):
            if subset:
                d.encode_subset(x[c : c + rows], ids)
            else:
                d.encode(x[c : c + rows])
    if cuda:
        torch.cuda.synchronize()
    return {"forward to hook": forward, "encode": time.perf_counter() - t0}


def synced(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def best_of_two(fn) -> float:
    return min(fn() for _ in range(2))


@torch.no_grad()
def unembed_seconds(model: HookedTransformer, n_rows: int, chunk: int = 256) -> float:
    """One unembedding (addmm + log_softmax) of ``n_rows`` random residual rows, ``chunk`` rows at a time."""
    dev = torch.device(model.cfg.device)
    x = torch.randn(n_rows, model.cfg.d_model, device=dev)
    t0 = synced(dev)
    for s in range(0, n_rows, chunk):
        torch.addmm(model.b_U, x[s : s + chunk], model.W_U).log_softmax(-1)
    return synced(dev) - t0


@torch.no_grad()
def feature_directions(src) -> torch.Tensor:
    """[features, d_model] residual directions of every built feature: SAE decoder rows, neurons' W_out rows."""
    dirs = []
    for d in src.dictionaries:
        w = src.model.blocks[d.layer].mlp.W_out if d.kind == "neurons" else d.decoder()
        dirs.append(w[torch.tensor(d.feature_ids, device=w.device)])
    return torch.cat(dirs).to(src.model.cfg.device, torch.float32)


@torch.no_grad()
def directions_seconds(model: HookedTransformer, dirs: torch.Tensor, chunk: int = 256) -> float:
    """One pass of the directions through the unembedding, ``chunk`` rows at a time."""
    dev = torch.device(model.cfg.device)
    t0 = synced(dev)
    for s in range(0, len(dirs), chunk):
        dirs[s : s + chunk] @ model.W_U
    return synced(dev) - t0


@torch.no_grad()
def vocab_term_seconds(model: HookedTransformer, n_hovers: int, chunk: int = 256, max_chunks: int = 64) -> float:
    """The least per-hover vocabulary work of the exact dLSE, for ``n_hovers`` hovers: one expm1 of
    c*u and one multiply-add with the position's probabilities, on random [chunk, d_vocab] rows
    preallocated outside the clock. Times min(ceil(n_hovers / chunk), max_chunks) chunks (of at most
    n_hovers rows) and scales to ``n_hovers``."""
    if not n_hovers:
        return 0.0
    dev, vocab = torch.device(model.cfg.device), model.cfg.d_vocab
    rows = min(chunk, n_hovers)
    reps = min(-(-n_hovers // rows), max_chunks)
    u_rows = torch.randn(rows, vocab, device=dev) * 0.1
    p_rows = torch.rand(rows, vocab, device=dev)
    p_rows /= p_rows.sum(1, keepdim=True)
    c = torch.rand(rows, 1, device=dev)
    t0 = synced(dev)
    for _ in range(reps):
        x = torch.mul(u_rows, -c).expm1_()
        (x * p_rows).sum(1)
    return (synced(dev) - t0) * n_hovers / (reps * rows)


def shown_hover_positions(cache_dir: Path, n_dictionaries: int) -> int:
    """Distinct (sequence, position) of every shown token with a hover, over all dictionaries."""
    seen: set[tuple[int, int]] = set()
    for i in range(n_dictionaries):
        for fd in read_features(cache_dir, i):
            for ex in fd.examples():
                seen.update((ex.seq, ex.start + j) for j, h in enumerate(ex.hovers) if h is not None)
    return len(seen)


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
        stats = manifest["stats"]
        n_hovers, hover_positions = stats.get("hovers", 0), stats.get("hover_positions", 0)
        shown = shown_hover_positions(root / "cache", len(src.dictionaries)) if args.effects != "none" else 0
        # issue #15's floor pieces, after the build (best of two each)
        issue15 = None
        if whole and args.effects == "direct":
            dirs = feature_directions(src)
            issue15 = {
                "unembed": best_of_two(lambda: unembed_seconds(src.model, hover_positions)),
                "directions": best_of_two(lambda: directions_seconds(src.model, dirs)),
                "vocab term": best_of_two(lambda: vocab_term_seconds(src.model, n_hovers)),
            }
        built = {d.name: len(d.feature_ids) for d in src.dictionaries}
    n_tok = args.n_seq * args.ctx
    n_features = sum(built.values())
    floor_total = sum(floor.values())
    seconds = stats["seconds"]
    print(f"\nmachine: {torch.get_num_threads()} torch threads, device {args.device}, torch {torch.__version__}")
    dicts = []
    if n_sae_features(args):
        dicts.append(f"SAE {built['sae']} of {args.d_sae} features on {args.hook}")
    if args.neurons:
        dicts.append(f"{args.neurons} neurons of blocks.{neuron_layer(args)}.mlp (d_mlp {4 * args.d_model})")
    print(
        f"fixture: {args.n_layers} layers, d_model {args.d_model}, d_vocab {args.d_vocab}, {' + '.join(dicts)}, "
        f"{args.n_seq} x {args.ctx} = {n_tok} tokens, effects {args.effects}"
    )
    print(f"floor: {floor_total:.1f}s (" + ", ".join(f"{k} {v:.1f}s" for k, v in floor.items()) + ")")
    print(f"build: {total:.1f}s = {total / floor_total:.2f} x floor; model passes {stats['model_passes']}")
    if whole:
        print(
            f"floor through all {args.n_layers} layers (what effects need): {sum(whole.values()):.1f}s; "
            f"build = {total / sum(whole.values()):.2f} x that"
        )
    print(f"throughput: {n_tok / total:,.0f} tokens/s, {n_features / total:,.1f} features/s")
    print("phases: " + ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items()))
    if len(built) == 1:
        ((name, n),) = built.items()
        kind = "SAE feature" if name == "sae" else "neuron"
        print(f"seconds per {kind}: {total / n:.4f}s (build {total:.1f}s / {n})")
    else:
        per = ", ".join(f"{name} {seconds.get(f'features {name}', 0.0) / n:.4f}s" for name, n in built.items())
        print(
            f"seconds per feature: {total / n_features:.4f}s overall (build {total:.1f}s / {n_features}); "
            f"'features <name>' phase alone per feature: {per}"
        )
    if args.effects != "none":
        print(
            f"hovers: {n_hovers:,} computed; hover positions computed (direct, clean logits unembedded) "
            f"{hover_positions:,} vs distinct positions shown with a hover {shown:,}"
        )
    if issue15:
        base = sum(whole.values()) + issue15["unembed"] + issue15["directions"]
        plus = base + issue15["vocab term"]
        print(
            f"floor (issue #15): {base:.2f}s = floor through all layers {sum(whole.values()):.2f}s + unembedding of "
            f"{hover_positions:,} positions {issue15['unembed']:.2f}s + {len(dirs):,} directions through W_U "
            f"{issue15['directions']:.2f}s; build = {total / base:.2f} x that"
        )
        print(
            f"floor + per-hover vocab term: {plus:.2f}s (+ {issue15['vocab term']:.2f}s for {n_hovers:,} hovers "
            f"x {args.d_vocab:,} tokens); build = {total / plus:.2f} x that"
        )
    print(
        f"peak RSS {rss:,.0f} MiB ({'the build' if windowed else 'the whole process'}), cache {size / 2**20:,.1f} MiB"
    )


if __name__ == "__main__":
    main()
