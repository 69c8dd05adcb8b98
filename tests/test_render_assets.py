"""Inlined CSS and JS: minified by maintained minifiers without changing what the code means."""

from __future__ import annotations

import rjsmin

from sitegen.render.assets import STATIC, static_markup


def test_minifier_keeps_template_literals_and_regexes():
    """The cases the old hand-written minifier broke: spaces inside a template literal, and a
    regex literal after ``return``."""
    source = "function f(s) {\n  const t = `a - b`;\n  return /x y/.test(s) ? t : 'c  d';\n}\n"
    out = rjsmin.jsmin(source)
    assert "`a - b`" in out and "return/x y/.test(s)" in out and "'c  d'" in out, out


def test_static_files_are_minified_and_safe_to_inline():
    for path in sorted(STATIC.iterdir()):
        text = path.read_text(encoding="utf-8")
        inlined = str(static_markup(path.name))
        assert 0 < len(inlined) < len(text), path.name
        assert "</script" not in inlined and "</style" not in inlined and "<!--" not in inlined, path.name
