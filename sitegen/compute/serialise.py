"""Batch tensors -> the batch file's JSON text, written directly.

The text is exactly ``cache.dumps_features(features)`` for the FeatureData the tensors
describe (their ``stored_form``s, keys sorted, no spaces, Python's float repr),
produced with string joins instead of building ~100k dataclass objects per batch
and encoding them, which is several times faster. tests/test_engine_cache.py checks
the text against a json round trip and ``feature_data_from_dict``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

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


def floats(values: list[float]) -> str:
    return "[" + ",".join(map(repr, values)) + "]"


def ints(values: list[int]) -> str:
    return "[" + ",".join(map(str, values)) + "]"


def obj(**fields: str) -> str:
    """A JSON object from already-encoded values, keys sorted."""
    return "{" + ",".join(f'"{k}":{v}' for k, v in sorted(fields.items())) + "}"


def token_values(ids: list[int], values: list[float]) -> str:
    return obj(token_ids=ints(ids), values=floats(values))


def ranked_json(r: RankedRows) -> list[str]:
    ids, values, count = r.ids.tolist(), rounded(r.values), r.count.tolist()
    extra = rounded(r.extra) if r.extra is not None else [[]] * len(ids)
    return [obj(ids=ints(i[:c]), values=floats(v[:c]), extra=floats(e[:c])) for i, v, e, c in
            zip(ids, values, extra, count)]


def precise_or_null(values: torch.Tensor, ok: torch.Tensor) -> list[str]:
    """JSON numbers at PRECISE_DIGITS significant digits, ``null`` where not ``ok`` or NaN."""
    ok = ok & torch.isfinite(values)
    return [repr(v) if good else "null" for v, good in
            zip(rounded(torch.where(ok, values, 0.0), PRECISE_DIGITS), ok.tolist())]


def hover_json(t: HoverTable | None) -> list[str]:
    """Each hover's ``stored_form`` JSON (``null`` where it is not finite): coef, loss effect
    and shift for direct ones (coef finite), the listed tokens otherwise."""
    if t is None:
        return []
    ok = t.ok.tolist()
    loss = rounded(torch.where(t.ok, t.loss, 0.0))
    coef, shift = precise_or_null(t.coef, t.ok), precise_or_null(t.shift, t.ok)
    listed = t.ok & ~torch.isfinite(t.coef)
    lists = {}
    if bool(listed.any()):
        fine = listed[:, None]
        top_ids, top_vals = t.top_ids.tolist(), rounded(torch.where(fine, t.top_vals, 0.0))
        bot_ids, bot_vals = t.bottom_ids.tolist(), rounded(torch.where(fine, t.bottom_vals, 0.0))
        lists = {i: (f'{{"bottom":{{"token_ids":{ints(bot_ids[i])},"values":{floats(bot_vals[i])}}},'
                     f'"loss_effect":{loss[i]!r},"top":{{"token_ids":{ints(top_ids[i])},"values":{floats(top_vals[i])}}}}}')
                 for i in listed.nonzero().squeeze(1).tolist()}
    return [
        lists.get(i, "null") if c == "null" else f'{{"coef":{c},"loss_effect":{lo!r},"shift":{sh}}}'
        for i, (lo, c, sh) in enumerate(zip(loss, coef, shift))
    ]


def example_json(ft: FeatureTensors) -> list[str]:
    """Each selected example's JSON, keys sorted as in ``obj``."""
    win, n_ctx = ft.win, ft.n_ctx
    hovers = hover_json(ft.hovers)
    starts, lengths = win.start.tolist(), win.length.tolist()
    token_ids, acts, hover_of = win.token_ids.tolist(), rounded(win.acts), ft.hover_of.tolist()
    out = []
    for flat, start, n, tok, act, hov in zip(ft.sel.tok.tolist(), starts, lengths, token_ids, acts, hover_of):
        shown = ",".join([hovers[h] if h >= 0 else "null" for h in hov[:n]])
        out.append(f'{{"acts":{floats(act[:n])},"hovers":[{shown}],"pos":{flat % n_ctx},"seq":{flat // n_ctx},'
                   f'"start":{start},"token_ids":{ints(tok[:n])}}}')
    return out


def group_json(lower: float, upper: float, fraction: float, examples: list[str]) -> str:
    return obj(examples="[" + ",".join(examples) + "]", fraction=repr(fraction), lower=repr(lower),
               upper=repr(upper))


def per_row_pairs(ids: torch.Tensor, values: torch.Tensor) -> list[str]:
    return [token_values(i, v) for i, v in zip(ids.tolist(), rounded(values))]


