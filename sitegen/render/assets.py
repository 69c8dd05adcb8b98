"""Our own CSS and JS from ``static/``, minified (rjsmin, rcssmin) for inlining into each page."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import rcssmin
import rjsmin
from markupsafe import Markup


def bundled_dir(name: str) -> Path:
    """The repo's top-level ``templates/`` or ``static/``: installed inside the package
    (``sitegen/<name>``) by a wheel, read in place from a source or editable checkout."""
    package = Path(__file__).resolve().parents[1]
    installed = package / name
    return installed if installed.is_dir() else package.parent / name


STATIC = bundled_dir("static")


@cache
def static_markup(name: str) -> Markup:
    """``static/<name>`` minified, marked safe for inlining in a <style> or <script>."""
    text = (STATIC / name).read_text(encoding="utf-8")
    return Markup(rjsmin.jsmin(text) if name.endswith(".js") else rcssmin.cssmin(text))
