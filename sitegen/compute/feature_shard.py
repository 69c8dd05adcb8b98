"""Stages 2 and 3 of a build: feature shards, then the hovers grouped by token shard.

- ``feature_shard``: for each of its feature batches, gather the batch's part of every token
  shard (``ShardedActs``: the interface of a whole-data activation store, with the partials
  added in shard order) and build the batch (``batch.py``). Without effects the batch file is
  written at once; with effects the batch waits in storage with its hover request and its
  logit effects.
- ``hover_shard``: every waiting hover at a position of one token shard, of any batch, from that
  shard's residual streams: each position's clean logits are computed once.
- ``write_shard``: a feature shard's waiting batches, each with its hovers put back together
  in request order, written to the cache.
"""

from __future__ import annotations

import torch
from transformer_lens.utilities.activation_functions import softcap_enabled

from sitegen.cache.feature_data import FeatureData
from sitegen.cache.files import batch_path, write_batch
from sitegen.compute.activations import start_layer
from sitegen.compute.batch import DictionaryContext, batch_tensors
from sitegen.compute.correlations import unit_rows
from sitegen.compute.effects import HoverTable, cat_tables, norm_convention
from sitegen.compute.hovers import ExactSource, HoverRequest, LogitTable, direct_tables, exact_tables
from sitegen.compute.serialise import feature_data
from sitegen.compute.shard_files import BuildPlan, load, load_array, save, save_array
from sitegen.compute.spill import Arrays
from sitegen.compute.store import BatchEntries
from sitegen.compute.token_shard import TOTALS, dictionary_effects
from sitegen.compute.writing import Shown, paused_gc
from sitegen.hooks import block_hook
from sitegen.sources import Sources


class Written:
    """The batch files a shard wrote, and what they show beyond themselves (for the driver's
    ``tokens.json`` and ``sequences.json``), so it need not read them back."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, int]] = []
        self.shown = Shown(set(), set())
        self.n_nonfinite = 0

    def add(self, bp: BuildPlan, i: int, b: int, features: list[FeatureData]) -> None:
        write_batch(bp.out, i, b, features)
        self.batches.append((i, b))
        for fd in features:
            self.shown.add(fd)
            self.n_nonfinite += fd.n_nonfinite

    def result(self) -> dict:
        shown = self.shown
        return {
            "batches": self.batches,
            "tokens": sorted(shown.tokens),
            "seqs": sorted(shown.seqs),
            "n_nonfinite": self.n_nonfinite,
        }


class ShardedActs:
    """One feature batch's activations over the whole data, from the token shards' files: what
    ``batch_tensors`` reads of an activation store (``store.py``)."""

    def __init__(self, bp: BuildPlan, i: int, b: int):
        n = len(bp.tokens)
        totals = [load(bp.shard_dir(s) / str(i) / TOTALS) for s in range(n)]
        self.parts = [load(bp.shard_dir(s) / str(i) / f"{b}.pt") for s in range(n)]
        self.n_clean = sum(t["n_clean"] for t in totals)
        self.sx, self.sxx, self.sh, self.shh = (added([t[k] for t in totals]) for k in ("sx", "sxx", "sh", "shh"))
        scales = [t["post_scale"] for t in totals]
        self.post_scale = None if scales[0] is None else torch.cat(scales)

    def entries(self, ids: torch.Tensor) -> BatchEntries:
        """The batch's entries by (feature, token): the shards' in token order, stably by feature."""
        p = self.parts
        if len(p) == 1:
            x = p[0]
            return BatchEntries(x["rows"], x["tok"], x["val"], x["n_tokens"], x["n_nonfinite"])
        rows = torch.cat([x["rows"] for x in p])
        order = torch.argsort(rows, stable=True)
        n_tokens, n_nonfinite = added([x["n_tokens"] for x in p]), added([x["n_nonfinite"] for x in p])
        tok, val = torch.cat([x["tok"] for x in p]), torch.cat([x["val"] for x in p])
        return BatchEntries(rows[order], tok[order], val[order], n_tokens, n_nonfinite)

    def correlation_sums(self, ids: torch.Tensor, ent: BatchEntries) -> tuple[torch.Tensor, torch.Tensor]:
        return added([x["gram"] for x in self.parts]), added([x["hook_sums"] for x in self.parts])

    def release(self) -> None:
        """Nothing mapped: the parts are in memory."""

    def close(self) -> None:
        self.parts = []


def added(parts: list[torch.Tensor]) -> torch.Tensor:
    """The parts' sum, added in shard order (one part: itself, bit for bit)."""
    total = parts[0].clone()
    for part in parts[1:]:
        total += part
    return total


