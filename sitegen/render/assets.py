"""Our own CSS and JS from ``static/``, made smaller for inlining into each page.

The minifier only knows the subset of JavaScript that ``static/*.js`` is written
in: statements end with ``;``, comments start with ``//``, and a regex literal only
follows ``(``, ``=``, ``!``, ``&``, ``|``, ``,``, ``:``, ``?`` or ``[``. It strips
indentation and comments, removes spaces next to punctuation outside string and
regex literals, and joins lines after ``;``, ``{`` and ``,``.
"""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files
from pathlib import Path

from markupsafe import Markup


def bundled_dir(name: str) -> Path:
    """The repo's top-level ``templates/`` or ``static/``: installed as the package
    ``sitegen.<name>`` by a wheel, read in place from a source or editable checkout."""
    try:
        return Path(str(files(f"sitegen.{name}")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / name


STATIC = bundled_dir("static")
JS_PUNCTUATION_SPACE = re.compile(r"\s*([-=+*/<>!&|?:,;(){}\[\]%])\s*")
REGEX_AFTER = "(=!&|,:?["  # also "" (a line's start): a "/" there opens a regex
CSS_PUNCTUATION_SPACE = re.compile(r"\s*([{};,>])\s*")


def _lines(text: str, comment: tuple[str, ...]) -> list[str]:
    stripped = (line.strip() for line in text.splitlines())
    return [line for line in stripped if line and not line.startswith(comment)]


def _literal_end(line: str, start: int) -> int:
    """End of the string or regex literal opening at ``start``."""
    quote, j, in_class = line[start], start + 1, False
    while j < len(line) and (line[j] != quote or in_class):
        if line[j] == "\\":
            j += 1
        elif quote == "/" and line[j] in "[]":
            in_class = line[j] == "["
        j += 1
    j += 1
    while quote == "/" and j < len(line) and line[j].isalpha():
        j += 1
    return j


def _minified_js_line(line: str) -> str:
    out, code, i = "", "", 0
    while i < len(line):
        c = line[i]
        before = (out + code).rstrip()[-1:]
        if line.startswith("//", i):  # a comment to the end of the line
            break
        if c in "\"'" or (c == "/" and before in REGEX_AFTER):
            end = _literal_end(line, i)
            out += JS_PUNCTUATION_SPACE.sub(r"\1", code) + line[i:end]
            code, i = "", end
        else:
            code, i = code + c, i + 1
    return out + JS_PUNCTUATION_SPACE.sub(r"\1", code)


def minified_js(text: str) -> str:
    out = ""
    for line in _lines(text, ("//",)):
        code = _minified_js_line(line)
        out += code + ("" if code.endswith((";", "{", ",")) else "\n")
    return out.rstrip("\n")


def minified_css(text: str) -> str:
    rules = (CSS_PUNCTUATION_SPACE.sub(r"\1", line) for line in _lines(text, ("/*",)))
    return "".join(rules).replace(";}", "}")


@cache
def static_markup(name: str) -> Markup:
    """``static/<name>`` minified, marked safe for inlining in a <style> or <script>."""
    text = (STATIC / name).read_text(encoding="utf-8")
    return Markup(minified_js(text) if name.endswith(".js") else minified_css(text))
