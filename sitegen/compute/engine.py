"""build_feature_cache: every feature of every dictionary -> the on-disk cache.

Steps: check the old cache (reuse it, or say why it is stale and drop it); write
the manifest with ``complete: false``; run the model once over the dataset for the
hooks of the dictionaries with missing batches; per dictionary, encode all tokens
once into an activation store, then build and atomically write each missing batch;
finally ``tokens.json`` and the manifest with ``complete: true``.
"""

from __future__ import annotations

import gc
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm import tqdm

from sitegen.cache.feature_data import DictionarySummary
from sitegen.cache.files import batch_path, read_batch, read_json, write_batch, write_json
from sitegen.cache.manifest import stale_reason
from sitegen.compute.activations import (
    MEMMAP_DIR,
    ActivationCache,
    capture_activations,
    final_resid_hook,
    remove_scratch,
    start_layer,
)
from sitegen.compute.batch import DictionaryContext, batch_tensors
from sitegen.compute.correlations import unit_rows
from sitegen.compute.effects import NormConvention, norm_convention
from sitegen.compute.manifest import manifest_head
from sitegen.compute.serialise import feature_data
from sitegen.compute.store import NeuronActs, SparseActs
from sitegen.errors import SitegenError
from sitegen.hooks import block_hook
from sitegen.report import log
from sitegen.sources import Sources
from sitegen.sources.dictionaries import post_norm


def batches_of(ids: list[int], size: int) -> list[list[int]]:
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def dictionary_effects(effects: str, directions: torch.Tensor | None) -> str:
    """The configured effects, or "none" where direct effects have no residual direction."""
    return "none" if effects == "direct" and directions is None else effects


def summaries_of(src: Sources, norm: NormConvention, directions: list) -> list[DictionarySummary]:
    out = []
    for d, dirs in zip(src.dictionaries, directions):
        effects = dictionary_effects(src.config.features.effects, dirs)
        out.append(
            DictionarySummary(
                d.name,
                d.kind,
                d.hook_name,
                d.d_in,
                d.d_sae,
                list(d.feature_ids),
                effects,
                norm.note(effects, dirs is not None, post_norm(src.model, d.hook_name)),
            )
        )
    return out


def clear_cache(cache_dir: Path) -> None:
    shutil.rmtree(cache_dir / "features", ignore_errors=True)
    for name in ("tokens.json", "manifest.json"):
        (cache_dir / name).unlink(missing_ok=True)


def remove_partial_files(cache_dir: Path) -> None:
    """Temp files of writes a killed build did not finish."""
    for tmp in cache_dir.rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def capture_for(src: Sources, todo: list[int], directions: list, cache_dir: Path, progress: bool) -> ActivationCache:
    """One model pass capturing what the dictionaries with missing batches need."""
    model, fc = src.model, src.config.features
    widths: dict[str, int] = {}
    for i in todo:
        d = src.dictionaries[i]
        widths[d.hook_name] = d.d_in
        effects = dictionary_effects(fc.effects, directions[i])
        if effects != "none":
            widths[final_resid_hook(model)] = model.cfg.d_model
        if effects == "direct" and (norm := post_norm(model, d.hook_name)):
            widths[f"{norm}.hook_scale"] = 1
        if effects == "exact" and (layer := start_layer(d.hook_name)) is not None:
            widths[block_hook(layer, "hook_resid_pre")] = model.cfg.d_model
    return capture_activations(
        model, src.data.tokens, widths, fc.token_batch_size, fc.activation_cache_mb, cache_dir, progress
    )


def context_for(
    src: Sources,
    *,
    i: int,
    cache: ActivationCache,
    cache_dir: Path,
    norm: NormConvention,
    directions: torch.Tensor | None,
    progress: bool,
) -> DictionaryContext:
    """The shared state of one dictionary's batches; its activation store gets what the captured
    activations leave of the budget, beyond which it goes to disk in the scratch folder."""
    d, model, data = src.dictionaries[i], src.model, src.data
    counted = ~data.ignore.reshape(-1)
    hook = cache.acts[d.hook_name]
    budget = max(0, src.config.features.activation_cache_mb * 2**20 - cache.bytes_in_memory())
    acts = (
        NeuronActs(d, hook, counted, cache.release)
        if d.kind == "neurons"
        else SparseActs(
            d,
            hook,
            counted,
            device=str(model.cfg.device),
            progress=progress,
            budget=budget,
            folder=cache_dir / MEMMAP_DIR,
            release_hook=cache.release,
        )
    )
    effects = dictionary_effects(src.config.features.effects, directions)
    final = cache.acts.get(final_resid_hook(model)) if effects != "none" else None
    post = post_norm(model, d.hook_name) if effects == "direct" else None
    post_scale = cache.acts[f"{post}.hook_scale"].reshape(-1) if post else None
    start = None
    if effects == "exact" and (layer := start_layer(d.hook_name)) is not None:
        start = cache.acts[block_hook(layer, "hook_resid_pre")].view(*data.tokens.shape, model.cfg.d_model)
    decoder = d.decoder().detach().float().cpu()
    return DictionaryContext(
        index=i,
        d=d,
        acts=acts,
        decoder=decoder,
        unit_decoder=unit_rows(decoder),
        directions=None if directions is None else directions.detach().float().cpu(),
        effects=effects,
        norm=norm,
        final=final,
        post_scale=post_scale,
        start=start,
        seed=src.config.seed,
        release=cache.release,
    )


