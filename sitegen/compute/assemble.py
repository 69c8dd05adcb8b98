"""Batch tensors -> FeatureData objects (every float rounded by ``rounded``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sitegen.compute.correlations import RankedRows
from sitegen.compute.effects import HoverTable
from sitegen.compute.examples import NEGATIVE, TOP, Selection, Windows
from sitegen.compute.feature_data import (
    Example,
    FeatureData,
    Histogram,
    Hover,
    IntervalGroup,
    Ranked,
    TokenValues,
)
from sitegen.compute.rounding import rounded
from sitegen.compute.stats import BatchStats


@dataclass
class FeatureTensors:
    dictionary: str
    ids: list[int]
    can_be_negative: bool
    stats: BatchStats
    n_tokens: torch.Tensor  # [B]
    n_nonfinite: torch.Tensor  # [B]
    hist_edges: torch.Tensor  # [B, bins + 1]
    hist_counts: torch.Tensor  # [B, bins]
    sel: Selection
    win: Windows
    hover_of: torch.Tensor  # [k, W] index into ``hovers`` or -1
    hovers: HoverTable | None
    logits: torch.Tensor | None  # [B, V] logit effect of each feature
    logit_top: int
    logit_hist: tuple[torch.Tensor, torch.Tensor] | None  # edges [B, bins + 1], counts [B, bins]
    alignment: RankedRows
    corr_neurons: RankedRows
    corr_features: RankedRows
    neighbours: RankedRows
    n_intervals: int
    n_ctx: int


def ranked_lists(r: RankedRows) -> list[Ranked]:
    ids, values, count = r.ids.tolist(), rounded(r.values), r.count.tolist()
    extra = rounded(r.extra) if r.extra is not None else None
    return [Ranked(i[:c], v[:c], e[:c] if extra is not None else []) for i, v, c, e in
            zip(ids, values, count, extra if extra is not None else ids)]


def hover_objects(t: HoverTable | None) -> list[Hover | None]:
    if t is None:
        return []
    loss, ok = rounded(t.loss), t.ok.tolist()
    top_ids, top_vals = t.top_ids.tolist(), rounded(t.top_vals)
    bot_ids, bot_vals = t.bottom_ids.tolist(), rounded(t.bottom_vals)
    return [Hover(loss[i], TokenValues(top_ids[i], top_vals[i]), TokenValues(bot_ids[i], bot_vals[i])) if ok[i]
            else None for i in range(len(loss))]


def example_objects(ft: FeatureTensors) -> list[Example]:
    win = ft.win
    hovers = hover_objects(ft.hovers)
    starts, lengths = win.start.tolist(), win.length.tolist()
    token_ids, acts, hover_of = win.token_ids.tolist(), rounded(win.acts), ft.hover_of.tolist()
    out = []
    for j, flat in enumerate(ft.sel.tok.tolist()):
        n = lengths[j]
        shown = [hovers[h] if h >= 0 else None for h in hover_of[j][:n]]
        out.append(Example(flat // ft.n_ctx, flat % ft.n_ctx, starts[j], token_ids[j][:n], acts[j][:n], shown))
    return out


def features_from_tensors(ft: FeatureTensors) -> list[FeatureData]:
    st, sel = ft.stats, ft.sel
    n_rows = len(ft.ids)
    examples = example_objects(ft)
    # split examples by feature row and group
    rows, groups = sel.row.tolist(), sel.group.tolist()
    per_row: list[dict[int, list[Example]]] = [{} for _ in range(n_rows)]
    for ex, r, g in zip(examples, rows, groups):
        per_row[r].setdefault(g, []).append(ex)
    dens, max_act, mean = rounded(st.density), rounded(st.max_act), rounded(st.mean_nonzero)
    max_exact = st.max_act.double()
    bounds = rounded(max_exact[:, None] * torch.arange(ft.n_intervals + 1) / ft.n_intervals)
    fractions = rounded(sel.interval_counts.double() / st.n_nonzero.clamp(min=1)[:, None].double())
    neg_fraction = rounded(st.n_neg.double() / st.n_nonzero.clamp(min=1).double())
    min_nz = rounded(st.min_nonzero)
    edges, counts = rounded(ft.hist_edges), ft.hist_counts.tolist()
    dead, n_tok, n_bad = st.dead.tolist(), ft.n_tokens.tolist(), ft.n_nonfinite.tolist()
    n_neg = st.n_neg.tolist()
    logit_top, logit_bottom, logit_hist = logit_lists(ft, n_rows)
    top_tokens = token_counts(sel, n_rows)
    align, corr_n = ranked_lists(ft.alignment), ranked_lists(ft.corr_neurons)
    corr_f, neigh = ranked_lists(ft.corr_features), ranked_lists(ft.neighbours)
    out = []
    for r, fid in enumerate(ft.ids):
        groups_r = per_row[r]
        intervals = [] if dead[r] else [
            IntervalGroup(bounds[r][i], bounds[r][i + 1], fractions[r][i], groups_r.get(i, []))
            for i in range(ft.n_intervals)
        ]
        negative = None
        if ft.can_be_negative:
            negative = IntervalGroup(min_nz[r] if n_neg[r] else 0.0, 0.0, neg_fraction[r], groups_r.get(NEGATIVE, []))
        out.append(FeatureData(
            dictionary=ft.dictionary, feature=fid, dead=dead[r], n_tokens=n_tok[r], n_nonfinite=n_bad[r],
            density=dens[r], max_act=max_act[r], mean_nonzero_act=mean[r],
            act_histogram=Histogram(edges[r], counts[r]), top_examples=groups_r.get(TOP, []),
            intervals=intervals, negative=negative, logit_top=logit_top[r], logit_bottom=logit_bottom[r],
            logit_histogram=logit_hist[r], neuron_alignment=align[r], correlated_neurons=corr_n[r],
            correlated_features=corr_f[r], decoder_neighbours=neigh[r], top_tokens=top_tokens[r],
        ))
    return out


def logit_lists(ft: FeatureTensors, n_rows: int):
    if ft.logits is None:
        empty = [TokenValues([], []) for _ in range(n_rows)]
        return empty, [TokenValues([], []) for _ in range(n_rows)], [Histogram([], []) for _ in range(n_rows)]
    k = min(ft.logit_top, ft.logits.shape[1])
    top = torch.topk(ft.logits, k, dim=1)
    bottom = torch.topk(ft.logits, k, dim=1, largest=False)
    edges, counts = ft.logit_hist
    ti, tv, bi, bv = top.indices.tolist(), rounded(top.values), bottom.indices.tolist(), rounded(bottom.values)
    e, c = rounded(edges), counts.tolist()
    return ([TokenValues(ti[r], tv[r]) for r in range(n_rows)], [TokenValues(bi[r], bv[r]) for r in range(n_rows)],
            [Histogram(e[r], c[r]) for r in range(n_rows)])


def token_counts(sel: Selection, n_rows: int) -> list[TokenValues]:
    out = [TokenValues([], []) for _ in range(n_rows)]
    for r, t, c in zip(sel.top_token_rows.tolist(), sel.top_token_ids.tolist(), sel.top_token_counts.tolist()):
        out[r].token_ids.append(t)
        out[r].values.append(float(c))
    return out