def batch_context(src: Sources, i: int, acts: ShardedActs) -> DictionaryContext:
    d = src.dictionaries[i]
    directions = d.residual_directions()
    effects = dictionary_effects(src.config.features.effects, directions)
    decoder = d.decoder().detach().float().cpu()
    return DictionaryContext(
        index=i,
        d=d,
        acts=acts,
        decoder=decoder,
        unit_decoder=unit_rows(decoder),
        directions=None if directions is None else directions.detach().float().cpu(),
        effects=effects,
        norm=norm_convention(src.model),
        post_scale=acts.post_scale if effects == "direct" else None,
        seed=src.config.seed,
        release=lambda: None,
        counted=~src.data.ignore,
        records=src.config.records,
    )


def basis_width(src: Sources) -> int | None:
    model = src.model
    if softcap_enabled(model.cfg.output_logits_soft_cap):
        return None
    return 2 * min(src.config.features.hover_top, model.cfg.d_vocab)


def feature_shard(src: Sources, bp: BuildPlan, f: int) -> dict:
    """Build feature shard ``f``'s batches (those not yet written or waiting for their hovers)."""
    fc = src.config.features
    written = Written()
    with paused_gc():
        for i, b in bp.features[f]:
            if batch_path(bp.out, i, b).is_file() or bp.pending(i, b).is_file():
                continue
            acts = ShardedActs(bp, i, b)
            ctx = batch_context(src, i, acts)
            ids = bp.plan[i][b]
            table, arrays = None, scratch(src, bp, f"features-{f}")
            if ctx.effects == "direct":
                table = LogitTable(len(ids), src.model.cfg.d_vocab, basis_width(src), arrays)
            try:
                tensors, request = batch_tensors(src.model, src.data.tokens, fc, ctx, ids, table)
                acts.close()
                if request is None:
                    written.add(bp, i, b, feature_data(tensors))
                    continue
                if table is not None:
                    save_array(bp.logit_effects(i, b), table.u)
                u_max, basis = (None, None) if table is None else (table.u_max, table.basis)
                save(bp.request(i, b), {"request": request, "u_max": u_max, "basis": basis})
                save(bp.pending(i, b), tensors)  # last: a pending batch has its request
            finally:
                arrays.close()
    return written.result()


def scratch(src: Sources, bp: BuildPlan, name: str) -> Arrays:
    """Memory within ``features.activation_cache_mb``, beyond it files in the storage's scratch."""
    return Arrays(src.config.features.activation_cache_mb * 2**20, bp.storage / "scratch" / name)


def waiting(bp: BuildPlan) -> list[tuple[int, int]]:
    """The (dictionary, batch) pairs waiting for hovers, in plan order."""
    return [(i, b) for group in bp.features for i, b in group if bp.pending(i, b).is_file()]


