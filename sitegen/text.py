"""Hostile text (token strings, prompts, explanations) made visible, without torch: control,
format (bidi, zero-width), private-use, surrogate and line/paragraph-separator characters
become ``\\uXXXX`` escapes."""

from __future__ import annotations

import unicodedata

INVISIBLE = ("Cc", "Cf", "Co", "Cs", "Zl", "Zp")


def escaped(ch: str) -> str:
    """``ch`` itself, or its ``\\uXXXX`` (``\\UXXXXXXXX``) escape when it is invisible."""
    if unicodedata.category(ch) not in INVISIBLE:
        return ch
    return f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}"


def visible(text: str, keep: str = "") -> str:
    """``text`` with every invisible character escaped but those in ``keep``."""
    return "".join(ch if ch in keep else escaped(ch) for ch in text)
