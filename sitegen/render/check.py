"""``sitegen check SITE``: every internal link and asset of a built site resolves, including
the node links a prompt page's script draws from its JSON (``prompt_page.linked_pages``)."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

from sitegen.render.index_data import INDEX_DATA_PATH
from sitegen.render.prompt_page import linked_pages

EXTERNAL_SCHEMES = {"http", "https", "mailto", "data"}
INDEX_DATA_PREFIX = "window.SITEGEN_INDEX="


class LinkParser(HTMLParser):
    """Collects every href/src value and the text of the embedded JSON data."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.urls: list[str] = []
        self.data_blocks: list[str] = []
        self._in_data = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in ("href", "src") and v is not None]
        self._in_data = tag == "script" and ("type", "application/json") in attrs
        if self._in_data:
            self.data_blocks.append("")

    def handle_data(self, data: str) -> None:
        if self._in_data:
            self.data_blocks[-1] += data

    def handle_endtag(self, tag: str) -> None:
        self._in_data = False


def link_problem(site: Path, page: Path, url: str) -> str | None:
    """Why ``url`` on ``page`` does not resolve to a file of the site, or None."""
    where = page.relative_to(site).as_posix()
    parts = urlsplit(url)
    if parts.scheme.lower() == "javascript":
        return f"{where}: javascript: URL {url!r}"
    if parts.scheme or parts.netloc:
        return None if parts.scheme.lower() in EXTERNAL_SCHEMES or parts.netloc else f"{where}: unexpected URL {url!r}"
    if parts.path.startswith("/"):
        return f"{where}: absolute link {url!r} (breaks under a sub-path; links must be relative)"
    if not parts.path:
        return None
    target = (page.parent / unquote(parts.path)).resolve()
    if target != site and site not in target.parents:
        return f"{where}: link {url!r} points outside the site"
    if target.is_dir():
        target = target / "index.html"
    return None if target.is_file() else f"{where}: broken link {url!r} (no {target.relative_to(site).as_posix()})"


def page_problems(site: Path, page: Path) -> list[str]:
    parser = LinkParser()
    parser.feed(page.read_text(encoding="utf-8", errors="replace"))
    parser.close()
    problems = [p for url in parser.urls if (p := link_problem(site, page, url))]
    where = page.relative_to(site).as_posix()
    for block in parser.data_blocks:
        try:
            data = json.loads(block)
        except ValueError as err:
            problems.append(f"{where}: embedded page data is not valid JSON ({err})")
            continue
        if page.parent == site / "prompts":
            try:
                urls = linked_pages(data)
            except (KeyError, TypeError, IndexError) as err:
                problems.append(f"{where}: unreadable prompt page data ({err!r})")
                continue
            problems += [f"{p} (a node of the page's data)" for url in urls if (p := link_problem(site, page, url))]
    return problems


def index_data_problems(site: Path) -> list[str]:
    """Each row of the index data (features, attention heads) must have its page."""
    path = site / INDEX_DATA_PATH
    if not path.is_file():
        return []  # index.html's <script src> reports it
    text = path.read_text(encoding="utf-8", errors="replace").strip()
    try:
        data = json.loads(text.removeprefix(INDEX_DATA_PREFIX).removesuffix(";"))
        rows = [("feature", d, i) for d, i in zip(data["d"], data["id"])]
        heads = data.get("heads", {})
        rows += [("head", d, i) for d, i in zip(heads.get("d", []), heads.get("id", []))]
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        return [f"{INDEX_DATA_PATH}: unreadable index data ({err})"]
    return [
        f"{INDEX_DATA_PATH}: lists {unit} {i} of dictionary {d} but features/{d}/{i}.html is missing"
        for unit, d, i in rows
        if not (site / "features" / str(d) / f"{i}.html").is_file()
    ]


def check_site(site_dir: Path) -> list[str]:
    """Problems with a built site (empty when every link and asset resolves)."""
    site = Path(site_dir).resolve()
    if not site.is_dir():
        return [f"{site_dir}: not a folder"]
    problems = [] if (site / "index.html").is_file() else [f"{site_dir}: no index.html"]
    for page in sorted(site.rglob("*.html")):
        problems += page_problems(site, page)
    return problems + index_data_problems(site)
