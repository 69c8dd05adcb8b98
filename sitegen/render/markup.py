"""User-written Markdown (site pages, feature notes) -> sanitised HTML.

Markdown may hold raw HTML; everything passes through nh3 with a small allowlist
(no script/style/iframe/SVG, no event handlers or style attributes, only
http/https/mailto or relative URLs), so a note cannot run code on the site.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path

import markdown
import nh3
import yaml
from markupsafe import Markup

from sitegen.cache.feature_data import DictionarySummary
from sitegen.errors import SitegenError

ALLOWED_TAGS = {
    "a",
    "abbr",
    "b",
    "blockquote",
    "br",
    "code",
    "dd",
    "del",
    "div",
    "dl",
    "dt",
    "em",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "i",
    "img",
    "kbd",
    "li",
    "ol",
    "p",
    "pre",
    "span",
    "strong",
    "sub",
    "sup",
    "table",
    "tbody",
    "td",
    "th",
    "thead",
    "tr",
    "ul",
}
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "abbr": {"title"},
    "img": {"src", "alt", "title"},
    "ol": {"start"},
    "td": {"align"},
    "th": {"align"},
}
URL_SCHEMES = {"http", "https", "mailto"}
PAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
RESERVED_PAGES = {"index", "404", "features", "assets", "prompts"}
SNIPPET_CHARS = 120


def markdown_html(text: str) -> Markup:
    """Markdown -> sanitised HTML, safe to insert into a page unescaped."""
    raw = markdown.markdown(text, extensions=["extra", "sane_lists"], output_format="html")
    return Markup(
        nh3.clean(
            raw,
            tags=ALLOWED_TAGS,
            attributes=ALLOWED_ATTRIBUTES,
            url_schemes=URL_SCHEMES,
            link_rel="noopener noreferrer",
        )
    )


def plain_snippet(text: str) -> str:
    """The first words of a Markdown text as plain text (for the index)."""
    words = " ".join(html.unescape(nh3.clean(markdown_html(text), tags=set())).split())
    return words if len(words) <= SNIPPET_CHARS else words[: SNIPPET_CHARS - 1].rstrip() + "\u2026"


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise SitegenError(f"{path}: not UTF-8 text (undecodable byte at offset {err.start})") from None
    except OSError as err:
        raise SitegenError(f"{path}: cannot read ({err.strerror or err})") from None


def _yaml(path: Path) -> object:
    try:
        return yaml.safe_load(_read_text(path))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise SitegenError(f"{path}: YAML syntax error{at}: {problem}") from None


def _feature_key(key: object, summary: DictionarySummary, where: str) -> int:
    if isinstance(key, bool) or not (isinstance(key, int) or (isinstance(key, str) and key.strip().isdigit())):
        raise SitegenError(f"{where}: feature ids must be integers, got {key!r}")
    feature = int(key)
    if not 0 <= feature < summary.d_sae:
        raise SitegenError(f"{where}: feature {feature} is out of range (the dictionary has {summary.d_sae})")
    return feature


def _joined_surrogates(text: str, where: str) -> str:
    """YAML reads a JSON-style escaped pair like "\\ud83d\\ude00" as two surrogates: join them."""
    try:
        return text.encode("utf-16", "surrogatepass").decode("utf-16")
    except UnicodeDecodeError:
        raise SitegenError(f"{where}: the note holds an unpaired surrogate escape (\\ud800-\\udfff)") from None


def load_notes(path: Path, summaries: list[DictionarySummary]) -> dict[str, dict[int, str]]:
    """``{dictionary name: {feature id: markdown}}`` from a notes YAML file.
    Notes for features that are not built are kept (and simply not shown)."""
    raw = _yaml(path)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SitegenError(f"{path}: expected a mapping of dictionary names to {{feature id: note}}")
    by_name = {s.name: s for s in summaries}
    notes: dict[str, dict[int, str]] = {}
    for name, features in raw.items():
        where = f"{path}: {name}"
        if name not in by_name:
            raise SitegenError(f"{where}: no dictionary of that name (have: {', '.join(sorted(by_name))})")
        if not isinstance(features, dict):
            raise SitegenError(f"{where}: expected a mapping of feature ids to Markdown notes")
        notes[name] = {}
        for key, note in features.items():
            feature = _feature_key(key, by_name[name], f"{where}.{key}")
            if not isinstance(note, (str, int, float)) or isinstance(note, bool):
                raise SitegenError(f"{where}.{key}: a note must be Markdown text, got {note!r}")
            notes[name][feature] = _joined_surrogates(str(note), f"{where}.{key}")
    return notes


@dataclass
class Page:
    name: str  # file stem; the page is <name>.html
    title: str
    html: Markup


def _page_title(text: str, name: str) -> str:
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip().strip("#").strip() or name
    return name


def load_pages(folder: Path) -> list[Page]:
    """Every ``*.md`` of the pages folder, sorted by name."""
    if not folder.is_dir():
        raise SitegenError(f"{folder}: site.pages must be a folder of Markdown files")
    pages = []
    for path in sorted(folder.glob("*.md")):
        name = path.stem
        if not PAGE_NAME.match(name):
            raise SitegenError(f"{path}: page file names may only use letters, digits, '-' and '_'")
        if name.lower() in RESERVED_PAGES:
            raise SitegenError(f"{path}: '{name}' is reserved for the site itself; rename the page")
        text = _read_text(path)
        pages.append(Page(name, _page_title(text, name), markdown_html(text)))
    return pages
