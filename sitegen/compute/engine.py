"""build_feature_cache: every feature of every dictionary -> the on-disk cache.

Steps: check the old cache (reuse it, or say why it is stale and drop it); write the
manifest with ``complete: false``; write the batches of imported NeuronRecord folders (no
model needed: a bad file fails before the model pass); then the stages, on the configured
executor (``executors.py``: in this process, or on Ray), each a list of independent shards
whose outputs go to storage atomically:

1. token shards (``token_shard.py``): the model pass and each dictionary's encode over a range
   of sequences (the attention-head recorders see their hooks in that pass);
2. feature shards (``feature_shard.py``): the missing feature batches, from every token
   shard's part, in shard order; after them the head batches, their recorders merged;
3. hovers, grouped by token shard, then the waiting batch files written;

then the prompt pages (``prompts.json``), ``sequences.json``, ``tokens.json``,
``token_strings.json`` and the manifest with ``complete: true``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from sitegen.cache.feature_data import DictionarySummary
from sitegen.cache.files import SEQUENCES_FILE, STRINGS_FILE, batch_path, read_batch, read_head_batch, write_json
from sitegen.cache.manifest import drop_if_stale, remove_partial_files
from sitegen.compute.activations import remove_scratch
from sitegen.compute.effects import NormConvention, norm_convention
from sitegen.compute.executors import Executor, LocalExecutor
from sitegen.compute.feature_shard import feature_shard, hover_shard, waiting, write_shard
from sitegen.compute.manifest import manifest_head
from sitegen.compute.prompts import prompt_phase
from sitegen.compute.shard_files import SHARDS_DIR, BuildPlan, feature_groups, run_key, token_ranges
from sitegen.compute.token_shard import dictionary_effects, merged_heads, token_shard
from sitegen.compute.writing import Shown, write_heads
from sitegen.imports import write_record_batches
from sitegen.report import log
from sitegen.sources import Sources
from sitegen.sources.dictionaries import post_norm


def batches_of(ids: list[int], size: int) -> list[list[int]]:
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def summaries_of(src: Sources, norm: NormConvention) -> list[DictionarySummary]:
    out = []
    for d in src.dictionaries:
        dirs = d.residual_directions()
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


def storage_root(src: Sources, cache_dir: Path) -> Path:
    """Where shard outputs go: ``executor.storage``, or the cache folder's scratch."""
    storage = src.config.executor.storage
    return src.config.resolve(storage) if storage else cache_dir / SHARDS_DIR


