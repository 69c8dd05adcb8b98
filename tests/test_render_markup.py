"""Markdown of site pages and feature notes: sanitised, and bad files are one-line errors."""

from __future__ import annotations

import pytest
from site_fixtures import DictSpec, PageParser, site_config, write_cache

from sitegen.cache.feature_data import DictionarySummary
from sitegen.errors import SitegenError
from sitegen.render import render_site
from sitegen.render.markup import load_notes, load_pages, markdown_html, plain_snippet

HOSTILE_MARKDOWN = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    '<iframe src="https://evil.example"></iframe>',
    "[click](javascript:alert(1))",
    '<a href="JaVaScRiPt:alert(1)">x</a>',
    '<a href=" javascript:alert(1)">x</a>',
    "<svg><script>alert(1)</script></svg>",
    "<svg onload=alert(1)><circle r=1 /></svg>",
    '<div style="background:url(javascript:alert(1))" onclick="alert(1)">x</div>',
    "<style>body{display:none}</style>",
    '<object data="x.swf"></object><embed src="x.swf">',
    '<form action="javascript:alert(1)"><button>go</button></form>',
    '<a href="data:text/html,<script>alert(1)</script>">d</a>',
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
    '<p title="x" onmouseover="alert(1)">p</p>',
    "![img](javascript:alert(1))",
    "[ref]\n\n[ref]: javascript:alert(1)",
    "<details open ontoggle=alert(1)>",
    '{: onclick="alert(1)" }\nparagraph',
]
FORBIDDEN_TAGS = {"script", "iframe", "svg", "style", "object", "embed", "form", "math", "details", "button"}


def assert_safe(html: str) -> None:
    for tag, attrs in PageParser(html).elements:
        assert tag not in FORBIDDEN_TAGS, (tag, html)
        for key, value in attrs.items():
            assert not key.startswith("on") and key != "style", (key, html)
            if key in ("href", "src"):
                assert (value or "").strip().lower().split(":")[0] not in ("javascript", "data", "vbscript"), html


@pytest.mark.parametrize("text", HOSTILE_MARKDOWN)
def test_hostile_markdown_is_sanitised(text):
    assert_safe(markdown_html(text))
    assert_safe(markdown_html(f"Some *note* text.\n\n{text}\n\nMore."))


def test_markdown_still_formats():
    html = markdown_html(
        "# Title\n\n**bold** `code` [link](https://example.org) and [rel](about.html)\n\n"
        "| a | b |\n|---|---|\n| 1 | 2 |\n"
    )
    for expected in (
        "<h1>Title</h1>",
        "<strong>bold</strong>",
        "<code>code</code>",
        'href="https://example.org"',
        'href="about.html"',
        "<table>",
        "<td>1</td>",
    ):
        assert expected in html


def test_plain_snippet():
    assert plain_snippet("**Fires** on `<b>` &amp; <script>x</script>[links](http://x)") == "Fires on <b> & links"
    long = plain_snippet("word " * 100)
    assert len(long) <= 120 and long.endswith("\u2026")


SUMMARIES = [DictionarySummary("sae", "sae", "blocks.6.hook_resid_post", 640, 4096, [0, 1], "direct", "")]


@pytest.mark.parametrize(
    "text, message",
    [
        ("mlp:\n  1: note\n", "no dictionary of that name"),
        ("sae:\n  one: note\n", "feature ids must be integers"),
        ("sae:\n  4096: note\n", "out of range"),
        ("sae:\n  -1: note\n", "out of range"),
        ("sae: [1, 2]\n", "expected a mapping of feature ids"),
        ("- sae\n", "expected a mapping of dictionary names"),
        ("sae:\n  1: [a, b]\n", "a note must be Markdown text"),
        ("sae:\n  1: note\n  bad: [\n", "YAML syntax error at line"),
    ],
)
def test_bad_notes_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "notes.yaml"
    path.write_text(text)
    with pytest.raises(SitegenError) as err:
        load_notes(path, SUMMARIES)
    assert message in str(err.value) and "\n" not in str(err.value) and str(path) in str(err.value)


def test_notes_load(tmp_path):
    path = tmp_path / "notes.yaml"
    path.write_text("sae:\n  1: '**a**'\n  '2': 3.5\n")
    assert load_notes(path, SUMMARIES) == {"sae": {1: "**a**", 2: "3.5"}}
    path.write_text("")
    assert load_notes(path, SUMMARIES) == {}


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("my page.md", b"x", "may only use letters"),
        ("index.md", b"x", "reserved"),
        ("404.md", b"x", "reserved"),
        ("latin1.md", "caf\u00e9".encode("latin-1"), "not UTF-8"),
    ],
)
def test_bad_pages_are_one_line_errors(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(SitegenError) as err:
        load_pages(tmp_path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_pages_load_sorted_with_titles(tmp_path):
    (tmp_path / "b.md").write_text("no heading\n")
    (tmp_path / "a-1.md").write_text("intro\n\n# The A page\n<script>x</script>\n")
    pages = load_pages(tmp_path)
    assert [(p.name, p.title) for p in pages] == [("a-1", "The A page"), ("b", "b")]
    assert "<script>" not in pages[0].html


def test_render_site_rejects_bad_notes_and_leaves_nothing(tmp_path):
    write_cache(tmp_path / "cache", [DictSpec(feature_ids=(0,))])
    (tmp_path / "notes.yaml").write_text("nope:\n  1: x\n")
    with pytest.raises(SitegenError, match="no dictionary of that name"):
        render_site(tmp_path / "cache", site_config(tmp_path, notes="notes.yaml"), tmp_path / "site")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "notes.yaml"]


def test_escaped_surrogate_pairs_in_notes(tmp_path):
    path = tmp_path / "notes.yaml"
    path.write_text('sae:\n  1: "smile \\ud83d\\ude00"\n')
    assert load_notes(path, SUMMARIES) == {"sae": {1: "smile \U0001f600"}}
    path.write_text('sae:\n  1: "lone \\ud83d"\n')
    with pytest.raises(SitegenError, match="unpaired surrogate"):
        load_notes(path, SUMMARIES)
