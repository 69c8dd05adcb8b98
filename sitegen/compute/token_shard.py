"""Stage 1 of a build, a token shard: the model pass over one range of sequences, and what the
later stages need from it, written to the build's storage.

Per feature dictionary with batches to build, the shard encodes its tokens once (its own
activation store, ``store.py``) and writes, per missing feature batch, the batch's non-zero
activations (global token indices) with its additive partials: the Gram rows and hook sums the
correlations need, and the NaN/inf counts; per dictionary, the sums over all features and hook
dimensions and the post-norm scales. Head dictionaries write their recorders' part (records,
summaries' sums). The residual streams hovers start from stay in the shard's folder too, so the
hover stage computes each position's clean logits once, in the shard that owns it.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
from tqdm import tqdm

from sitegen.compute.activations import MEMMAP_DIR, ActivationCache, capture_activations, final_resid_hook, start_layer
from sitegen.compute.heads import HeadRecorder
from sitegen.compute.shard_files import BuildPlan, finished_folder, load, new_folder, save, save_array
from sitegen.compute.store import NeuronActs, SparseActs
from sitegen.hooks import block_hook
from sitegen.sources import Sources
from sitegen.sources.dictionaries import post_norm

TOTALS = "totals.pt"
CONTENTS = "contents.json"  # what the shard holds (BuildPlan.contents), written last


def dictionary_effects(effects: str, directions: torch.Tensor | None) -> str:
    """The configured effects, or "none" where direct effects have no residual direction."""
    return "none" if effects == "direct" and directions is None else effects


def hook_widths(src: Sources, todo: list[int]) -> dict[str, int]:
    """The hooks one model pass captures for the dictionaries ``todo``: theirs, and the residual
    streams (and post-norm scales) their effects and hovers start from."""
    model, effects = src.model, src.config.features.effects
    widths: dict[str, int] = {}
    for i in todo:
        d = src.dictionaries[i]
        widths[d.hook_name] = d.d_in
        kind = dictionary_effects(effects, d.residual_directions())
        if kind != "none":
            widths[final_resid_hook(model)] = model.cfg.d_model
        if kind == "direct" and (norm := post_norm(model, d.hook_name)):
            widths[f"{norm}.hook_scale"] = 1
        if kind == "exact" and (layer := start_layer(d.hook_name)) is not None:
            widths[block_hook(layer, "hook_resid_pre")] = model.cfg.d_model
    return widths


def head_recorders(src: Sources, bp: BuildPlan) -> dict[int, HeadRecorder]:
    """A fresh recorder per head dictionary with batches to build (index -> recorder)."""
    n_dicts = len(src.dictionaries)
    return {
        i: HeadRecorder(
            src.heads[i - n_dicts],
            src.model,
            tokens=src.data.tokens,
            ignore=src.data.ignore,
            fc=src.config.features,
            hc=src.config.heads,
            seed=src.config.seed,
        )
        for i in bp.heads
    }


def shard_store(
    src: Sources, i: int, cache: ActivationCache, counted: torch.Tensor, scratch: Path
) -> SparseActs | NeuronActs:
    """Dictionary ``i``'s activation store over the shard's tokens (within what the captured
    activations leave of ``features.activation_cache_mb``)."""
    d, fc = src.dictionaries[i], src.config.features
    hook = cache.acts[d.hook_name]
    if d.kind == "neurons":
        return NeuronActs(d, hook, counted, cache.release)
    return SparseActs(
        d,
        hook,
        counted,
        device=str(src.model.cfg.device),
        progress=False,
        budget=max(0, fc.activation_cache_mb * 2**20 - cache.bytes_in_memory()),
        folder=scratch,
        release_hook=cache.release,
    )


def write_dictionary(src: Sources, bp: BuildPlan, i: int, s: int, cache: ActivationCache, folder: Path) -> None:
    """Dictionary ``i``'s part of shard ``s``: one file per missing batch, and its totals."""
    lo, hi = bp.tokens[s]
    n_ctx = src.data.tokens.shape[1]
    counted = ~src.data.ignore[lo:hi].reshape(-1)
    acts = shard_store(src, i, cache, counted, folder.parent / f"{MEMMAP_DIR}-{s}")
    try:
        for b in bp.missing[i]:
            idx = torch.tensor(bp.plan[i][b], dtype=torch.int64)
            ent = acts.entries(idx)
            gram, hook_sums = acts.correlation_sums(idx, ent)
            part = {
                "rows": ent.rows,
                "tok": ent.tok + lo * n_ctx,
                "val": ent.val.clone(),
                "n_tokens": ent.n_tokens,
                "n_nonfinite": ent.n_nonfinite,
                "gram": gram,
                "hook_sums": hook_sums.clone(),
            }
            save(folder / str(i) / f"{b}.pt", part)
            acts.release()
        scale = f"{post_norm(src.model, src.dictionaries[i].hook_name)}.hook_scale"
        totals = {
            "n_clean": acts.n_clean,
            "sx": acts.sx,
            "sxx": acts.sxx,
            "sh": acts.sh,
            "shh": acts.shh,
            "post_scale": cache.acts[scale].reshape(-1).clone() if scale in cache.acts else None,
        }
        save(folder / str(i) / TOTALS, totals)
    finally:
        acts.close()
        shutil.rmtree(folder.parent / f"{MEMMAP_DIR}-{s}", ignore_errors=True)