def batch_json(ft: FeatureTensors) -> bytes:
    """The batch file: a JSON list of FeatureData dicts (see module docstring)."""
    st, sel, n_rows = ft.stats, ft.sel, len(ft.ids)
    examples: list[dict[int, list[str]]] = [{} for _ in range(n_rows)]
    for text, r, g in zip(example_json(ft), sel.row.tolist(), sel.group.tolist()):
        examples[r].setdefault(g, []).append(text)
    dens, max_act, mean = rounded(st.density), rounded(st.max_act), rounded(st.mean_nonzero)
    bounds = rounded(st.max_act.double()[:, None] * torch.arange(ft.n_intervals + 1) / ft.n_intervals)
    nonzero = st.n_nonzero.clamp(min=1).double()
    fractions = rounded(sel.interval_counts.double() / nonzero[:, None])
    neg_fraction, min_nz = rounded(st.n_neg.double() / nonzero), rounded(st.min_nonzero)
    hist = [obj(counts=ints(c), edges=floats(e)) for c, e in zip(ft.hist_counts.tolist(), rounded(ft.hist_edges))]
    if ft.logit_top is None:
        logit_top = logit_bottom = [token_values([], [])] * n_rows
        logit_hist = [obj(counts="[]", edges="[]")] * n_rows
    else:
        logit_top, logit_bottom = per_row_pairs(*ft.logit_top), per_row_pairs(*ft.logit_bottom)
        edges, counts = ft.logit_hist
        logit_hist = [obj(counts=ints(c), edges=floats(e)) for c, e in zip(counts.tolist(), rounded(edges))]
    if ft.hover_basis is None:
        basis = [token_values([], [])] * n_rows
    else:
        basis = [token_values(i, v) for i, v in zip(ft.hover_basis[0].tolist(),
                                                    rounded(ft.hover_basis[1], PRECISE_DIGITS))]
    top_tokens: list[tuple[list[int], list[float]]] = [([], []) for _ in range(n_rows)]
    for r, t, c in zip(sel.top_token_rows.tolist(), sel.top_token_ids.tolist(), sel.top_token_counts.tolist()):
        top_tokens[r][0].append(t)
        top_tokens[r][1].append(float(c))
    align, corr_n = ranked_json(ft.alignment), ranked_json(ft.corr_neurons)
    corr_f, neigh = ranked_json(ft.corr_features), ranked_json(ft.neighbours)
    dead, n_tok, n_bad, n_neg = st.dead.tolist(), ft.n_tokens.tolist(), ft.n_nonfinite.tolist(), st.n_neg.tolist()
    name = json.dumps(ft.dictionary, ensure_ascii=False)
    out = []
    for r, feature in enumerate(ft.ids):
        groups = examples[r]
        intervals = [] if dead[r] else [
            group_json(bounds[r][i], bounds[r][i + 1], fractions[r][i], groups.get(i, []))
            for i in range(ft.n_intervals)
        ]
        negative = "null"
        if ft.can_be_negative:
            negative = group_json(min_nz[r] if n_neg[r] else 0.0, 0.0, neg_fraction[r], groups.get(NEGATIVE, []))
        out.append(obj(
            act_histogram=hist[r], correlated_features=corr_f[r], correlated_neurons=corr_n[r],
            dead="true" if dead[r] else "false", decoder_neighbours=neigh[r], density=repr(dens[r]),
            dictionary=name, feature=str(feature), hover_basis=basis[r], intervals="[" + ",".join(intervals) + "]",
            logit_bottom=logit_bottom[r], logit_histogram=logit_hist[r], logit_top=logit_top[r],
            max_act=repr(max_act[r]), mean_nonzero_act=repr(mean[r]), n_nonfinite=str(n_bad[r]),
            n_tokens=str(n_tok[r]), negative=negative, neuron_alignment=align[r],
            top_examples="[" + ",".join(groups.get(TOP, [])) + "]", top_tokens=token_values(*top_tokens[r]),
        ))
    return ("[" + ",".join(out) + "]").encode()


@dataclass
class BatchOutput:
    text: bytes  # the batch file (a JSON list of FeatureData dicts)
    token_ids: list[int]  # every token id it shows
    n_nonfinite: int  # NaN/inf activations left out, summed over its features


def batch_output(ft: FeatureTensors) -> BatchOutput:
    return BatchOutput(batch_json(ft), batch_token_ids(ft).tolist(), int(ft.n_nonfinite.sum()))


def batch_token_ids(ft: FeatureTensors) -> torch.Tensor:
    """[t] every token id the batch's JSON shows, unique and ascending."""
    valid = torch.arange(ft.win.token_ids.shape[1]) < ft.win.length[:, None]
    parts = [ft.win.token_ids[valid], ft.sel.top_token_ids]
    if ft.hovers is not None:
        parts += [ft.hovers.top_ids[ft.hovers.ok].reshape(-1), ft.hovers.bottom_ids[ft.hovers.ok].reshape(-1)]
    if ft.logit_top is not None:
        parts += [ft.logit_top[0].reshape(-1), ft.logit_bottom[0].reshape(-1)]
    return torch.unique(torch.cat(parts))
