"""The one pass of the model over the dataset: capture the hook activations the
dictionaries read (and the residual streams the effects need), in memory or, over
``features.activation_cache_mb``, in on-disk memmaps that are deleted afterwards."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from tqdm import tqdm
from transformer_lens import HookedTransformer

from sitegen.compute.spill import Mappings
from sitegen.errors import SitegenError
from sitegen.hooks import EMBED_HOOKS, block_hook, hook_layer, hook_point

MEMMAP_DIR = "activations.tmp"  # scratch under the cache folder: activation memmaps and spilled stores


def final_resid_hook(model: HookedTransformer) -> str:
    """The residual stream the final norm reads."""
    return block_hook(model.cfg.n_layers - 1, "hook_resid_post")


def source_hook(hook_name: str) -> str:
    """The hook that sees the same tensor earliest: block L's input is block L-1's output."""
    layer = hook_layer(hook_name)
    if layer and hook_point(hook_name) == "hook_resid_pre":
        return block_hook(layer - 1, "hook_resid_post")
    return hook_name


def stop_layer(hook_name: str) -> int | None:
    """``stop_at_layer`` that still fires ``hook_name`` (None: run the whole model)."""
    if (layer := hook_layer(hook_name)) is not None:
        return layer + 1
    if hook_name in EMBED_HOOKS:
        return 0
    return None


def start_layer(hook_name: str) -> int | None:
    """``start_at_layer`` for a re-run that still fires ``hook_name`` (None: from the tokens)."""
    return hook_layer(hook_name)


class PassObserver(Protocol):
    """Work done on hook tensors during the model pass itself, batch by batch (attention-head
    records): nothing it reads is kept for the whole dataset."""

    def fwd_hooks(self) -> list[tuple[str, Callable]]: ...

    def begin(self, first_seq: int, n_seq: int) -> None:
        """The next forward pass runs these sequences."""

    def stop_layer(self) -> int: ...


@dataclass
class ActivationCache:
    """Captured activations, flattened over (sequence, position): ``acts[name]`` is [n_tok, width]."""

    acts: dict[str, torch.Tensor]
    folder: Path | None  # memmap folder, or None when in memory
    model_passes: int = 0
    seconds: float = 0.0
    mappings: Mappings = field(default_factory=Mappings)

    def release(self) -> None:
        """Hand back the memmaps' resident pages (reads map them again as needed)."""
        self.mappings.release()

    def bytes_in_memory(self) -> int:
        """What the captured activations take of ``features.activation_cache_mb``."""
        return (
            0
            if self.folder is not None
            else sum(t.numel() * t.element_size() for t in {id(t): t for t in self.acts.values()}.values())
        )

    def close(self) -> None:
        self.acts.clear()
        self.mappings.close()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def remove_scratch(cache_dir: Path) -> None:
    """Delete the scratch folder (activation memmaps, spilled stores): at the end of a build,
    and at the start of the next in case a killed one left it behind."""
    shutil.rmtree(cache_dir / MEMMAP_DIR, ignore_errors=True)


def _buffers(widths: dict[str, int], n_tok: int, budget_mb: int, cache_dir: Path) -> ActivationCache:
    total = n_tok * sum(widths.values()) * 4
    if total <= budget_mb * 2**20:
        return ActivationCache({n: torch.empty(n_tok, w) for n, w in widths.items()}, None)
    folder = cache_dir / MEMMAP_DIR
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SitegenError(f"{folder}: cannot create the activation memmaps' folder ({err.strerror or err})") from None
    cache = ActivationCache({}, folder)
    try:
        for i, (name, width) in enumerate(widths.items()):
            cache.acts[name] = cache.mappings.tensor(
                folder / f"{i}.f32", (n_tok, width), torch.float32, "activation memmap"
            )
    except SitegenError:
        cache.close()
        raise
    return cache


@torch.no_grad()
def capture_activations(
    model: HookedTransformer,
    tokens: torch.Tensor,  # [n_seq, ctx]
    widths: dict[str, int],  # hook name -> width of its last dimension(s), flattened
    batch_size: int,
    budget_mb: int,
    cache_dir: Path,
    progress: bool,
    observers: Sequence[PassObserver] = (),
    first_seq: int = 0,
) -> ActivationCache:
    """Run the model once over ``tokens`` (the dataset's sequences from ``first_seq`` on),
    stopping after the deepest hook needed (the ``observers`` see their hooks in the same pass)."""
    start = time.perf_counter()
    n_seq, ctx = tokens.shape
    sources = {name: source_hook(name) for name in widths}
    cache = _buffers({sources[name]: w for name, w in widths.items()}, n_seq * ctx, budget_mb, cache_dir)
    stops = [stop_layer(name) for name in cache.acts] + [o.stop_layer() for o in observers]
    stop = None if not stops or any(s is None for s in stops) else max(s for s in stops if s is not None)
    device = model.cfg.device
    rows = slice(0, 0)

    def keep(act: torch.Tensor, hook) -> None:
        cache.acts[hook.name][rows] = act.detach().reshape(rows.stop - rows.start, -1).float().cpu()

    try:
        hooks = [(name, keep) for name in list(cache.acts)] + [h for o in observers for h in o.fwd_hooks()]
        with model.hooks(fwd_hooks=hooks):
            for s in tqdm(range(0, n_seq, batch_size), desc="model pass", unit="batch", disable=not progress):
                chunk = tokens[s : s + batch_size]
                rows = slice(s * ctx, (s + len(chunk)) * ctx)
                for o in observers:
                    o.begin(first_seq + s, len(chunk))
                model(chunk.to(device), stop_at_layer=stop, return_type=None)
                cache.release()
    except BaseException:
        cache.close()
        raise
    cache.acts.update({name: cache.acts[source] for name, source in sources.items()})
    cache.model_passes = 1
    cache.seconds = time.perf_counter() - start
    return cache
