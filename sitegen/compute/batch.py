"""One feature batch of one dictionary -> the tensors of its FeatureData (serialise.py
turns them into the batch file).

A batch's content depends only on the dictionary, the data and the feature ids in
it (every whole-dictionary quantity comes from the dictionary's activation store,
every random draw from a per-feature seed), so batches can be built in any order,
in any process, and come out byte-identical.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer

from sitegen.compute.correlations import correlated, decoder_neighbours, neuron_alignment
from sitegen.compute.effects import NormConvention, hover_basis, logit_directions
from sitegen.compute.examples import select_examples, windows
from sitegen.compute.hovers import HoverRequest, LogitTable
from sitegen.compute.records import feature_records
from sitegen.compute.serialise import FeatureTensors
from sitegen.compute.stats import batch_stats, dense_histograms, row_histograms
from sitegen.compute.store import ActivationStore
from sitegen.config import FeaturesConfig, RecordsConfig
from sitegen.sources.dictionaries import Dictionary


@dataclass
class DictionaryContext:
    """Everything the batches of one dictionary share."""

    index: int
    d: Dictionary
    acts: ActivationStore
    decoder: torch.Tensor  # [d_sae, d_in]
    unit_decoder: torch.Tensor  # [d_sae, d_in] rows of unit norm
    directions: torch.Tensor | None  # [d_sae, d_model] residual directions
    effects: str  # "direct" | "exact" | "none", as this dictionary supports
    norm: NormConvention
    post_scale: torch.Tensor | None  # [n_tok] clean scale of the hook's post-norm (direct effects, Gemma 2/3)
    seed: int
    release: Callable[[], None]  # hands back the pages of memmapped activations read so far
    counted: torch.Tensor  # [n_seq, ctx] bool: the positions statistics count
    records: RecordsConfig


def feature_seed(seed: int, dict_index: int, feature: int) -> int:
    """Seed of one feature's random draws: a hash of (config seed, dictionary, feature)."""
    digest = hashlib.blake2b(f"{seed}:{dict_index}:{feature}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def top_ids_values(u: torch.Tensor, k: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, values) [B, k] of each row's k largest (or smallest) entries, in order."""
    values, ids = torch.topk(u, k, dim=1, largest=largest)
    return ids, values


@torch.no_grad()
def batch_tensors(
    model: HookedTransformer,
    tokens: torch.Tensor,
    cfg: FeaturesConfig,
    ctx: DictionaryContext,
    ids: list[int],
    logits: LogitTable | None,
) -> tuple[FeatureTensors, HoverRequest | None]:
    """Everything the FeatureData of the features ``ids`` (ascending) of one dictionary show,
    but their hovers: those are the request (None with effects off), computed by the build's
    hover phase (hovers.py) for all batches at once. Direct effects put the features' logit
    effects into ``logits``."""
    n_seq, n_ctx = tokens.shape
    n_tok, n_rows = n_seq * n_ctx, len(ids)
    idx = torch.tensor(ids, dtype=torch.int64)
    ent = ctx.acts.entries(idx)
    st = batch_stats(ent, n_rows)
    edges, counts = row_histograms(ent.rows, ent.val, n_rows, st.min_nonzero, st.max_nonzero, cfg.histogram_bins)
    seeds = [feature_seed(ctx.seed, ctx.index, f) for f in ids]
    flat_tokens = tokens.reshape(-1)
    sel = select_examples(ent, st, cfg, seeds, flat_tokens, ctx.d.can_be_negative)
    win = windows(sel, ent, tokens, cfg)
    # hovers: every shown non-zero activation with a next token
    valid = torch.arange(win.flat.shape[1]) < win.length[:, None]
    need = valid & (win.acts != 0) & (win.flat % n_ctx < n_ctx - 1) & (ctx.effects != "none")
    pair_keys, inverse = torch.unique((sel.row[:, None] * n_tok + win.flat)[need], return_inverse=True)
    hover_of = torch.full(win.flat.shape, -1, dtype=torch.int64)
    hover_of[need] = inverse  # pairs sorted by (row, position)
    pair_rows, pair_flat = pair_keys // n_tok, pair_keys % n_tok
    pair_act = torch.zeros(len(pair_keys)).index_put_((inverse,), win.acts[need])
    u = logit_directions(model, ctx.norm, ctx.directions[idx]) if ctx.directions is not None else None  # [B, V]
    basis = hover_basis(model, u, cfg.hover_top) if ctx.effects == "direct" and u is not None else None
    request = None
    if ctx.effects != "none":
        request = HoverRequest(pair_rows, pair_flat, pair_act, flat_tokens[pair_flat + 1])
        if ctx.effects == "direct":
            assert logits is not None and u is not None, "direct effects: a logit table and logit effects"
            request.rows = pair_rows + logits.add(u, None if basis is None else basis[0])
            if ctx.post_scale is not None:  # the residual stream receives act / scale of the post-norm
                request.acts = pair_act / ctx.post_scale[pair_flat]
        else:
            request.rows = idx[pair_rows]  # exact: rows of the dictionary's decoder
    gram, hook_sums = ctx.acts.correlation_sums(idx, ent)
    acts = ctx.acts
    sx, sxx = acts.sx[idx], acts.sxx[idx]
    k = min(cfg.logit_top, model.cfg.d_vocab)
    features = FeatureTensors(
        dictionary=ctx.d.name,
        ids=ids,
        can_be_negative=ctx.d.can_be_negative,
        n_ctx=n_ctx,
        n_intervals=cfg.n_intervals,
        stats=st,
        n_tokens=ent.n_tokens,
        n_nonfinite=ent.n_nonfinite,
        hist_edges=edges,
        hist_counts=counts,
        sel=sel,
        win=win,
        hover_of=hover_of,
        hovers=None,
        logit_top=None if u is None else top_ids_values(u, k, largest=True),
        logit_bottom=None if u is None else top_ids_values(u, k, largest=False),
        logit_hist=None if u is None else dense_histograms(u, cfg.logit_histogram_bins),
        hover_basis=basis,
        alignment=neuron_alignment(ctx.decoder[idx], cfg.n_related),
        corr_neurons=correlated(
            acts.n_clean,
            hook_sums,
            sx,
            sxx,
            acts.sh,
            acts.shh,
            cfg.n_related,
            idx if ctx.d.kind == "neurons" else None,
            with_cosine=True,
        ),
        corr_features=correlated(acts.n_clean, gram, sx, sxx, acts.sx, acts.sxx, cfg.n_related, idx, False),
        neighbours=decoder_neighbours(ctx.unit_decoder, idx, cfg.n_neighbours),
        records=feature_records(ent, seeds, counted=ctx.counted, can_be_negative=ctx.d.can_be_negative, rc=ctx.records),
    )
    return features, request
