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


def pearson(n: int, sxy: torch.Tensor, sx: torch.Tensor, sxx: torch.Tensor, sy: torch.Tensor,
            syy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
    """The n highest valid scores of each row, ties by the lower column index."""
    valid = valid & (score != 0)
    keyed = torch.where(valid, score, float("-inf"))
    order = torch.sort(keyed, dim=1, descending=True, stable=True).indices[:, :n]
    values = score.gather(1, order)
    count = valid.gather(1, order).sum(1)
    return RankedRows(order, values, None if extra is None else extra.gather(1, order), count)


def correlated(n: int, sxy: torch.Tensor, sx: torch.Tensor, sxx: torch.Tensor, sy: torch.Tensor,
               syy: torch.Tensor, top: int, exclude: torch.Tensor | None, with_cosine: bool) -> RankedRows:
    """Top ``top`` columns by Pearson r; ``exclude`` [B] column index to skip per row (itself)."""
    r, ok = pearson(n, sxy, sx, sxx, sy, syy)
    if exclude is not None:
        ok[torch.arange(len(exclude)), exclude] = False
    return top_ranked(r, ok, top, cosine(sxy, sxx, syy) if with_cosine else None)


def decoder_neighbours(decoder: torch.Tensor, ids: torch.Tensor, top: int) -> RankedRows:
    """Top ``top`` other features by cosine similarity of decoder rows ([d_sae, d_in])."""
    unit = torch.nn.functional.normalize(decoder.double(), dim=1)
    cos = unit[ids] @ unit.T  # [B, d_sae]
    ok = (unit.norm(dim=1) > 0)[None, :].expand_as(cos).clone()
    ok[torch.arange(len(ids)), ids] = False
    return top_ranked(cos, ok, top)


def neuron_alignment(rows: torch.Tensor, top: int) -> RankedRows:
    """Hook dimensions by |decoder value| ([B, d_in] rows); extra = share of the row's L1 norm."""
    mag = rows.double().abs()
    ranked = top_ranked(mag, torch.ones_like(mag, dtype=torch.bool), top)
    l1 = mag.sum(1, keepdim=True)
    share = ranked.values / torch.where(l1 > 0, l1, 1.0)
    return RankedRows(ranked.ids, rows.double().gather(1, ranked.ids), share, ranked.count)
