"""Serialising data into pages: JSON that cannot break out of a <script> element,
and compact numbers."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
from markupsafe import Markup

# Characters that could end a <script> element, start an HTML comment or entity,
# or (in older engines) end a JS string. They can only occur inside JSON strings,
# where a \u escape means the same character.
SCRIPT_UNSAFE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def compact_number(x: float | int) -> float | int:
    """An integral float as an int (``2.0`` -> ``2``, saving bytes); anything else unchanged."""
    if isinstance(x, float) and x.is_integer() and abs(x) < 2**53:
        return int(x)
    return x


def number_text(x: float | int) -> str:
    """A number as pages print it: integers with thousands separators, floats as repr."""
    x = compact_number(x)
    return f"{x:,}" if isinstance(x, int) else repr(x)


def percent_text(fraction: float) -> str:
    return f"{fraction * 100:.3g}%"


def compact_numbers(xs: list[float]) -> list[float | int]:
    return [compact_number(x) for x in xs]


def _bits24(values: list[float]) -> np.ndarray:
    """uint64 [n]: each value's float32 bits rounded to the top 3 bytes (sign, exponent, 15
    mantissa bits; relative error <= 2**-16), round to nearest (ties away from zero) in magnitude."""
    bits = np.asarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return (bits + 0x80) >> 8


def float24(x: float) -> float:
    """``x`` as ``packed_floats`` stores it."""
    return float((_bits24([x]) << 8).astype(np.uint32).view(np.float32)[0])


def packed_floats(values: list[float]) -> str:
    """Base64 of 24-bit floats (``_bits24``), big-endian, 4 characters a value; a
    4-significant-digit value survives ``toPrecision(4)``, NaN stays NaN. static/dom.js
    (``floats24``) decodes them."""
    top = _bits24(values)
    raw = (np.stack([top >> 16, top >> 8, top], axis=-1) & 0xFF).astype(np.uint8)
    return base64.b64encode(raw.tobytes()).decode("ascii")


def script_safe_json(obj: Any) -> str:
    """Deterministic, compact JSON safe to place inside <script> or a .js file."""
    text = json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False)
    for ch, escaped in SCRIPT_UNSAFE.items():
        text = text.replace(ch, escaped)
    return text


def script_json_markup(obj: Any) -> Markup:
    """``script_safe_json`` marked safe for a template: the script element is raw
    text, so HTML escaping would corrupt it; the \\u escapes make it safe instead."""
    return Markup(script_safe_json(obj))