def token_shard(src: Sources, bp: BuildPlan, s: int) -> dict:
    """Run token shard ``s`` (unless a finished one is in storage); returns its seconds and
    whether it ran the model."""
    final = bp.shard_dir(s)
    if final.is_dir():
        if (final / CONTENTS).is_file() and bp.covered(json.loads((final / CONTENTS).read_text())):
            return {"model_passes": 0, "seconds": {}}
        shutil.rmtree(final)  # an earlier build's, for fewer batches
    lo, hi = bp.tokens[s]
    folder = new_folder(final)
    try:
        recorders = head_recorders(src, bp)
        fc = src.config.features
        widths = hook_widths(src, bp.todo)
        cache = capture_activations(
            src.model,
            src.data.tokens[lo:hi],
            widths,
            fc.token_batch_size,
            fc.activation_cache_mb,
            folder,
            False,
            list(recorders.values()),
            first_seq=lo,
        )
        seconds = {"model pass": cache.seconds}
        try:
            for i, recorder in recorders.items():
                save(folder / f"{i}.heads.pt", recorder.state())
            t0 = time.perf_counter()
            for i in bp.todo:
                write_dictionary(src, bp, i, s, cache, folder)
            seconds["encode"] = time.perf_counter() - t0
            resid = final_resid_hook(src.model)
            if resid in cache.acts:
                save_array(folder / "final.npy", cache.acts[resid])
            for i in bp.todo:
                d = src.dictionaries[i]
                if fc.effects == "exact" and (layer := start_layer(d.hook_name)) is not None:
                    name = block_hook(layer, "hook_resid_pre")
                    save_array(folder / f"{name}.npy", cache.acts[name])
        finally:
            cache.close()
        (folder / CONTENTS).write_text(json.dumps(bp.contents(), sort_keys=True))
        finished_folder(folder, final)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return {"model_passes": 1, "seconds": seconds}


def merged_heads(src: Sources, bp: BuildPlan) -> dict[int, HeadRecorder]:
    """Each head dictionary's recorder with every token shard's part absorbed, in shard order."""
    recorders = head_recorders(src, bp)
    for s in tqdm(range(len(bp.tokens)), desc="heads", unit="shard", disable=not recorders or len(bp.tokens) < 2):
        for i, recorder in recorders.items():
            recorder.absorb(load(bp.shard_dir(s) / f"{i}.heads.pt"))
    return recorders
