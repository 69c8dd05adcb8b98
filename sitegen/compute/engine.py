"""build_feature_cache: every feature of every dictionary -> the on-disk cache.

Steps: check the old cache (reuse it, or say why it is stale and drop it); write
the manifest with ``complete: false``; write the batches of imported NeuronRecord folders
(no model needed: a bad file fails before the model pass); run the model once over the
dataset for the hooks of the dictionaries with missing batches, the attention-head
recorders seeing their hooks in that pass (their batches written right after it); per
dictionary, encode all tokens once into an activation store and build each missing
batch but its hovers; the hover phase, then the batch files; the prompt pages
(``prompts.json``); finally ``sequences.json``, ``tokens.json``, ``token_strings.json``
and the manifest with ``complete: true``.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm import tqdm
from transformer_lens.utilities.activation_functions import softcap_enabled

from sitegen.cache.feature_data import DictionarySummary
from sitegen.cache.files import (
    SEQUENCES_FILE,
    STRINGS_FILE,
    batch_path,
    read_batch,
    read_head_batch,
    write_json,
)
from sitegen.cache.manifest import drop_if_stale, remove_partial_files
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
from sitegen.compute.heads import HeadRecorder
from sitegen.compute.hovers import ExactSource, LogitTable, Pending, hover_phase
from sitegen.compute.manifest import manifest_head
from sitegen.compute.prompts import prompt_phase
from sitegen.compute.serialise import feature_data
from sitegen.compute.spill import Arrays
from sitegen.compute.store import NeuronActs, SparseActs
from sitegen.compute.writing import Shown, paused_gc, write_features, write_heads, write_pending
from sitegen.hooks import block_hook
from sitegen.imports import write_record_batches
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
    for h in src.heads:
        out.append(
            DictionarySummary(h.name, h.kind, h.hook_name, h.d_head, h.d_sae, list(h.feature_ids), "none", "", h.layers)
        )
    return out + [f.summary() for f in src.imports]


def capture_for(
    src: Sources,
    todo: list[int],
    directions: list,
    cache_dir: Path,
    progress: bool,
    recorders: list[HeadRecorder],
) -> ActivationCache:
    """One model pass capturing what the dictionaries with missing batches need; the head
    dictionaries' ``recorders`` see their hooks in it."""
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
        model, src.data.tokens, widths, fc.token_batch_size, fc.activation_cache_mb, cache_dir, progress, recorders
    )


def context_for(
    src: Sources,
    *,
    i: int,
    cache: ActivationCache,
    cache_dir: Path,
    norm: NormConvention,
    directions: torch.Tensor | None,
    reserved: int,
    progress: bool,
) -> DictionaryContext:
    """The shared state of one dictionary's batches; its activation store gets what the captured
    activations and the ``reserved`` bytes (the logit table's) leave of the budget, beyond which
    it goes to disk in the scratch folder."""
    d, model, data = src.dictionaries[i], src.model, src.data
    counted = ~data.ignore.reshape(-1)
    hook = cache.acts[d.hook_name]
    budget = max(0, src.config.features.activation_cache_mb * 2**20 - cache.bytes_in_memory() - reserved)
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
    post = post_norm(model, d.hook_name) if effects == "direct" else None
    post_scale = cache.acts[f"{post}.hook_scale"].reshape(-1) if post else None
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
        post_scale=post_scale,
        seed=src.config.seed,
        release=cache.release,
        counted=~data.ignore,
        records=src.config.records,
    )


