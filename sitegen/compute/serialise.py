"""Batch tensors -> the FeatureData of the batch (``cache.files.write_batch`` writes them).

Everything is read out of the tensors with one ``tolist`` per field and batch, and the
floats rounded there (``rounding.rounded``); the per-feature loop only assembles objects.
(The cyclic GC is paused around it by the engine: a batch creates ~10^5 objects.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sitegen.cache.feature_data import (
    DirectHover,
    Example,
    FeatureData,
    Histogram,
    Hover,
    IntervalGroup,
    ListedHover,
    NeuronRecords,
    Ranked,
    TokenValues,
)
from sitegen.compute.correlations import RankedRows
from sitegen.compute.effects import HoverTable
from sitegen.compute.examples import NEGATIVE, TOP, Selection, Windows
from sitegen.compute.rounding import PRECISE_DIGITS, rounded
from sitegen.compute.stats import BatchStats


@dataclass
class FeatureTensors:
    """Everything a batch of features shows, as tensors over the batch."""

    dictionary: str
    ids: list[int]
    can_be_negative: bool
    n_ctx: int
    n_intervals: int
    stats: BatchStats
    n_tokens: torch.Tensor  # [B]
    n_nonfinite: torch.Tensor  # [B]
    hist_edges: torch.Tensor  # [B, bins + 1]
    hist_counts: torch.Tensor  # [B, bins]
    sel: Selection
    win: Windows
    hover_of: torch.Tensor  # [k, W] index into ``hovers`` or -1
    hovers: HoverTable | None
    logit_top: tuple[torch.Tensor, torch.Tensor] | None  # ids, values [B, n]
    logit_bottom: tuple[torch.Tensor, torch.Tensor] | None
    logit_hist: tuple[torch.Tensor, torch.Tensor] | None  # edges [B, bins + 1], counts [B, bins]
    hover_basis: tuple[torch.Tensor, torch.Tensor] | None  # ids, values [B, 2k] (direct hovers only)
    alignment: RankedRows
    corr_neurons: RankedRows
    corr_features: RankedRows
    neighbours: RankedRows
    records: list[NeuronRecords]  # [B]


def ranked(r: RankedRows) -> list[Ranked]:
    ids, values, count = r.ids.tolist(), rounded(r.values), r.count.tolist()
    extra = rounded(r.extra) if r.extra is not None else [[]] * len(ids)
    return [Ranked(i[:c], v[:c], e[:c]) for i, v, e, c in zip(ids, values, extra, count)]


def token_values(ids: torch.Tensor, values: torch.Tensor, digits: int | None = None) -> list[TokenValues]:
    """One TokenValues per row of ``ids``/``values`` [B, n]."""
    vals = rounded(values) if digits is None else rounded(values, digits)
    return [TokenValues(i, v) for i, v in zip(ids.tolist(), vals)]


def histograms(edges: torch.Tensor, counts: torch.Tensor) -> list[Histogram]:
    return [Histogram(e, c) for e, c in zip(rounded(edges), counts.tolist())]


def empty_rows(n_rows: int) -> list[TokenValues]:
    return [TokenValues([], []) for _ in range(n_rows)]


def hovers_of(t: HoverTable | None) -> list[Hover | None]:
    """Each hover of the table: direct where its coef is finite, listed otherwise, None where
    any of its numbers is not finite."""
    if t is None:
        return []
    loss = rounded(torch.where(t.ok, t.loss, 0.0))
    direct = t.ok & torch.isfinite(t.coef)
    coef = rounded(torch.where(direct, t.coef, 0.0), PRECISE_DIGITS)
    shift = rounded(torch.where(direct, t.shift, 0.0), PRECISE_DIGITS)
    out: list[Hover | None] = [
        DirectHover(c, lo, sh) if d else None for d, c, lo, sh in zip(direct.tolist(), coef, loss, shift)
    ]
    listed = t.ok & ~direct
    if bool(listed.any()):
        top_ids, top_vals = t.top_ids.tolist(), rounded(torch.where(listed[:, None], t.top_vals, 0.0))
        bot_ids, bot_vals = t.bottom_ids.tolist(), rounded(torch.where(listed[:, None], t.bottom_vals, 0.0))
        for i in listed.nonzero().squeeze(1).tolist():
            out[i] = ListedHover(loss[i], TokenValues(top_ids[i], top_vals[i]), TokenValues(bot_ids[i], bot_vals[i]))
    return out


def grouped_examples(ft: FeatureTensors) -> list[dict[int, list[Example]]]:
    """Per batch row, its examples by group (TOP, interval number, NEGATIVE), in rank order."""
    sel, win, n_ctx = ft.sel, ft.win, ft.n_ctx
    hovers = hovers_of(ft.hovers)
    out: list[dict[int, list[Example]]] = [{} for _ in ft.ids]
    rows = zip(
        sel.tok.tolist(),
        win.start.tolist(),
        win.length.tolist(),
        win.token_ids.tolist(),
        rounded(win.acts),
        ft.hover_of.tolist(),
        sel.row.tolist(),
        sel.group.tolist(),
    )
    for flat, start, n, tok, act, hov, r, g in rows:
        shown = [hovers[h] if h >= 0 else None for h in hov[:n]]
        out[r].setdefault(g, []).append(Example(flat // n_ctx, flat % n_ctx, start, tok[:n], act[:n], shown))
    return out


def feature_data(ft: FeatureTensors) -> list[FeatureData]:
    """The FeatureData of every feature of the batch, in batch order."""
    st, sel, n_rows = ft.stats, ft.sel, len(ft.ids)
    examples = grouped_examples(ft)
    dens, max_act, mean = rounded(st.density), rounded(st.max_act), rounded(st.mean_nonzero)
    bounds = rounded(st.max_act.double()[:, None] * torch.arange(ft.n_intervals + 1) / ft.n_intervals)
    nonzero = st.n_nonzero.clamp(min=1).double()
    fractions = rounded(sel.interval_counts.double() / nonzero[:, None])
    neg_fraction, min_nz = rounded(st.n_neg.double() / nonzero), rounded(st.min_nonzero)
    hist = histograms(ft.hist_edges, ft.hist_counts)
    if ft.logit_top is None or ft.logit_bottom is None or ft.logit_hist is None:
        logit_top, logit_bottom = empty_rows(n_rows), empty_rows(n_rows)
        logit_hist = [Histogram([], []) for _ in range(n_rows)]
    else:
        logit_top, logit_bottom = token_values(*ft.logit_top), token_values(*ft.logit_bottom)
        logit_hist = histograms(*ft.logit_hist)
    basis = empty_rows(n_rows) if ft.hover_basis is None else token_values(*ft.hover_basis, digits=PRECISE_DIGITS)
    top_tokens = empty_rows(n_rows)
    for r, t, c in zip(sel.top_token_rows.tolist(), sel.top_token_ids.tolist(), sel.top_token_counts.tolist()):
        top_tokens[r].token_ids.append(t)
        top_tokens[r].values.append(float(c))
    align, corr_n = ranked(ft.alignment), ranked(ft.corr_neurons)
    corr_f, neigh = ranked(ft.corr_features), ranked(ft.neighbours)
    dead, n_tok, n_bad, n_neg = st.dead.tolist(), ft.n_tokens.tolist(), ft.n_nonfinite.tolist(), st.n_neg.tolist()
    n_pos = st.n_pos.tolist()
    out = []
    for r, feature in enumerate(ft.ids):
        groups = examples[r]
        intervals = (
            []
            if dead[r]
            else [
                IntervalGroup(bounds[r][i], bounds[r][i + 1], fractions[r][i], groups.get(i, []))
                for i in range(ft.n_intervals)
            ]
        )
        negative = None
        if ft.can_be_negative:
            negative = IntervalGroup(min_nz[r] if n_neg[r] else 0.0, 0.0, neg_fraction[r], groups.get(NEGATIVE, []))
        out.append(
            FeatureData(
                dictionary=ft.dictionary,
                feature=feature,
                dead=dead[r],
                n_tokens=n_tok[r],
                n_nonfinite=n_bad[r],
                n_active=n_pos[r],
                density=dens[r],
                max_act=max_act[r],
                mean_nonzero_act=mean[r],
                act_histogram=hist[r],
                top_examples=groups.get(TOP, []),
                intervals=intervals,
                negative=negative,
                logit_top=logit_top[r],
                logit_bottom=logit_bottom[r],
                logit_histogram=logit_hist[r],
                neuron_alignment=align[r],
                correlated_neurons=corr_n[r],
                correlated_features=corr_f[r],
                decoder_neighbours=neigh[r],
                top_tokens=top_tokens[r],
                hover_basis=basis[r],
                records=ft.records[r],
            )
        )
    return out
