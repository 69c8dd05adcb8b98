"""A feature batch's NeuronRecord data (``cache.feature_data.NeuronRecords``) from its counted
non-zero activations: moments over every counted token (zeros included), each sequence's
largest activation, the top sequences, a seeded random sample, the quantile boundaries of
the sequences' largest activations and a seeded sample per bin."""

from __future__ import annotations

import numpy as np
import torch

from sitegen.cache.feature_data import NeuronRecords, SequenceActivations
from sitegen.compute.rounding import rounded
from sitegen.compute.store import BatchEntries
from sitegen.config import RecordsConfig

RECORDS_STREAM = 0x5EC  # the records' generator: [feature seed, RECORDS_STREAM] (apart from the examples' draws)


def batch_moments(rows: torch.Tensor, val: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """[B, 4] mean, population variance, skewness, excess kurtosis of each row's ``n`` values:
    its entries ``val`` (rows ``rows``) and zeros for the rest (central sums, no power-sum
    cancellation); skewness and kurtosis 0 where the variance is 0."""
    b = len(n)
    nd = n.double().clamp(min=1)
    mean = torch.zeros(b, dtype=torch.float64).index_add_(0, rows, val.double()) / nd
    d = val.double() - mean[rows]
    zeros = (n - torch.bincount(rows, minlength=b)).double()
    m2, m3, m4 = (
        (torch.zeros(b, dtype=torch.float64).index_add_(0, rows, d**k) + zeros * (-mean) ** k) / nd for k in (2, 3, 4)
    )
    ok = m2 > 0
    safe = torch.where(ok, m2, 1.0)
    skew = torch.where(ok, m3 / safe**1.5, 0.0)
    kurt = torch.where(ok, m4 / safe**2 - 3.0, 0.0)
    return torch.stack([mean, torch.where(ok, m2, 0.0), skew, kurt], dim=1)


def moments_from_powers(s: list[float], n: int) -> tuple[float, float, float, float]:
    """Mean, population variance, skewness, excess kurtosis from the sums of the 1st..4th
    powers of ``n`` values (skewness and kurtosis 0 where the variance is 0). Used for the
    attention heads' pair scalars, streamed over batches as float64 power sums: they are
    non-negative and bounded (A in [0, 1]; write norms), so the cancellation in m2..m4 costs
    digits only where the variance is below ~1e-11 of the squared mean (float64: 4 of the 16
    digits are shown). Feature moments use ``batch_moments`` (central sums, no cancellation)."""
    if n == 0:
        return 0.0, 0.0, 0.0, 0.0
    mean = s[0] / n
    m2 = s[1] / n - mean**2
    m3 = s[2] / n - 3 * mean * s[1] / n + 2 * mean**3
    m4 = s[3] / n - 4 * mean * s[2] / n + 6 * mean**2 * s[1] / n - 3 * mean**4
    if m2 <= 0:
        return mean, 0.0, 0.0, 0.0
    return mean, m2, m3 / m2**1.5, m4 / m2**2 - 3.0


def feature_records(
    ent: BatchEntries, seeds: list[int], *, counted: torch.Tensor, can_be_negative: bool, rc: RecordsConfig
) -> list[NeuronRecords]:
    """The NeuronRecord data of every feature of the batch, in batch order (``counted`` [n_seq,
    ctx]: the positions statistics count)."""
    n_seq, n_ctx = counted.shape
    b = len(seeds)
    seq = ent.tok // n_ctx
    cell = ent.rows * n_seq + seq  # (feature, sequence) of each entry
    floor = -np.inf if can_be_negative else 0.0  # a missing entry of an SAE is a 0
    best = torch.full((b * n_seq,), floor, dtype=torch.float64)
    best = best.scatter_reduce(0, cell, ent.val.double(), reduce="amax", include_self=True).reshape(b, n_seq)
    if can_be_negative:  # a counted position without an entry is an exact 0
        has_zero = torch.bincount(cell, minlength=b * n_seq).reshape(b, n_seq) < counted.sum(1)
        best = torch.where(has_zero, best.clamp(min=0.0), best)
    top = torch.sort(best, dim=1, descending=True, stable=True).indices[:, : rc.top].tolist()
    bounds = torch.quantile(best, torch.tensor(rc.quantiles, dtype=torch.float64), dim=1).T  # [B, q]
    # one seeded uniform key per (feature, sequence): the random sample is the lowest keys, each
    # quantile bin's sample the lowest keys among its members
    keys = torch.from_numpy(np.stack([np.random.default_rng([seed, RECORDS_STREAM]).random(n_seq) for seed in seeds]))
    random = torch.sort(keys.argsort(dim=1)[:, : rc.random], dim=1).values.tolist()
    bins = (best[:, :, None] >= bounds[:, None, :]).sum(-1)  # [B, n_seq] 0: below the first boundary
    order = (bins + keys).argsort(dim=1)  # by bin, then key
    sorted_bins = bins.gather(1, order)
    first = torch.searchsorted(sorted_bins, sorted_bins)  # where each bin starts in its row
    chosen = (torch.arange(n_seq) - first) < rc.per_quantile
    by_bin: list[list[list[int]]] = [[[] for _ in range(len(rc.quantiles) + 1)] for _ in range(b)]
    for r, q, x in zip(*(t[chosen].tolist() for t in (torch.arange(b)[:, None].expand(b, n_seq), sorted_bins, order))):
        by_bin[r][q].append(x)
    by_bin = [[sorted(g) for g in groups] for groups in by_bin]
    wanted = [sorted({*top[r], *random[r], *(x for g in by_bin[r] for x in g)}) for r in range(b)]
    per_seq = sequences_of(ent, cell, wanted, n_seq, n_ctx)
    stats = rounded(batch_moments(ent.rows, ent.val, ent.n_tokens))
    bound_values = rounded(bounds)
    return [
        NeuronRecords(
            mean=stats[r][0],
            variance=stats[r][1],
            skewness=stats[r][2],
            kurtosis=stats[r][3],
            top=[per_seq[r][x] for x in top[r]],
            random=[per_seq[r][x] for x in random[r]],
            quantile_boundaries=bound_values[r],
            by_quantile=[[per_seq[r][x] for x in g] for g in by_bin[r]],
        )
        for r in range(b)
    ]


def sequences_of(
    ent: BatchEntries, cell: torch.Tensor, wanted: list[list[int]], n_seq: int, n_ctx: int
) -> list[dict[int, SequenceActivations]]:
    """Per feature, the entries of its ``wanted`` sequences, positions ascending."""
    mask = torch.zeros(len(wanted) * n_seq, dtype=torch.bool)
    mask[torch.tensor([r * n_seq + x for r, seqs in enumerate(wanted) for x in seqs], dtype=torch.int64)] = True
    keep = mask[cell]
    order = torch.argsort(cell[keep] * n_ctx + ent.tok[keep] % n_ctx, stable=True)
    cells = cell[keep][order]
    positions = (ent.tok[keep][order] % n_ctx).tolist()
    values = rounded(ent.val[keep][order])
    found, counts = torch.unique_consecutive(cells, return_counts=True)
    out: list[dict[int, SequenceActivations]] = [{x: SequenceActivations(x, [], []) for x in seqs} for seqs in wanted]
    start = 0
    for c, k in zip(found.tolist(), counts.tolist()):
        r, x = divmod(c, n_seq)
        out[r][x] = SequenceActivations(x, positions[start : start + k], values[start : start + k])
        start += k
    return out
