"""Per-feature statistics of a batch, vectorised over its entries: counts, density,
extremes, means and histograms (numpy.histogram's edges and bins, exactly)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sitegen.compute.store import BatchEntries


@dataclass
class BatchStats:
    n_nonzero: torch.Tensor  # [B] int64
    n_pos: torch.Tensor  # [B] int64: activations > 0
    n_neg: torch.Tensor  # [B] int64
    density: torch.Tensor  # [B] float64: n_pos / n_tokens
    max_act: torch.Tensor  # [B] float32: largest counted activation (0 where none is counted)
    min_nonzero: torch.Tensor  # [B] float32 (0 where there is none)
    max_nonzero: torch.Tensor  # [B] float32 (0 where there is none)
    mean_nonzero: torch.Tensor  # [B] float64 (0 where there is none)
    dead: torch.Tensor  # [B] bool: never > 0


def batch_stats(ent: BatchEntries, n_rows: int) -> BatchStats:
    rows, val = ent.rows, ent.val
    n_nonzero = torch.bincount(rows, minlength=n_rows)
    n_pos = torch.bincount(rows[val > 0], minlength=n_rows)
    n_neg = n_nonzero - n_pos
    has = n_nonzero > 0
    lo = torch.full((n_rows,), float("inf")).scatter_reduce(0, rows, val, "amin")
    hi = torch.full((n_rows,), float("-inf")).scatter_reduce(0, rows, val, "amax")
    lo, hi = torch.where(has, lo, 0.0), torch.where(has, hi, 0.0)
    # zeros are counted activations too, wherever a counted position is not an entry
    has_zero = ent.n_tokens > n_nonzero
    max_act = torch.where(has_zero, hi.clamp(min=0.0), hi)
    total = torch.zeros(n_rows, dtype=torch.float64).index_add_(0, rows, val.double())
    mean = total / n_nonzero.clamp(min=1)
    density = n_pos.double() / ent.n_tokens.clamp(min=1).double()
    return BatchStats(n_nonzero, n_pos, n_neg, density, max_act, lo, hi, mean, n_pos == 0)


def numpy_edges(lo: torch.Tensor, hi: torch.Tensor, empty: torch.Tensor, bins: int) -> torch.Tensor:
    """[R, bins + 1] float32: the edges numpy.histogram(values, bins) uses for float32 values
    with these minima/maxima (``empty``: no values), reproducing np.linspace in float32."""
    lo, hi = lo.float().clone(), hi.float().clone()
    same = lo == hi
    lo[same] -= 0.5
    hi[same] += 0.5
    delta = (hi - lo)[:, None]
    step = delta / bins
    ramp = torch.arange(bins + 1, dtype=torch.float32)[None, :]
    edges = torch.where(step == 0, ramp / bins * delta, ramp * step) + lo[:, None]
    edges[:, -1] = hi
    edges[empty] = torch.from_numpy(np.histogram_bin_edges(np.zeros(0, np.float32), bins).astype(np.float32))
    return edges


def bin_index(edges: torch.Tensor, rows: torch.Tensor, val: torch.Tensor) -> torch.Tensor:
    """[m] int64: bin of each value in its row's edges [R, E]: edges[i] <= v < edges[i+1],
    the last bin closed (numpy.histogram's rule). A guess from the row's range, then moved
    by whole bins until the edges agree (one step at most, but for rounding), vectorised."""
    n_bins = edges.shape[1] - 1
    first, last = edges[rows, 0].double(), edges[rows, -1].double()
    width = (last - first).clamp(min=torch.finfo(torch.float64).tiny)
    idx = ((val.double() - first) / width * n_bins).floor().clamp(0, n_bins - 1).long()
    flat, base = edges.reshape(-1), rows * (n_bins + 1)
    while True:
        down = val < flat[base + idx]
        up = (idx < n_bins - 1) & (val >= flat[base + idx + 1])
        if not bool(down.any() or up.any()):
            return idx
        idx = idx - down.long() + up.long()


def row_histograms(
    rows: torch.Tensor, val: torch.Tensor, n_rows: int, lo: torch.Tensor, hi: torch.Tensor, bins: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Histograms of the values of each row, given each row's min/max:
    (edges [R, bins + 1] float32, counts [R, bins] int64), as numpy.histogram(values, bins)."""
    count = torch.bincount(rows, minlength=n_rows)
    edges = numpy_edges(lo, hi, count == 0, bins)
    idx = bin_index(edges, rows, val)
    counts = torch.bincount(rows * bins + idx, minlength=n_rows * bins).reshape(n_rows, bins)
    return edges, counts


def dense_histograms(values: torch.Tensor, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Histogram of each row of a dense [R, K] float32 tensor (see ``row_histograms``)."""
    n_rows, width = values.shape
    edges = numpy_edges(values.amin(1), values.amax(1), torch.zeros(n_rows, dtype=torch.bool), bins)
    counts = torch.empty(n_rows, bins, dtype=torch.int64)
    step = max(1, (1 << 22) // max(width, 1))
    for s in range(0, n_rows, step):
        idx = torch.searchsorted(edges[s : s + step], values[s : s + step], right=True).clamp(max=bins) - 1
        offset = torch.arange(len(idx))[:, None] * bins
        counts[s : s + step] = torch.bincount((idx + offset).reshape(-1), minlength=len(idx) * bins).reshape(-1, bins)
    return edges, counts
