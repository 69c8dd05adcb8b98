"""Related hook dimensions and features: Pearson correlation from streamed sums,
decoder cosine similarity, and decoder alignment with the hook dimensions.

Rankings break ties by the lower index; vectors with no defined score (constant
activations, zero decoder rows) and exact-zero scores are left out, so every
listed value is finite and informative.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CONSTANT = 1e-9  # relative variance below which a vector counts as constant


@dataclass
class RankedRows:
    """Top-n per batch row: ids/values/extra are [B, n]; ``count`` [B] of them are valid."""

    ids: torch.Tensor
    values: torch.Tensor
    extra: torch.Tensor | None
    count: torch.Tensor


def varied(n: int, s: torch.Tensor, ss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(n * sum(x^2) - sum(x)^2, non-constant mask) from float64 sums."""
    var = n * ss - s * s
    return var, var > CONSTANT * n * ss.clamp(min=torch.finfo(torch.float64).tiny)


def pearson(
    n: int, sxy: torch.Tensor, sx: torch.Tensor, sxx: torch.Tensor, sy: torch.Tensor, syy: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pearson r [B, K] of x rows (sums [B]) against y columns (sums [K]) over n positions,
    and where it is defined (neither vector constant)."""
    var_x, ok_x = varied(n, sx, sxx)
    var_y, ok_y = varied(n, sy, syy)
    ok = ok_x[:, None] & ok_y[None, :]
    denom = torch.sqrt(var_x.clamp(min=0)[:, None] * var_y.clamp(min=0)[None, :])
    r = (n * sxy - sx[:, None] * sy[None, :]) / torch.where(ok, denom, 1.0)
    return r.clamp(-1.0, 1.0), ok


def cosine(sxy: torch.Tensor, sxx: torch.Tensor, syy: torch.Tensor) -> torch.Tensor:
    """Cosine similarity [B, K] of activation vectors from their float64 sums (0 for a zero vector)."""
    denom = torch.sqrt(sxx[:, None] * syy[None, :])
    return torch.where(denom > 0, sxy / torch.where(denom > 0, denom, 1.0), 0.0)


def top_ranked(score: torch.Tensor, valid: torch.Tensor, n: int, extra: torch.Tensor | None = None) -> RankedRows:
    """The n highest valid non-zero scores of each row [B, K], ties by the lower column index."""
    n = min(n, score.shape[1])
    keyed = torch.where(valid & (score != 0), score, float("-inf"))
    cut = torch.topk(keyed, n, dim=1).values[:, -1:]  # [B, 1] the n-th highest
    above = keyed > cut
    at_cut = keyed == cut
    # of the columns tied at the cut, the lowest-index ones that fill the row up to n
    chosen = above | (at_cut & (torch.cumsum(at_cut, 1) <= n - above.sum(1, keepdim=True)))
    ids = chosen.nonzero()[:, 1].reshape(len(score), n)  # ascending per row
    order = torch.sort(keyed.gather(1, ids), dim=1, descending=True, stable=True).indices
    ids = ids.gather(1, order)
    count = torch.isfinite(keyed.gather(1, ids)).sum(1)
    return RankedRows(ids, score.gather(1, ids), None if extra is None else extra.gather(1, ids), count)


def correlated(
    n: int,
    sxy: torch.Tensor,
    sx: torch.Tensor,
    sxx: torch.Tensor,
    sy: torch.Tensor,
    syy: torch.Tensor,
    top: int,
    exclude: torch.Tensor | None,
    with_cosine: bool,
) -> RankedRows:
    """Top ``top`` columns by Pearson r; ``exclude`` [B] column index to skip per row (itself)."""
    r, ok = pearson(n, sxy, sx, sxx, sy, syy)
    if exclude is not None:
        ok[torch.arange(len(exclude)), exclude] = False
    return top_ranked(r, ok, top, cosine(sxy, sxx, syy) if with_cosine else None)


def unit_rows(decoder: torch.Tensor) -> torch.Tensor:
    """[d_sae, d_in] float32 decoder rows scaled to unit norm (zero rows stay zero)."""
    return torch.nn.functional.normalize(decoder.float(), dim=1)


def decoder_neighbours(unit: torch.Tensor, ids: torch.Tensor, top: int) -> RankedRows:
    """Top ``top`` other features by cosine similarity of decoder rows (``unit_rows``)."""
    cos = (unit[ids] @ unit.T).double()  # [B, d_sae]
    ok = (unit.abs().sum(1) > 0)[None, :].expand_as(cos).clone()
    ok[torch.arange(len(ids)), ids] = False
    return top_ranked(cos, ok, top)


def neuron_alignment(rows: torch.Tensor, top: int) -> RankedRows:
    """Hook dimensions by |decoder value| ([B, d_in] rows); extra = share of the row's L1 norm."""
    mag = rows.double().abs()
    ranked = top_ranked(mag, torch.ones_like(mag, dtype=torch.bool), top)
    l1 = mag.sum(1, keepdim=True)
    share = ranked.values / torch.where(l1 > 0, l1, 1.0)
    return RankedRows(ranked.ids, rows.double().gather(1, ranked.ids), share, ranked.count)