def build_feature_cache(sources: Sources, cache_dir: Path, progress: bool = True) -> dict:
    """Compute one FeatureData per feature id of every dictionary into ``cache_dir``;
    resumes from the batches a matching earlier build left. Returns the manifest, with
    this run's ``model_passes``, ``reused_batches`` and ``seconds`` added to its stats."""
    started = time.perf_counter()
    src, fc = sources, sources.config.features
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    remove_scratch(cache_dir)
    remove_partial_files(cache_dir)
    norm = norm_convention(src.model)
    directions = [d.residual_directions() for d in src.dictionaries]
    plan = [batches_of(list(d.feature_ids), fc.feature_batch_size) for d in src.dictionaries]
    head = manifest_head(src, summaries_of(src, norm, directions), [len(p) for p in plan])
    if (cache_dir / "manifest.json").is_file():
        old = read_json_or_none(cache_dir / "manifest.json")
        reason = "unreadable manifest" if old is None else stale_reason(old, head)
        if reason:
            log.info(f"feature cache in {cache_dir.name}/ is stale ({reason}); recomputing")
            clear_cache(cache_dir)
    missing = {i: [b for b in range(len(p)) if not batch_path(cache_dir, i, b).is_file()] for i, p in enumerate(plan)}
    total = sum(len(p) for p in plan)
    reused = total - sum(len(m) for m in missing.values())
    if reused:
        log.info(f"reusing {reused} of {total} feature batches from an earlier build")
    stats = {"n_tokens": int((~src.data.ignore).sum()), "n_sequences": len(src.data.tokens), "n_nonfinite": 0}
    write_json(cache_dir / "manifest.json", {**head, "complete": False, "stats": stats})
    seconds: dict[str, float] = {}
    todo = [i for i, m in missing.items() if m]
    model_passes = 0
    tokens: set[int] = set()
    n_nonfinite = 0
    if todo:
        cache = capture_for(src, todo, directions, cache_dir, progress)
        model_passes, seconds["model pass"] = cache.model_passes, cache.seconds
        try:
            for i in todo:
                name = src.dictionaries[i].name
                t0 = time.perf_counter()
                ctx = context_for(
                    src, i=i, cache=cache, cache_dir=cache_dir, norm=norm, directions=directions[i], progress=progress
                )
                seconds[f"encode {name}"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                todo_batches = [(b, plan[i][b]) for b in missing[i]]
                try:
                    n_nonfinite += write_batches(src, ctx, cache_dir, todo_batches, tokens, progress)
                finally:
                    ctx.acts.close()
                seconds[f"features {name}"] = time.perf_counter() - t0
                del ctx
        finally:
            cache.close()
            remove_scratch(cache_dir)
    t0 = time.perf_counter()
    for i, p in enumerate(plan):
        for b in set(range(len(p))) - set(missing[i]):
            for fd in read_batch(batch_path(cache_dir, i, b)):
                tokens.update(fd.token_ids())
                n_nonfinite += fd.n_nonfinite
    ordered = sorted(tokens)
    write_json(cache_dir / "tokens.json", {str(t): s for t, s in zip(ordered, src.token_texts(ordered))})
    stats["n_nonfinite"] = n_nonfinite
    manifest = {**head, "complete": True, "stats": stats}
    write_json(cache_dir / "manifest.json", manifest)
    seconds["finish"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - started
    if progress:
        log.info("feature cache: " + ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items()))
    return {**manifest, "stats": {**stats, "model_passes": model_passes, "reused_batches": reused, "seconds": seconds}}


@contextmanager
def paused_gc() -> Iterator[None]:
    """Cyclic GC off: a batch creates ~10^5 short-lived acyclic objects (its FeatureData),
    and the collector's repeated scans of them would double the time spent on them."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def write_batches(
    src: Sources,
    ctx: DictionaryContext,
    cache_dir: Path,
    batches: list[tuple[int, list[int]]],
    tokens: set[int],
    progress: bool,
) -> int:
    """Build and write batches (number, feature ids) of one dictionary; add their token ids
    to ``tokens``; return their NaN/inf count. Memmapped pages a batch read are handed back
    after it, so memory does not fill with them batch after batch."""
    n_nonfinite = 0
    with paused_gc():
        for b, ids in tqdm(batches, desc=f"features {ctx.d.name}", unit="batch", disable=not progress):
            features = feature_data(batch_tensors(src.model, src.data.tokens, src.config.features, ctx, ids))
            write_batch(cache_dir, ctx.index, b, features)
            for fd in features:
                tokens.update(fd.token_ids())
                n_nonfinite += fd.n_nonfinite
            ctx.release()
            ctx.acts.release()
    return n_nonfinite


def read_json_or_none(path: Path) -> dict | None:
    try:
        value = read_json(path)
    except SitegenError:
        return None
    return value if isinstance(value, dict) else None
