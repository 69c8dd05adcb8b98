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


def moments(values: torch.Tensor, n: int) -> tuple[float, float, float, float]:
    """Mean, population variance, skewness, excess kurtosis of ``n`` values: ``values`` [m]
    (float64) and n - m zeros (central moments summed directly, no power-sum cancellation);
    skewness and kurtosis 0 where the variance is 0."""
    if n == 0:
        return 0.0, 0.0, 0.0, 0.0
    mean = float(values.sum()) / n
    d = values - mean
    zeros = n - len(values)
    m2, m3, m4 = (float((d**k).sum() + zeros * (-mean) ** k) / n for k in (2, 3, 4))
    if m2 <= 0:
        return mean, 0.0, 0.0, 0.0
    return mean, m2, m3 / m2**1.5, m4 / m2**2 - 3.0


def moments_from_powers(s: list[float], n: int) -> tuple[float, float, float, float]:
    """``moments`` from the sums of the 1st..4th powers of ``n`` values."""
    if n == 0:
        return 0.0, 0.0, 0.0, 0.0
    mean = s[0] / n
    m2 = s[1] / n - mean**2
    m3 = s[2] / n - 3 * mean * s[1] / n + 2 * mean**3
    m4 = s[3] / n - 4 * mean * s[2] / n + 6 * mean**2 * s[1] / n - 3 * mean**4
    if m2 <= 0:
        return mean, 0.0, 0.0, 0.0
    return mean, m2, m3 / m2**1.5, m4 / m2**2 - 3.0


def sequence_max(tok: torch.Tensor, val: torch.Tensor, n_seq: int, n_ctx: int, floor: float) -> torch.Tensor:
    """[n_seq] each sequence's largest activation (``floor`` where it has no entry: 0 for a
    dictionary that cannot go negative, whose missing positions are zeros)."""
    out = torch.full((n_seq,), floor, dtype=torch.float64)
    return out.scatter_reduce(0, tok // n_ctx, val.double(), reduce="amax", include_self=True)


def feature_records(
    ent: BatchEntries, seeds: list[int], *, counted: torch.Tensor, can_be_negative: bool, rc: RecordsConfig
) -> list[NeuronRecords]:
    """The NeuronRecord data of every feature of the batch, in batch order (``counted`` [n_seq,
    ctx]: the positions statistics count)."""
    n_seq, n_ctx = counted.shape
    n_counted = counted.sum(1)
    out = []
    counts = torch.bincount(ent.rows, minlength=len(seeds)).tolist()
    starts = np.cumsum([0, *counts])
    for r, seed in enumerate(seeds):
        tok, val = ent.tok[starts[r] : starts[r + 1]], ent.val[starts[r] : starts[r + 1]]
        n = int(ent.n_tokens[r])
        mean, var, skew, kurt = moments(val.double(), n)
        best = sequence_max(tok, val, n_seq, n_ctx, -np.inf if can_be_negative else 0.0)
        if can_be_negative:  # a counted position without an entry is an exact 0
            has_zero = torch.bincount(tok // n_ctx, minlength=n_seq) < n_counted
            best = torch.where(has_zero, best.clamp(min=0.0), best)
        order = torch.sort(best, descending=True, stable=True).indices
        top = order[: rc.top].tolist()
        rng = np.random.default_rng([seed, RECORDS_STREAM])
        random = sorted(rng.choice(n_seq, size=min(rc.random, n_seq), replace=False).tolist())
        bounds = torch.quantile(best, torch.tensor(rc.quantiles, dtype=torch.float64)) if n_seq else best
        bins = torch.bucketize(best, bounds, right=True)  # 0: below the first boundary
        by_bin = []
        for b in range(len(rc.quantiles) + 1):
            members = (bins == b).nonzero().squeeze(1).numpy()
            take = rng.choice(members, size=min(rc.per_quantile, len(members)), replace=False).tolist()
            by_bin.append(sorted(int(x) for x in take))
        wanted = sorted({*top, *random, *(s for b in by_bin for s in b)})
        per_seq = sequences_of(tok, val, wanted, n_ctx)
        out.append(
            NeuronRecords(
                mean=float(rounded(torch.tensor([mean]))[0]),
                variance=float(rounded(torch.tensor([var]))[0]),
                skewness=float(rounded(torch.tensor([skew]))[0]),
                kurtosis=float(rounded(torch.tensor([kurt]))[0]),
                top=[per_seq[s] for s in top],
                random=[per_seq[s] for s in random],
                quantile_boundaries=rounded(bounds),
                by_quantile=[[per_seq[s] for s in b] for b in by_bin],
            )
        )
    return out


def sequences_of(tok: torch.Tensor, val: torch.Tensor, seqs: list[int], n_ctx: int) -> dict[int, SequenceActivations]:
    """The entries of the sequences ``seqs`` (ascending), positions ascending."""
    seq_of = tok // n_ctx
    keep = torch.isin(seq_of, torch.tensor(seqs, dtype=seq_of.dtype))
    t = tok[keep]
    order = torch.argsort(t, stable=True)
    values = rounded(val[keep][order])
    out = {s: SequenceActivations(s, [], []) for s in seqs}
    for flat, value in zip(t[order].tolist(), values):
        rec = out[flat // n_ctx]
        rec.positions.append(flat % n_ctx)
        rec.values.append(value)
    return out