def build_feature_cache(
    sources: Sources, cache_dir: Path, progress: bool = True, executor: Executor | None = None
) -> dict:
    """Compute one FeatureData per feature id of every dictionary (a HeadData per head, a
    RecordData per imported record) into ``cache_dir``, and the prompt pages' data, on
    ``executor`` (default: in this process); resumes from the batches (and the shards) a
    matching earlier build left. Returns the manifest, with this run's ``model_passes``,
    ``reused_batches``, ``seconds`` and (when it computed hovers) ``hovers`` and
    ``hover_positions`` (the distinct positions of its direct hovers) added to its stats."""
    started = time.perf_counter()
    src, fc, ex = sources, sources.config.features, sources.config.executor
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    remove_scratch(cache_dir)
    remove_partial_files(cache_dir)
    norm = norm_convention(src.model)
    ids = [d.feature_ids for d in src.dictionaries] + [h.feature_ids for h in src.heads]
    ids += [f.feature_ids for f in src.imports]
    plan = [batches_of(list(f), fc.feature_batch_size) for f in ids]
    head = manifest_head(src, summaries_of(src, norm), [len(p) for p in plan])
    drop_if_stale(cache_dir, head)
    missing = {i: [b for b in range(len(p)) if not batch_path(cache_dir, i, b).is_file()] for i, p in enumerate(plan)}
    total = sum(len(p) for p in plan)
    reused = total - sum(len(m) for m in missing.values())
    if reused:
        log.info(f"reusing {reused} of {total} feature batches from an earlier build")
    stats = {"n_tokens": int((~src.data.ignore).sum()), "n_sequences": len(src.data.tokens), "n_nonfinite": 0}
    write_json(cache_dir / "manifest.json", {**head, "complete": False, "stats": stats})
    n_dicts, n_models = len(src.dictionaries), len(src.dictionaries) + len(src.heads)
    for j, folder in enumerate(src.imports):  # before the model pass: a bad file fails early
        write_record_batches(folder, cache_dir, n_models + j, plan[n_models + j])
    todo = [i for i in range(n_dicts) if missing[i]]
    bp = BuildPlan(
        storage=storage_root(src, cache_dir) / run_key(head),
        out=cache_dir,
        plan=plan,
        missing=missing,
        todo=todo,
        heads=[i for i in range(n_dicts, n_models) if missing[i]],
        tokens=token_ranges(len(src.data.tokens), fc.token_batch_size, ex.token_shards),
        features=feature_groups([(i, b) for i in todo for b in missing[i]], ex.feature_shards),
    )
    seconds: dict[str, float] = {}
    run: dict[str, int] = {"model_passes": 0}
    shown, n_nonfinite = Shown(set(), set()), 0  # what the batch files show
    done: set[tuple[int, int]] = set()  # the batches this run wrote (the others are read back)
    if todo or bp.heads:
        executor = executor or LocalExecutor(src)

        def stage(name: str, fn, items: list[int]) -> list[dict]:
            t0 = time.perf_counter()
            out = executor.map(name, fn, bp, items, progress)
            seconds[name] = time.perf_counter() - t0
            return out

        shards = stage("token shards", token_shard, list(range(len(bp.tokens))))
        run["model_passes"] = int(any(r["model_passes"] for r in shards))
        if bp.heads:
            for i, recorder in merged_heads(src, bp).items():
                heads = recorder.head_data()
                write_heads(cache_dir, i, heads, plan[i])
                for hd in heads:
                    shown.tokens.update(hd.token_ids())
                done.update((i, b) for b in range(len(plan[i])))
        written = stage("feature shards", feature_shard, list(range(len(bp.features))))
        if waiting(bp):
            counts = stage("hovers", hover_shard, list(range(len(bp.tokens))))
            run.update({k: sum(c.get(k, 0) for c in counts) for k in ("hovers", "hover_positions")})
            written += stage("writing", write_shard, list(range(len(bp.features))))
        for w in written:
            shown.tokens.update(w["tokens"])
            shown.seqs.update(w["seqs"])
            n_nonfinite += w["n_nonfinite"]
            done.update(tuple(key) for key in w["batches"])
        shutil.rmtree(bp.storage, ignore_errors=True)
        if not src.config.executor.storage:
            shutil.rmtree(storage_root(src, cache_dir), ignore_errors=True)
    t0 = time.perf_counter()
    n_nonfinite += add_shown(shown, cache_dir, plan, n_dicts, n_models, done)
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
    return {**manifest, "stats": {**stats, **run, "reused_batches": reused, "seconds": seconds}}


def add_shown(
    shown: Shown, cache_dir: Path, plan: list[list[list[int]]], n_dicts: int, n_models: int, done: set
) -> int:
    """Add what the batch files of the model's dictionaries that this run did not write (reused
    ones) show beyond themselves; returns their NaN/inf count."""
    n_nonfinite = 0
    for i, p in enumerate(plan[:n_models]):
        for b in range(len(p)):
            if (i, b) in done:
                continue
            if i >= n_dicts:
                for hd in read_head_batch(batch_path(cache_dir, i, b)):
                    shown.tokens.update(hd.token_ids())
                continue
            for fd in read_batch(batch_path(cache_dir, i, b)):
                shown.add(fd)
                n_nonfinite += fd.n_nonfinite
    return n_nonfinite
