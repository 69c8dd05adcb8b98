"""Rendered pages: layout, the embedded JSON round-trips the FeatureData, tables,
escaping of hostile tokens, and the size budgets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures import HOSTILE
from site_fixtures import (
    PAYLOADS,
    DictSpec,
    FeatureMaker,
    PageParser,
    Sizes,
    decoded_examples,
    expected_examples,
    floats24,
    index_rows,
    page_json,
    same_examples,
    site_config,
    table_cells,
    token_table,
    write_cache,
)

from sitegen.cache.feature_data import DirectHover, Example
from sitegen.cache.files import read_features, write_batch
from sitegen.errors import SitegenError
from sitegen.render import check_site, render_site
from sitegen.render.assets import STATIC, static_markup
from sitegen.render.feature_page import feature_page_json
from sitegen.render.index_data import index_script
from sitegen.render.site import number_text, percent_text
from sitegen.sources.tokens import display_text

SPECS = [
    DictSpec(name="sae", d_sae=16, feature_ids=tuple(range(12)), dead=frozenset({3})),
    DictSpec(
        name="mlp",
        kind="neurons",
        hook_name="blocks.6.mlp.hook_post",
        d_sae=2048,
        feature_ids=(0, 1),
        dead=frozenset({0, 1}),
    ),
    DictSpec(name="signed", d_sae=64, feature_ids=(5, 9), negative=True),
    DictSpec(name="exact", d_sae=16, feature_ids=(0, 1), effects="exact"),  # hovers listed in full
]
NOTE = "Fires on **hostile** tokens; see [docs](https://example.org/x)."


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("project")
    (root / "pages").mkdir()
    (root / "pages" / "about.md").write_text("# About us\n\nThese are *synthetic* dashboards.\n")
    (root / "pages" / "guide.md").write_text("# Reading guide\n\nHover tokens.\n")
    (root / "notes.yaml").write_text(f"sae:\n  1: {json.dumps(NOTE)}\n  15: unbuilt feature note\n")
    write_cache(root / "cache", SPECS)
    return render_site(root / "cache", site_config(root, pages="pages", notes="notes.yaml"), root / "site")


def read(site: Path, relative: str) -> str:
    return (site / relative).read_text(encoding="utf-8")


def cached(site: Path, dict_index: int) -> dict:
    return {fd.feature: fd for fd in read_features(site.parent / "cache", dict_index)}


def test_layout(site):
    top = sorted(p.name for p in site.iterdir())
    assert top == [".nojekyll", "404.html", "about.html", "assets", "features", "guide.html", "index.html"]
    assert sorted(p.name for p in (site / "assets").iterdir()) == ["index-data.js"]
    for d, spec in enumerate(SPECS):
        assert sorted(int(p.stem) for p in (site / "features" / str(d)).iterdir()) == sorted(spec.feature_ids)


def test_links_are_relative_and_resolve(site):
    assert check_site(site) == []
    root = str(site.parent)
    for page in site.rglob("*.html"):
        html = read(site, page.relative_to(site).as_posix())
        assert root not in html
        for tag, attrs in PageParser(html).elements:
            for key in ("href", "src"):
                assert not (attrs.get(key) or "").startswith("/"), (page, tag, attrs)


def test_embedded_json_round_trips_feature_data(site):
    texts = token_table()
    for d, spec in enumerate(SPECS):
        built = sorted(spec.feature_ids)
        for n, (fid, fd) in enumerate(sorted(cached(site, d).items())):
            data = page_json(read(site, f"features/{d}/{fid}.html"))
            assert (data["dictionary"], data["feature"], data["max_act"]) == (d, fid, fd.max_act)
            assert data["nav"] == [built[n - 1] if n else None, built[n + 1] if n + 1 < len(built) else None]
            assert data["act_hist"] == [fd.act_histogram.edges, fd.act_histogram.counts]
            assert data["logit_hist"] == [fd.logit_histogram.edges, fd.logit_histogram.counts]
            assert same_examples(decoded_examples(data), expected_examples(fd, texts))


def number(cell: str) -> float:
    return float(cell.replace(",", "").rstrip("%"))


def test_tables_match_feature_data(site):
    texts = token_table()
    for fid, fd in cached(site, 0).items():
        html = read(site, f"features/0/{fid}.html")
        rows = table_cells(html, "neuron_alignment")
        assert [[int(r[0]), number(r[1]), number(r[2])] for r in rows] == [
            [i, v, e] for i, v, e in zip(fd.neuron_alignment.ids, fd.neuron_alignment.values, fd.neuron_alignment.extra)
        ]
        rows = table_cells(html, "decoder_neighbours")
        assert [[int(r[0]), number(r[1])] for r in rows] == [
            [i, v] for i, v in zip(fd.decoder_neighbours.ids, fd.decoder_neighbours.values)
        ]
        for table, tv in (("logit-top", fd.logit_top), ("logit-bottom", fd.logit_bottom)):
            rows = table_cells(html, table)
            assert [(r[0], number(r[1])) for r in rows] == [(texts[i], v) for i, v in zip(tv.token_ids, tv.values)]


def test_related_features_link_only_to_built_pages(site):
    built = set(SPECS[0].feature_ids)
    seen = {True: 0, False: 0}
    for fid, fd in cached(site, 0).items():
        parser = PageParser(read(site, f"features/0/{fid}.html"))
        links = {a.get("href") for tag, a in parser.elements if tag == "a"}
        for other in fd.correlated_features.ids + fd.decoder_neighbours.ids:
            assert (f"{other}.html" in links) == (other in built)
            seen[other in built] += 1
    assert seen[True] and seen[False]  # both kinds occur in the fixture


def test_header_note_and_dead_notice(site):
    fd = cached(site, 0)[1]
    html = read(site, "features/0/1.html")
    assert "<strong>hostile</strong>" in html and 'href="https://example.org/x"' in html
    assert f"<dd>{fd.max_act}</dd>" in html and "layer 6" in html and "blocks.6.hook_resid_post" in html
    assert "Dead feature" not in html
    dead = read(site, "features/0/3.html")
    parser = PageParser(dead)
    assert "Dead feature" in dead and parser.by_id("act-hist") is None and parser.by_id("logit-hist")
    assert not [a for _, a in parser.elements if a.get("class") == "ex-group"]
    assert "Dead neuron" in read(site, "features/1/0.html")


def test_negative_group_and_intervals_are_labelled(site):
    html = read(site, "features/2/5.html")
    fd = cached(site, 2)[5]
    neg = fd.negative
    assert (
        f"the {len(neg.examples)} lowest, from [{number_text(neg.lower)}, 0) · "
        f"{percent_text(neg.fraction)} of non-zero activations are negative"
    ) in html
    for g in fd.intervals:
        assert f"Interval ({number_text(g.lower)}, {number_text(g.upper)}]" in html
    assert len(page_json(html)["groups"]) == 1 + len(fd.intervals) + 1


def test_hostile_tokens_are_escaped(site):
    for page in (site / "features").rglob("*.html"):
        html = page.read_text(encoding="utf-8")
        for bad in ("<img", "<svg onload", "<script>alert", "</script><", "\u202e"):
            assert bad not in html, (page, bad)
        elements = PageParser(html).elements
        assert not [(t, a) for t, a in elements if t == "img" or any(k.startswith("on") for k in a)]
    tokens = set(page_json(read(site, "features/0/0.html"))["tokens"])
    assert {display_text(t) for t in HOSTILE + PAYLOADS} & tokens  # they are on the page, as data
    data_js = read(site, "assets/index-data.js")
    assert "<" not in data_js and ">" not in data_js


def test_index_lists_every_feature_and_dead_dictionaries(site):
    html = read(site, "index.html")
    assert html.count("every built feature of this dictionary is dead") == 1  # the mlp dictionary
    data = json.loads(read(site, "assets/index-data.js").removeprefix("window.SITEGEN_INDEX=").strip()[:-1])
    assert data["dicts"] == [s.name for s in SPECS]
    assert list(zip(data["d"], data["id"])) == [(d, f) for d, s in enumerate(SPECS) for f in sorted(s.feature_ids)]
    assert [data["id"][r] for r in data["dead"]] == [3, 0, 1]
    assert data["notes"] == [[1, "Fires on hostile tokens; see docs."]]
    fd = cached(site, 0)[0]
    assert [data["tokens"][t] for t in data["top"][0]] == [token_table()[i] for i in fd.top_tokens.token_ids]


def test_about_and_markdown_pages(site):
    about = read(site, "about.html")
    for expected in (
        "About us",
        "<em>synthetic</em>",
        "synthetic-model",
        "texts/*.txt",
        "0123abcd",
        "sae",
        "signed",
        "model_passes",
    ):
        assert expected in about
    assert "Reading guide" in read(site, "guide.html") and 'href="guide.html"' in read(site, "index.html")
    assert 'href="../../guide.html"' in read(site, "features/0/0.html")
    assert "Page not found" in read(site, "404.html")


def test_feature_page_size_budget(site):
    """Default sizes (20 top examples of 11 tokens, 10 x 5 interval examples, 5 + 5 hover
    tokens, 10 + 10 logits) with realistic synthetic values: each page <= 40 KB."""
    sizes = [p.stat().st_size for p in (site / "features" / "0").glob("*.html")]
    assert max(sizes) <= 40 * 1024, sorted(sizes)


def test_dense_neuron_pages_fit_the_budget(tmp_path):
    """MLP neurons: GELU is never exactly 0, so every shown token has an activation and a
    hover. Default sizes (20 top, 10 x 5 interval and 10 most negative examples of 11 tokens),
    direct hovers, and as in real data (the default build's neurons: 804 shown tokens, 596
    distinct positions, 2.3 KB of token strings) top and negative examples in runs of
    overlapping windows: each page <= 40 KB."""
    texts = token_table(1024)
    maker = FeatureMaker(5, vocab=len(texts), sizes=Sizes(active_rate=1.0))
    features = []
    for f in range(4):
        fd = maker.feature("mlp", f, 2048, 2048, negative=True)
        for examples in (fd.top_examples, fd.negative.examples):
            for i in range(1, len(examples), 2):  # the neuron fires again one token later
                examples[i] = shifted(examples[i - 1], 1, maker.tokens(1))
        features.append(fd)
    cache = tmp_path / "cache"
    spec = DictSpec(
        name="mlp",
        kind="neurons",
        hook_name="blocks.6.mlp.hook_post",
        d_in=2048,
        d_sae=2048,
        feature_ids=tuple(range(4)),
        negative=True,
    )
    write_cache(cache, [spec], texts=texts)
    write_batch(cache, 0, 0, features)
    site = render_site(cache, site_config(tmp_path), tmp_path / "site")
    pages = sorted((site / "features" / "0").glob("*.html"))
    data = page_json(pages[0].read_text(encoding="utf-8"))
    assert all(len(ex) == 4 for g in data["groups"] for ex in g)  # every token has a record
    assert same_examples(decoded_examples(data), expected_examples(features[0], texts))
    assert max(p.stat().st_size for p in pages) <= 40 * 1024, sorted(p.stat().st_size for p in pages)


def shifted(ex: Example, by: int, maker_tokens: list[int]) -> Example:
    """The window of ``ex`` moved ``by`` tokens right in the same sequence (new tail tokens)."""
    last = ex.hovers[-1]
    return Example(
        ex.seq,
        ex.pos + by,
        ex.start + by,
        ex.token_ids[by:] + maker_tokens[:by],
        ex.acts[by:] + [ex.acts[-1]] * by,
        ex.hovers[by:] + [last] * by,
    )


def test_overlapping_windows_share_records():
    """Two windows over the same positions of a sequence: one record per position on the page,
    decoded back to both; windows that disagree at a position are a cache error."""
    texts = token_table()
    fd = FeatureMaker(3, sizes=Sizes(active_rate=0.6)).feature("sae", 0, 64, 640)
    first = fd.top_examples[0]
    fd.top_examples.insert(1, shifted(first, 3, [7, 8, 9]))
    data = feature_page_json(fd, 0, (None, None), texts)
    assert same_examples(decoded_examples(data), expected_examples(fd, texts))
    listed = sum(len(ex[4]) if len(ex) > 4 else len(ex[3]) for g in data["groups"] for ex in g)
    assert len(floats24(data["h"])) // 4 == listed - sum(a != 0 for a in first.acts[3:])
    bad = shifted(first, 3, [7, 8, 9])
    bad.acts[0] = first.acts[3] + 1.0
    fd.top_examples[1] = bad
    with pytest.raises(SitegenError, match="disagree at sequence"):
        feature_page_json(fd, 0, (None, None), texts)


def test_direct_hover_with_a_vanishing_coefficient():
    """coef > 0 so small that the changes at both ends round to one 24-bit float: the page
    still lists the k lowest u first (the sign of coef), all with the same change."""
    texts = token_table()
    fd = FeatureMaker(4).feature("sae", 0, 64, 640)
    ex = fd.top_examples[0]
    k = len(fd.hover_basis.token_ids) // 2
    ids = fd.hover_basis.token_ids
    h = ex.hovers[ex.pos - ex.start]
    assert isinstance(h, DirectHover)
    h.coef, h.shift = 1e-12, -0.25
    data = feature_page_json(fd, 0, (None, None), texts)
    assert same_examples(decoded_examples(data), expected_examples(fd, texts))
    shown = decoded_examples(data)[0][0]["hovers"][ex.pos - ex.start]
    assert shown[1] == [texts[i] for i in ids[:k]] and set(shown[2] + shown[4]) == {0.25}


def test_static_budget():
    raw = sum(p.stat().st_size for p in STATIC.iterdir() if p.suffix in (".js", ".css"))
    # 30 KB before attention-head pages (head.js, head.css: tests/test_render_heads.py), 36 KB before
    # prompt pages (prompt.js, prompt.css: tests/test_render_prompts.py), 48 KB before imported
    # NeuronRecord pages (record.js: tests/test_imports.py); each page inlines only its own script
    assert raw <= 52 * 1024
    inlined = sum(len(static_markup(n).encode()) for n in ("site.css", "feature.css", "dom.js", "feature.js"))
    assert inlined <= 12 * 1024
    for name in ("feature.js", "index.js", "notfound.js"):
        assert "</script" not in static_markup(name) and "<!--" not in static_markup(name)


def test_index_data_bytes_per_feature():
    rows = index_rows(20_000)
    assert len(index_script(rows, ["sae", "mlp"]).encode()) / len(rows) <= 150
