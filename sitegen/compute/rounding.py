"""Rounding of every float written to the cache: 4 significant digits (7 for the
direct-hover parameters pages compute with), vectorised.

``round_sig`` computes ``m / 10**k`` (or ``m * 10**k``) with an integer ``m`` and an
exact power of ten, which IEEE arithmetic rounds correctly: the result is the
double nearest to the 4-digit decimal (as ``float(f"{x:.4g}")``), so JSON holds short
numbers like ``0.1234`` and reruns are byte-identical. The rare magnitudes whose
power of ten is not exact in float64 (below 1e-19, from 1e26) go through that
string form.
"""

from __future__ import annotations

import torch

DIGITS = 4
PRECISE_DIGITS = 7  # direct-hover coefficients and basis: pages compute log-prob changes from them
# POW10[k + 330] is the double nearest to 10**k, exact for |k| <= 22
POW10 = torch.tensor([float(f"1e{k}") for k in range(-330, 310)], dtype=torch.float64)


def round_sig(t: torch.Tensor, digits: int = DIGITS) -> torch.Tensor:
    """Float64 copy of ``t`` rounded to ``digits`` significant digits (0 stays 0)."""
    x = t.detach().to(torch.float64)
    mag = x.abs()
    exp = torch.floor(torch.log10(torch.where(mag > 0, mag, 1.0))).clamp(-330, 308).long()
    # log10 may be an ulp off at powers of ten: fix the decimal exponent exactly
    exp += (mag >= POW10[exp + 331]).long() - (mag < POW10[exp + 330]).long()
    shift = (digits - 1) - exp  # decimal places kept
    scale = POW10[shift.abs().clamp(max=22) + 330]
    out = torch.where(shift >= 0, torch.round(x * scale) / scale, torch.round(x / scale) * scale)
    odd = (shift.abs() > 22) & (mag > 0) & torch.isfinite(x)
    if bool(odd.any()):
        where = odd.reshape(-1).nonzero().squeeze(1)
        out = out.reshape(-1).clone()
        out[where] = torch.tensor(
            [float(f"{v:.{digits}g}") for v in x.reshape(-1)[where].tolist()], dtype=torch.float64
        )
        out = out.reshape(x.shape)
    return out


def rounded(t: torch.Tensor, digits: int = DIGITS) -> list:
    """``round_sig(t, digits).tolist()``: (nested) Python floats, ready for JSON (which has no NaN/inf)."""
    if not bool(torch.isfinite(t).all()):
        raise ValueError("non-finite value in the feature data")
    return round_sig(t, digits).tolist()
