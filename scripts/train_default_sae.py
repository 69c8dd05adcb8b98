"""Train the default SAE shipped in data/sae/: a TopK SAE (SAELens trainer) on
``blocks.6.hook_resid_post`` of the embedded Gemma-3-270M, over the bundled corpus.

Reproducible: seeded, CPU only. Steps: tokenise the corpus with sitegen's own
loader, run the model once to layer 6 and cache the activations (BOS excluded)
in ./activations/ (ignored by git), train with sae_lens.SAETrainer, fold the
decoder norms, save fp16 weights in SAELens format, then print the quality:
FVU, L0, dead-feature fraction and CE loss clean / with the SAE spliced in /
with the hook zero-ablated, all on held-out windows.

Usage: python scripts/train_default_sae.py [--tokens 262144] [--epochs 6]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "data" / "sae" / "gemma3-270m-l6-resid-topk"
CACHE = ROOT / "activations"
HOOK = "blocks.6.hook_resid_post"
LAYER = 6


def corpus_tokens(n_tokens: int, seed: int):
    from sitegen.config import Config, DatasetConfig, DictionaryConfig
    from sitegen.sources.dataset import load_tokens
    from sitegen.sources.model import load_model

    cfg = Config(
        dictionaries=[DictionaryConfig(name="mlp", kind="neurons", layer=LAYER)],
        dataset=DatasetConfig(paths=["data/corpus/corpus.jsonl"], max_tokens=n_tokens, seed=seed),
        path=ROOT / "site_config.yaml",
    )
    model = load_model(cfg)
    data = load_tokens(cfg, model.tokenizer, model.tokenizer.bos_token_id, model.cfg.d_vocab)
    return model, data.tokens


@torch.no_grad()
def hook_activations(model, tokens: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """[n_seq, ctx, d_model] activations at HOOK (one pass, stopped after the layer)."""
    out = torch.empty(*tokens.shape, model.cfg.d_model)
    start = time.time()
    for i in tqdm(range(0, len(tokens), batch), desc="activations", unit="batch"):
        _, cache = model.run_with_cache(tokens[i : i + batch], names_filter=HOOK, stop_at_layer=LAYER + 1)
        out[i : i + batch] = cache[HOOK]
    print(f"activations: {tokens.numel() / (time.time() - start):.0f} tokens/s")
    return out


def batches(acts: torch.Tensor, batch: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    while True:
        for idx in torch.randperm(len(acts), generator=gen).split(batch):
            if len(idx) == batch:
                yield acts[idx]


@torch.no_grad()
def quality(model, sae, tokens: torch.Tensor, train_acts: torch.Tensor) -> dict[str, float]:
    acts = hook_activations(model, tokens)[:, 1:].reshape(-1, model.cfg.d_model)
    feats = sae.encode(acts)
    recon = sae.decode(feats)
    fvu = ((acts - recon) ** 2).sum() / ((acts - acts.mean(0)) ** 2).sum()
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    for chunk in train_acts.split(8192):
        fired |= (sae.encode(chunk) > 0).any(0)

    def splice(value, hook):
        value[:, 1:] = sae.decode(sae.encode(value[:, 1:]))
        return value

    def zero(value, hook):
        value[:, 1:] = 0.0
        return value

    def ce(hooks) -> float:
        losses = [
            model.run_with_hooks(tokens[i : i + 8], return_type="loss", fwd_hooks=hooks).item()
            for i in range(0, len(tokens), 8)
        ]
        return sum(losses) / len(losses)

    clean, spliced, zeroed = ce([]), ce([(HOOK, splice)]), ce([(HOOK, zero)])
    return {
        "fvu": round(fvu.item(), 4),
        "l0": round((feats > 0).float().sum(-1).mean().item(), 2),
        "dead_fraction": round(1 - fired.float().mean().item(), 4),
        "ce_clean": round(clean, 4),
        "ce_with_sae": round(spliced, 4),
        "ce_zero_ablated": round(zeroed, 4),
        "ce_loss_recovered": round((zeroed - spliced) / (zeroed - clean), 4),
        "eval_tokens": int(tokens[:, 1:].numel()),
    }


def main() -> None:
    from sae_lens import SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=262144)
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--epochs", type=float, default=8)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=8e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_grad_enabled(False)

    model, tokens = corpus_tokens(args.tokens + args.eval_tokens, args.seed)
    n_eval = args.eval_tokens // tokens.shape[1]
    eval_tokens, train_tokens = tokens[:n_eval], tokens[n_eval:]
    cache_file = CACHE / f"{HOOK}-{args.tokens}-{args.seed}.pt"
    if cache_file.exists():
        acts = torch.load(cache_file)
    else:
        acts = hook_activations(model, train_tokens)[:, 1:].reshape(-1, model.cfg.d_model)  # BOS dropped
        CACHE.mkdir(exist_ok=True)
        torch.save(acts, cache_file)
    print(f"training on {len(acts)} activations of {HOOK}")

    sae_cfg = TopKTrainingSAEConfig(
        d_in=model.cfg.d_model,
        d_sae=args.d_sae,
        k=args.k,
        dtype="float32",
        device="cpu",
        normalize_activations="expected_average_only_in",
        aux_loss_coefficient=1 / 32,
    )
    sae_cfg.metadata.model_name = "google/gemma-3-270m"
    sae_cfg.metadata.hook_name = HOOK
    sae_cfg.metadata.context_size = int(tokens.shape[1])
    sae_cfg.metadata.prepend_bos = True
    sae_cfg.metadata.dataset_path = "data/corpus/corpus.jsonl"
    sae = TopKTrainingSAE(sae_cfg)
    # Start b_dec at the (scaled) mean: Gemma's residual has a few huge, nearly constant dims.
    scale = model.cfg.d_model**0.5 / acts.norm(dim=-1).mean()
    sae.b_dec.data = (acts.mean(0) * scale).to(sae.b_dec.dtype)
    steps = int(args.epochs * len(acts) / args.batch)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * args.batch,
        train_batch_size_samples=args.batch,
        lr=args.lr,
        lr_end=args.lr / 10,
        lr_scheduler_name="constant",
        lr_warm_up_steps=steps // 20,
        lr_decay_steps=steps // 5,
        device="cpu",
        dead_feature_window=50,
        feature_sampling_window=100,
        n_batches_for_norm_estimate=20,
    )
    with torch.enable_grad():
        sae = SAETrainer(trainer_cfg, sae, batches(acts, args.batch, args.seed)).fit()

    OUT.mkdir(parents=True, exist_ok=True)
    sae.save_inference_model(OUT)
    from sae_lens import SAE
    from safetensors.torch import load_file, save_file

    weights = OUT / "sae_weights.safetensors"
    save_file({k: v.half().contiguous() for k, v in load_file(weights).items()}, weights)
    cfg_file = OUT / "cfg.json"
    cfg_json = json.loads(cfg_file.read_text())
    cfg_json["dtype"] = "float16"
    cfg_file.write_text(json.dumps(cfg_json, indent=1, sort_keys=True))
    inference = SAE.load_from_disk(str(OUT), dtype="float32")
    if inference.cfg.architecture() != "topk" or not hasattr(inference, "fold_W_dec_norm"):
        raise SystemExit("unexpected architecture")
    stats = quality(model, inference, eval_tokens, acts)
    stats.update(train_tokens=len(acts), d_sae=args.d_sae, k=args.k, hook=HOOK, epochs=args.epochs, seed=args.seed)
    (OUT / "quality.json").write_text(json.dumps(stats, indent=1, sort_keys=True) + "\n")
    print(json.dumps(stats, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
