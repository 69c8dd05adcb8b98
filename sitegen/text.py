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


MAX_TOKEN_CHARS = 48
VISIBLE = {"\n": "\u21b5", "\r": "\u240d", "\t": "\u21e5"}  # ↵ ␍ ⇥


def display_text(raw: str) -> str:
    """Make whitespace-like and invisible characters visible; cap the length."""
    out = []
    for ch in raw:
        out.append(VISIBLE[ch] if ch in VISIBLE else escaped(ch))
    text = "".join(out)
    if len(text) > MAX_TOKEN_CHARS:
        text = f"{text[: MAX_TOKEN_CHARS - 1]}\u2026"
    return text


def short_repr(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (for error lines quoting hostile input)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"
