"""Property: whatever the token strings and notes, no page gains an element, attribute
or script it was not built with, and the embedded data parses back to the strings."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from fixtures import HOSTILE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from site_fixtures import (
    PAYLOADS,
    DictSpec,
    PageParser,
    Sizes,
    decoded_examples,
    expected_examples,
    page_json,
    same_examples,
    site_config,
    write_cache,
)

from sitegen.cache.files import read_features
from sitegen.render import render_site
from sitegen.render.markup import ALLOWED_TAGS
from sitegen.sources.tokens import display_text

# every element the templates and scripts of a page are built from
TEMPLATE_TAGS = {
    "html",
    "head",
    "meta",
    "link",
    "title",
    "style",
    "body",
    "header",
    "nav",
    "main",
    "section",
    "article",
    "a",
    "span",
    "h1",
    "h2",
    "h3",
    "p",
    "code",
    "dl",
    "div",
    "dt",
    "dd",
    "small",
    "strong",
    "table",
    "caption",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
    "figure",
    "figcaption",
    "svg",
    "script",
    "form",
    "label",
    "input",
    "select",
    "option",
    "button",
    "noscript",
}
FRAGMENTS = (
    HOSTILE
    + PAYLOADS
    + [
        "</script>",
        "<!--",
        "-->",
        "<script>window.__pwned=1</script>",
        "\u2028",
        "\u2029",
        "</style>",
        "&",
        "javascript:alert(1)",
        '"><svg/onload=alert(1)>',
        "{{ 7*7 }}",
        "{% raw %}",
        "\\",
        "'",
        "`",
    ]
)
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
hostile_text = st.lists(st.one_of(text, st.sampled_from(FRAGMENTS)), min_size=1, max_size=4).map("".join)
SIZES = Sizes(top_examples=3, n_intervals=2, per_interval=2, hover_top=2, logit_top=3, bins=4, active_rate=0.5)


def assert_only_built_elements(html: str, page: str) -> None:
    parser = PageParser(html)
    for tag, attrs in parser.elements:
        assert tag in TEMPLATE_TAGS | ALLOWED_TAGS, (page, tag)
        if tag == "link":
            assert attrs == {"rel": "icon", "href": "data:,"}, (page, attrs)
            continue
        for key, value in attrs.items():
            assert not key.startswith("on") and key != "style", (page, tag, key)
            if key in ("href", "src"):
                assert not (value or "").strip().lower().startswith(("javascript:", "data:")), (page, value)
        if tag == "svg":
            assert attrs.get("id") in ("act-hist", "logit-hist"), (page, attrs)
    scripts = [attrs for attrs, _ in parser.scripts]
    assert all(
        a in ({}, {"type": "application/json", "id": "data"}, {"src": "assets/index-data.js"}) for a in scripts
    ), (page, scripts)
    assert len(scripts) <= 2


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw_tokens=st.lists(hostile_text, min_size=8, max_size=8), note=hostile_text, title=hostile_text)
def test_hostile_tokens_and_notes_never_inject(raw_tokens, note, title):
    texts = {i: display_text(t) for i, t in enumerate(raw_tokens)}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "notes.yaml").write_text(json.dumps({"sae": {"0": note, "1": note}}), encoding="utf-8")
        write_cache(root / "cache", [DictSpec(feature_ids=(0, 1), dead=frozenset({1}))], sizes=SIZES, texts=texts)
        site = render_site(root / "cache", site_config(root, notes="notes.yaml", title=title), root / "site")
        for page in sorted(site.rglob("*.html")):
            assert_only_built_elements(page.read_text(encoding="utf-8"), page.name)
        fd = next(read_features(root / "cache", 0))
        data = page_json((site / "features" / "0" / "0.html").read_text(encoding="utf-8"))
        assert same_examples(decoded_examples(data), expected_examples(fd, texts))
        assert set(data["tokens"]) <= set(texts.values())
        index = (site / "assets" / "index-data.js").read_text(encoding="utf-8")
        assert "<" not in index and "\u2028" not in index
        rows = json.loads(index.removeprefix("window.SITEGEN_INDEX=").strip()[:-1])
        assert [rows["tokens"][t] for t in rows["top"][0]] == [texts[i] for i in fd.top_tokens.token_ids]