def build_feature_cache(sources: Sources, cache_dir: Path, progress: bool = True) -> dict:
    """Compute one FeatureData per feature id of every dictionary (a HeadData per head, a
    RecordData per imported record) into ``cache_dir``, and the prompt pages' data;
    resumes from the batches a matching earlier build left. Returns the manifest, with
    this run's ``model_passes``, ``reused_batches``, ``seconds`` and (when it computed hovers)
    ``hovers`` and ``hover_positions`` (the distinct positions of its direct hovers) added to its stats."""
    started = time.perf_counter()
    src, fc = sources, sources.config.features
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    remove_scratch(cache_dir)
    remove_partial_files(cache_dir)
    norm = norm_convention(src.model)
    directions = [d.residual_directions() for d in src.dictionaries]
    ids = [d.feature_ids for d in src.dictionaries] + [h.feature_ids for h in src.heads]
    ids += [f.feature_ids for f in src.imports]
    plan = [batches_of(list(f), fc.feature_batch_size) for f in ids]
    head = manifest_head(src, summaries_of(src, norm, directions), [len(p) for p in plan])
    drop_if_stale(cache_dir, head)
    missing = {i: [b for b in range(len(p)) if not batch_path(cache_dir, i, b).is_file()] for i, p in enumerate(plan)}
    total = sum(len(p) for p in plan)
    reused = total - sum(len(m) for m in missing.values())
    if reused:
        log.info(f"reusing {reused} of {total} feature batches from an earlier build")
    stats = {"n_tokens": int((~src.data.ignore).sum()), "n_sequences": len(src.data.tokens), "n_nonfinite": 0}
    write_json(cache_dir / "manifest.json", {**head, "complete": False, "stats": stats})
    seconds: dict[str, float] = {}
    n_dicts = len(src.dictionaries)
    todo = [i for i, m in missing.items() if m and i < n_dicts]
    recorders = {
        n_dicts + j: HeadRecorder(
            h,
            src.model,
            tokens=src.data.tokens,
            ignore=src.data.ignore,
            fc=fc,
            hc=src.config.heads,
            seed=src.config.seed,
        )
        for j, h in enumerate(src.heads)
        if missing[n_dicts + j]
    }
    n_models = n_dicts + len(src.heads)
    for j, folder in enumerate(src.imports):  # before the model pass: a bad file fails early
        write_record_batches(folder, cache_dir, n_models + j, plan[n_models + j])
    model_passes = 0
    shown = Shown(set(), set())
    n_nonfinite = 0
    counts: dict[str, int] = {}
    if todo or recorders:
        cache = capture_for(src, todo, directions, cache_dir, progress, list(recorders.values()))
        model_passes, seconds["model pass"] = cache.model_passes, cache.seconds
        if recorders:
            seconds["heads (in the model pass)"] = sum(r.seconds for r in recorders.values())
            for i, recorder in recorders.items():
                write_heads(cache_dir, i, recorder.head_data(), plan[i], shown)
        budget = max(0, fc.activation_cache_mb * 2**20 - cache.bytes_in_memory())
        arrays = Arrays(budget, cache_dir / MEMMAP_DIR)
        try:
            logits = logit_table(src, todo=todo, missing=missing, plan=plan, directions=directions, arrays=arrays)
            pending: list[Pending] = []
            exact: dict[int, ExactSource] = {}
            for i in todo:
                name = src.dictionaries[i].name
                t0 = time.perf_counter()
                ctx = context_for(
                    src,
                    i=i,
                    cache=cache,
                    cache_dir=cache_dir,
                    norm=norm,
                    directions=directions[i],
                    reserved=budget - arrays.left,
                    progress=progress,
                )
                seconds[f"encode {name}"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                todo_batches = [(b, plan[i][b]) for b in missing[i]]
                try:
                    n_nonfinite += batch_pass(src, ctx, cache_dir, todo_batches, logits, pending, shown, progress)
                finally:
                    ctx.acts.close()
                if ctx.effects == "exact":
                    exact[i] = exact_source(src, cache, i, ctx.decoder)
                seconds[f"features {name}"] = time.perf_counter() - t0
                del ctx
            if pending:
                t0 = time.perf_counter()
                counts = hover_phase(
                    src, cache, norm=norm, logits=logits, pending=pending, exact=exact, progress=progress
                )
                seconds["hovers"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                n_nonfinite += write_pending(cache_dir, pending, shown, progress)
                seconds["write"] = time.perf_counter() - t0
        finally:
            arrays.close()
            cache.close()
            remove_scratch(cache_dir)
    t0 = time.perf_counter()
    for i, p in enumerate(plan[:n_models]):
        if i in recorders:  # write_heads wrote (and counted) all its batches
            continue
        for b in set(range(len(p))) - set(missing[i]):
            if i >= n_dicts:
                for hd in read_head_batch(batch_path(cache_dir, i, b)):
                    shown.tokens.update(hd.token_ids())
                continue
            for fd in read_batch(batch_path(cache_dir, i, b)):
                shown.add(fd)
                n_nonfinite += fd.n_nonfinite
    if src.prompts:
        t1 = time.perf_counter()
        prompt_phase(src, cache_dir, shown.tokens, progress)
        seconds["prompts"] = time.perf_counter() - t1
    seqs = sorted(shown.seqs)
    write_json(cache_dir / SEQUENCES_FILE, {str(q): src.data.tokens[q].tolist() for q in seqs})
    for q in seqs:
        shown.tokens.update(src.data.tokens[q].tolist())
    ordered = sorted(shown.tokens)
    write_json(cache_dir / "tokens.json", {str(t): s for t, s in zip(ordered, src.token_texts(ordered))})
    write_json(cache_dir / STRINGS_FILE, {str(t): s for t, s in zip(ordered, src.raw_token_texts(ordered))})
    stats["n_nonfinite"] = n_nonfinite
    manifest = {**head, "complete": True, "stats": stats}
    write_json(cache_dir / "manifest.json", manifest)
    seconds["finish"] = time.perf_counter() - t0 - seconds.get("prompts", 0.0)
    seconds["total"] = time.perf_counter() - started
    if progress:
        log.info("feature cache: " + ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items()))
    run = {"model_passes": model_passes, "reused_batches": reused, "seconds": seconds, **counts}
    return {**manifest, "stats": {**stats, **run}}


def batch_pass(
    src: Sources,
    ctx: DictionaryContext,
    cache_dir: Path,
    batches: list[tuple[int, list[int]]],
    logits: LogitTable | None,
    pending: list[Pending],
    shown: Shown,
    progress: bool,
) -> int:
    """Build the batches (number, feature ids) of one dictionary but their hovers: with effects
    off, write each at once (adding what its pages show to ``shown``, returning the NaN/inf count);
    with effects on, append it to ``pending`` for the hover phase. Memmapped pages a batch read
    are handed back after it, so memory does not fill with them batch after batch."""
    n_nonfinite = 0
    n_features = sum(len(ids) for _, ids in batches)
    with (
        paused_gc(),
        tqdm(total=n_features, desc=f"features {ctx.d.name}", unit="feature", disable=not progress) as bar,
    ):
        for b, ids in batches:
            tensors, request = batch_tensors(src.model, src.data.tokens, src.config.features, ctx, ids, logits)
            if request is None:
                n_nonfinite += write_features(cache_dir, ctx.index, b, feature_data(tensors), shown)
            else:
                pending.append(Pending(ctx.index, b, tensors, request))
            ctx.release()
            ctx.acts.release()
            bar.update(len(ids))
    return n_nonfinite


def logit_table(
    src: Sources,
    *,
    todo: list[int],
    missing: dict[int, list[int]],
    plan: list[list[list[int]]],
    directions: list,
    arrays: Arrays,
) -> LogitTable | None:
    """The table for the logit effects of every feature whose direct hovers this build computes
    (None if there are none)."""
    n_rows = sum(
        len(plan[i][b])
        for i in todo
        if dictionary_effects(src.config.features.effects, directions[i]) == "direct"
        for b in missing[i]
    )
    if not n_rows:
        return None
    model = src.model
    width = (
        None
        if softcap_enabled(model.cfg.output_logits_soft_cap)
        else 2 * min(src.config.features.hover_top, model.cfg.d_vocab)
    )
    return LogitTable(n_rows, model.cfg.d_vocab, width, arrays)


def exact_source(src: Sources, cache: ActivationCache, i: int, decoder: torch.Tensor) -> ExactSource:
    d, model = src.dictionaries[i], src.model
    start = None
    if (layer := start_layer(d.hook_name)) is not None:
        start = cache.acts[block_hook(layer, "hook_resid_pre")].view(*src.data.tokens.shape, model.cfg.d_model)
    return ExactSource(d.hook_name, start, decoder)
