"""Which (sequence, position)s each feature of a batch shows, and their windows.

Every choice is a sort over the batch's entries, so ties break the same way on
every run: larger activation first, then lower flat token index. Interval
examples are a uniform random sample without replacement, drawn by giving each
positive entry a key from a generator seeded per (dictionary, feature) and taking
the smallest keys of each interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sitegen.compute.stats import BatchStats
from sitegen.compute.store import BatchEntries, ranges
from sitegen.config import FeaturesConfig

TOP, NEGATIVE = -1, -2  # group ids beside the interval numbers 0..n_intervals-1


@dataclass
class Selection:
    """The shown examples of a batch, sorted by (row, group order, rank)."""

    row: torch.Tensor  # [k] int64
    group: torch.Tensor  # [k] int64: TOP, 0..n_intervals-1, or NEGATIVE
    tok: torch.Tensor  # [k] int64 flat token index
    interval_counts: torch.Tensor  # [B, n_intervals] int64: positive activations in each interval
    top_token_ids: torch.Tensor  # [t] int64, grouped by row
    top_token_counts: torch.Tensor  # [t] int64
    top_token_rows: torch.Tensor  # [t] int64


@dataclass
class Windows:
    """Context windows of the selected examples, padded to a common width."""

    start: torch.Tensor  # [k] position of the first shown token
    length: torch.Tensor  # [k] shown tokens
    token_ids: torch.Tensor  # [k, W]
    acts: torch.Tensor  # [k, W] float32, 0 beyond ``length``
    flat: torch.Tensor  # [k, W] flat token index of each shown position (clamped beyond ``length``)


def float_order(val: torch.Tensor) -> torch.Tensor:
    """int64 in [0, 2**32) with the same order as the float32 values."""
    bits = val.contiguous().view(torch.int32).long()
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits) + (1 << 31)


def first_of_segments(seg: torch.Tensor, n_seg: int, take: torch.Tensor) -> torch.Tensor:
    """Positions (into a tensor sorted by ``seg``) of the first ``take[s]`` items of each segment s."""
    count = torch.bincount(seg, minlength=n_seg)
    return ranges(torch.cumsum(count, 0) - count, torch.minimum(take, count))[0]


def stable_order(major: torch.Tensor, minor: torch.Tensor) -> torch.Tensor:
    """Permutation sorting by (major, minor), ties keeping input order; major >= 0 and
    0 <= minor < 2**32, so one stable sort of major * 2**32 + minor does it."""
    return torch.sort((major << 32) | minor, stable=True).indices


def interval_index(val: torch.Tensor, top: torch.Tensor, n: int) -> torch.Tensor:
    """[m] int64: i with top*i/n < v <= top*(i+1)/n (float64), for 0 < v <= top."""
    v, top = val.double(), top.double()
    i = (torch.ceil(v * n / top) - 1).clamp(0, n - 1).long()
    i = torch.where(v <= top * i / n, i - 1, i)
    i = torch.where(v > top * (i + 1) / n, i + 1, i)
    return i.clamp(0, n - 1)


def interval_keys(rows: torch.Tensor, seeds: list[int]) -> torch.Tensor:
    """[m] uniform random keys in [0, 2**32) for entries grouped by row, each row's from its own seed."""
    count = torch.bincount(rows, minlength=len(seeds)).tolist()
    parts = [torch.randint(0, 1 << 32, (c,), generator=torch.Generator().manual_seed(s)) for c, s in zip(count, seeds)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)