def hover_shard(src: Sources, bp: BuildPlan, s: int) -> dict:
    """Every waiting hover at a position of token shard ``s``: a table per waiting batch (rows in
    its request's order, for the positions in this shard)."""
    keys = waiting(bp)
    if bp.hovers(s).is_file() and set(keys) <= set(load(bp.hovers(s))):
        return {"hovers": 0, "hover_positions": 0}
    model, fc = src.model, src.config.features
    lo, hi = (q * src.data.tokens.shape[1] for q in bp.tokens[s])
    folder = bp.shard_dir(s)
    final = load_array(folder / "final.npy")
    shard: dict[tuple[int, int], HoverRequest] = {}
    meta: dict[tuple[int, int], dict] = {}
    for key in keys:
        meta[key] = load(bp.request(*key))
        r = meta[key]["request"]
        here = (r.flat >= lo) & (r.flat < hi)
        shard[key] = HoverRequest(r.rows[here], r.flat[here] - lo, r.acts[here], r.next_tok[here])
    direct = [k for k in keys if meta[k]["u_max"] is not None]
    tables: dict[tuple[int, int], HoverTable] = {}
    if direct:
        n_rows = sum(len(meta[k]["u_max"]) for k in direct)
        arrays = scratch(src, bp, f"hovers-{s}")
        try:
            logits = LogitTable(n_rows, model.cfg.d_vocab, basis_width(src), arrays)
            requests = []
            for k in direct:
                first = logits.add(load_array(bp.logit_effects(*k)), meta[k]["basis"])
                r = shard[k]
                requests.append(HoverRequest(r.rows + first, r.flat, r.acts, r.next_tok))
            for k, table in zip(direct, direct_tables_of(src, final, logits, requests)):
                tables[k] = table
        finally:
            arrays.close()
    for i in sorted({k[0] for k in keys if meta[k]["u_max"] is None}):
        group = [k for k in keys if k[0] == i and meta[k]["u_max"] is None]
        d = src.dictionaries[i]
        layer = start_layer(d.hook_name)
        start = None if layer is None else load_array(folder / f"{block_hook(layer, 'hook_resid_pre')}.npy")
        lo_seq, hi_seq = bp.tokens[s]
        if start is not None:
            start = start.view(hi_seq - lo_seq, -1, model.cfg.d_model)
        source = ExactSource(d.hook_name, start, d.decoder().detach().float().cpu())
        for k, table in zip(
            group,
            exact_tables(
                model,
                source=source,
                tokens=src.data.tokens[lo_seq:hi_seq],
                final=final,
                requests=[shard[k] for k in group],
                k=fc.hover_top,
                batch_size=fc.token_batch_size,
                release=lambda: None,
                tick=lambda n: None,
            ),
        ):
            tables[k] = table
    save(bp.hovers(s), tables)
    positions = [shard[k].flat for k in direct]
    n_positions = len(torch.unique(torch.cat(positions))) if positions else 0
    return {"hovers": sum(len(r.rows) for r in shard.values()), "hover_positions": n_positions}


def direct_tables_of(
    src: Sources, final: torch.Tensor, logits: LogitTable, requests: list[HoverRequest]
) -> list[HoverTable]:
    return direct_tables(
        src.model,
        norm=norm_convention(src.model),
        final=final,
        logits=logits,
        requests=requests,
        k=src.config.features.hover_top,
        release=lambda: None,
        tick=lambda n: None,
    )


def write_shard(src: Sources, bp: BuildPlan, f: int) -> dict:
    """Write feature shard ``f``'s waiting batches, each with its hovers from every token shard."""
    k = src.config.features.hover_top
    n_ctx = src.data.tokens.shape[1]
    mine = [key for key in bp.features[f] if bp.pending(*key).is_file() and not batch_path(bp.out, *key).is_file()]
    written = Written()
    if not mine:
        return written.result()
    shards = [load(bp.hovers(s)) for s in range(len(bp.tokens))]
    with paused_gc():
        for key in mine:
            flat = load(bp.request(*key))["request"].flat
            where = [((flat >= lo * n_ctx) & (flat < hi * n_ctx)).nonzero().squeeze(1) for lo, hi in bp.tokens]
            table = cat_tables([shard[key] for shard in shards], k)
            tensors = load(bp.pending(*key))
            tensors.hovers = table.take(torch.argsort(torch.cat(where)))
            written.add(bp, *key, feature_data(tensors))
    return written.result()
