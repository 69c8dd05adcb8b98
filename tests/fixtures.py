"""Tiny seeded sources for tests: a 2-layer HookedTransformer with a word-level
tokenizer whose vocabulary holds hostile strings, small SAELens SAEs of several
architectures, a token dataset, and a config tying them together. No hub."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sitegen.sources.model import save_tl_checkpoint

HOSTILE = [
    "</script><img src=x onerror=alert(1)>",
    "<script>alert(1)</script>",
    '" onmouseover="alert(1)',
    "\u202eevil\u200b",
    "a\x00b\x07c",
    "\n",
    "&amp;&lt;",
    "{{ 7*7 }}",
    "x" * 10_000,
]
WORDS = [f"w{i}" for i in range(48)]
VOCAB = ["<pad>", "<bos>", "<eos>", "<unk>"] + WORDS + HOSTILE
D_MODEL, D_SAE, N_CTX = 32, 64, 24


def tiny_tokenizer():
    """A word-level tokenizer, saved and reloaded (TransformerLens re-loads it by path)."""
    import tempfile

    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    folder = tempfile.mkdtemp(prefix="sitegen-tok-")
    fast.save_pretrained(folder)
    return PreTrainedTokenizerFast.from_pretrained(folder)


def tiny_model(
    seed: int = 0, n_layers: int = 2, post_norm: bool = False, n_kv_heads: int | None = None
) -> HookedTransformer:
    """LayerNorm GPT-2 style; ``post_norm``: Gemma 2/3 style instead, RMSNorm before and after
    each sub-layer (``ln1_post``/``ln2_post`` scale what attention and MLP add to the residual);
    ``n_kv_heads``: grouped-query attention, the 4 query heads sharing that many key/value heads."""
    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=D_MODEL,
        n_heads=4,
        d_head=8,
        d_mlp=64,
        d_vocab=len(VOCAB),
        n_ctx=64,
        act_fn="gelu",
        normalization_type="RMS" if post_norm else "LN",
        seed=seed,
        default_prepend_bos=True,
        use_normalization_before_and_after=post_norm,
        n_key_value_heads=n_kv_heads,
    )
    model = HookedTransformer(cfg, tokenizer=tiny_tokenizer())
    torch.manual_seed(seed)
    with torch.no_grad():  # larger than default init so features and effects are not all tiny
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.3)
    return model.eval()


def tiny_sae(
    architecture: str = "standard",
    hook: str = "blocks.1.hook_resid_pre",
    d_in: int = D_MODEL,
    d_sae: int = D_SAE,
    seed: int = 0,
):
    """A random SAELens SAE (inference class) with biases set so features fire sometimes."""
    from sae_lens import SAE

    torch.manual_seed(seed)
    cfg = {
        "architecture": architecture,
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "metadata": {"hook_name": hook, "model_name": "tiny"},
    }
    if architecture == "topk":
        cfg["k"] = 8
    sae = SAE.from_dict(cfg)
    with torch.no_grad():
        sae.W_enc.normal_(0, 1 / d_in**0.5)
        sae.W_dec.normal_(0, 1 / d_in**0.5)
        sae.b_enc.normal_(-0.5, 0.3)
        sae.b_dec.normal_(0, 0.1)
        if architecture == "jumprelu":
            sae.threshold.uniform_(0.0, 0.3)
    return sae


def tiny_tokens(n_seq: int = 16, seq_len: int = N_CTX, seed: int = 0) -> np.ndarray:
    """[n_seq, seq_len] ids over the plain words, with some hostile tokens mixed in."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, 4 + len(WORDS), size=(n_seq, seq_len))
    hostile = rng.random(ids.shape) < 0.08
    ids[hostile] = rng.integers(4 + len(WORDS), len(VOCAB), size=int(hostile.sum()))
    return ids.astype(np.int64)


def write_project(
    root: Path,
    *,
    architecture: str = "standard",
    n_seq: int = 16,
    seed: int = 0,
    neurons: bool = True,
    post_norm: bool = False,
    n_kv_heads: int | None = None,
    extra: dict | None = None,
) -> Path:
    """Write model, SAE, tokens and a site_config.yaml under ``root``; return the config path."""
    save_tl_checkpoint(tiny_model(seed, post_norm=post_norm, n_kv_heads=n_kv_heads), root / "model")
    tiny_sae(architecture, seed=seed).save_model(root / "sae")
    np.save(root / "tokens.npy", tiny_tokens(n_seq, N_CTX - 1, seed))
    cfg = {
        "seed": seed,
        "out": "site",
        "model": {"name": "model"},
        "dictionaries": [{"name": "sae", "kind": "sae", "path": "sae"}]
        + ([{"name": "neurons", "kind": "neurons", "layer": 0, "features": "0:16"}] if neurons else []),
        "dataset": {"paths": ["tokens.npy"], "context_length": N_CTX, "max_tokens": n_seq * N_CTX},
        "features": {
            "feature_batch_size": 24,
            "token_batch_size": 8,
            "top_examples": 6,
            "n_intervals": 4,
            "examples_per_interval": 2,
        },
        "site": {"title": "tiny"},
    }
    for key, value in (extra or {}).items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    path = root / "site_config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