def select_examples(
    ent: BatchEntries, st: BatchStats, cfg: FeaturesConfig, seeds: list[int], tokens_flat: torch.Tensor, negative: bool
) -> Selection:
    n_rows = len(seeds)
    rows, val, tok = ent.rows, ent.val, ent.tok
    # top examples and top tokens: by activation, descending
    desc = stable_order(rows, (1 << 32) - 1 - float_order(val))
    top = desc[first_of_segments(rows[desc], n_rows, torch.full((n_rows,), cfg.top_examples).minimum(st.n_pos))]
    n_for_tokens = torch.maximum(torch.full_like(st.n_pos, cfg.top_examples), (st.n_pos + 99) // 100)
    at_top = desc[first_of_segments(rows[desc], n_rows, n_for_tokens.minimum(st.n_pos))]
    tt_rows, tt_ids, tt_counts = top_tokens(rows[at_top], tokens_flat[tok[at_top]], n_rows, cfg.n_top_tokens)
    # intervals: positive entries, a seeded random sample in each
    pos = (val > 0).nonzero().squeeze(1)
    which = interval_index(val[pos], st.max_act[rows[pos]], cfg.n_intervals)
    segment = rows[pos] * cfg.n_intervals + which
    counts = torch.bincount(segment, minlength=n_rows * cfg.n_intervals).reshape(n_rows, cfg.n_intervals)
    order = stable_order(segment, interval_keys(rows[pos], seeds))
    take = torch.full((n_rows * cfg.n_intervals,), cfg.examples_per_interval)
    picked = order[first_of_segments(segment[order], n_rows * cfg.n_intervals, take)]
    groups = [(rows[top], torch.full_like(top, TOP), tok[top]), (rows[pos[picked]], which[picked], tok[pos[picked]])]
    if negative:  # the most negative activations, ascending
        asc = stable_order(rows, float_order(val))
        neg = asc[first_of_segments(rows[asc], n_rows, torch.full((n_rows,), cfg.negative_examples).minimum(st.n_neg))]
        groups.append((rows[neg], torch.full_like(neg, NEGATIVE), tok[neg]))
    row = torch.cat([g[0] for g in groups])
    group = torch.cat([g[1] for g in groups])
    sel_tok = torch.cat([g[2] for g in groups])
    order = torch.sort(row, stable=True).indices  # within a row, groups stay in TOP, intervals, NEGATIVE order
    return Selection(row[order], group[order], sel_tok[order], counts, tt_ids, tt_counts, tt_rows)


def top_tokens(rows: torch.Tensor, ids: torch.Tensor, n_rows: int, n: int):
    """Most frequent token ids per row: (rows [t], ids [t], counts [t]), count desc, id asc."""
    if len(ids) == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty, empty
    span = int(ids.max()) + 1
    keys, counts = torch.unique(rows * span + ids, return_counts=True)  # sorted by (row, id)
    key_rows = keys // span
    order = stable_order(key_rows, (1 << 32) - 1 - counts)
    keep = order[first_of_segments(key_rows[order], n_rows, torch.full((n_rows,), n))]
    return key_rows[keep], keys[keep] % span, counts[keep]


def lookup(ent: BatchEntries, n_tok: int, rows: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """Activation of feature ``rows`` at flat positions ``flat`` (0 where no entry)."""
    keys = ent.keys(n_tok)
    q = rows * n_tok + flat
    if len(keys) == 0:
        return torch.zeros(q.shape)
    i = torch.searchsorted(keys, q).clamp(max=len(keys) - 1)
    return torch.where(keys[i] == q, ent.val[i], 0.0)


def windows(sel: Selection, ent: BatchEntries, tokens: torch.Tensor, cfg: FeaturesConfig) -> Windows:
    n_seq, ctx = tokens.shape
    seq, pos = sel.tok // ctx, sel.tok % ctx
    if cfg.whole_sequence:
        start = torch.zeros_like(pos)
        end = torch.full_like(pos, ctx - 1)
        width = ctx
    else:
        start = (pos - cfg.context_before).clamp(min=0)
        end = (pos + cfg.context_after).clamp(max=ctx - 1)
        width = min(cfg.context_before + cfg.context_after + 1, ctx)
    length = end - start + 1
    shown = start[:, None] + torch.arange(width)  # [k, W]
    valid = torch.arange(width) < length[:, None]
    flat = seq[:, None] * ctx + shown.clamp(max=ctx - 1)
    acts = lookup(ent, n_seq * ctx, sel.row[:, None].expand_as(flat), flat)
    return Windows(start, length, tokens.reshape(-1)[flat], torch.where(valid, acts, 0.0), flat)
