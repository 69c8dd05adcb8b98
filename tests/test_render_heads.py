"""Attention-head pages (sitegen/render/head_page.py, templates/head.html): the page JSON
decodes back to exactly the HeadData's numbers, the size budget, the index's heads table,
links between feature and head pages both ways, hostile tokens escaped, and a pool render
byte-identical to an in-process one."""

from __future__ import annotations

import copy
import json
import math
import random
import re
import shutil
from html import unescape
from pathlib import Path

import pytest
from fixtures import HOSTILE
from head_fixtures import FEATURES, HeadSizes, HeadSpec, write_head_cache
from site_fixtures import PAYLOADS, DictSpec, PageParser, floats24, page_json, r4, site_config, table_cells, token_table

from sitegen.cache.files import batch_files, read_head_batch, write_batch
from sitegen.cache.head_data import SCALARS, SUMMARIES, HeadData
from sitegen.errors import SitegenError
from sitegen.render import check_site, render_site
from sitegen.render.assets import static_markup
from sitegen.render.head_page import head_page_json
from sitegen.sources.tokens import display_text

# dictionaries: 0 sae (layer 1), 1 l6 (layer 6), 2 heads (layer 1, 4 heads, grouped-query), 3 multi (layers 1, 2)
FEATURE_SPECS = [*FEATURES, DictSpec(name="l6", hook_name="blocks.6.hook_resid_post", feature_ids=(0, 3))]
HEAD_SPECS = [
    HeadSpec(),
    HeadSpec(name="multi", layers=(1, 2), n_heads=2, n_kv_heads=2, zero_write=None, rank_by="pattern"),
]
HEADS = {2: HEAD_SPECS[0], 3: HEAD_SPECS[1]}
PAGE_BUDGET = 60 * 1024


def make_site(root: Path, workers: int | None = 1, name: str = "site") -> Path:
    if not (root / "cache").exists():
        write_head_cache(root / "cache", FEATURE_SPECS, HEAD_SPECS)
    return render_site(root / "cache", site_config(root), root / name, workers=workers)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return make_site(tmp_path_factory.mktemp("heads"))


def heads(site: Path, d: int) -> dict[int, HeadData]:
    return {hd.feature: hd for path in batch_files(site.parent / "cache", d) for hd in read_head_batch(path)}


def read(site: Path, relative: str) -> str:
    return (site / relative).read_text(encoding="utf-8")


def decoded_records(data: dict) -> list[list[dict]]:
    """The page JSON's records, decoded as static/head.js decodes them."""
    floats, at, tokens = floats24(data["h"]), 0, data["tokens"]
    groups = []
    for group in data["groups"]:
        records = []
        for seq, start, query, key, score, window, earlier, earlier_tokens, keys in group:
            positions = earlier + [start + q for q in range(len(window))]
            scalars = []
            for per_query in keys:
                columns: dict[str, list] = {name: [] for name in ("keys", "values", "rest", *SUMMARIES)}
                for cols in per_query:
                    values = [r4(x) for x in floats[at : at + len(cols) + 5]]
                    at += len(cols) + 5
                    columns["keys"].append([positions[c] for c in cols])
                    columns["values"].append(values[: len(cols)])
                    for name, x in zip(("rest", *SUMMARIES), values[len(cols) :]):
                        columns[name].append(x)
                scalars.append(columns)
            records.append(
                {
                    "seq": seq,
                    "start": start,
                    "query": query,
                    "key": key,
                    "score": score,
                    "tokens": [tokens[t] for t in window],
                    "earlier": earlier,
                    "earlier_tokens": [tokens[t] for t in earlier_tokens],
                    "scalars": scalars,
                }
            )
        groups.append(records)
    assert at == len(floats), "unused numbers in the page"
    return groups


def expected_records(hd: HeadData, texts: dict[int, str]) -> list[list[dict]]:
    return [
        [
            {
                "seq": r.seq,
                "start": r.start,
                "query": r.query,
                "key": r.key,
                "score": r.score,
                "tokens": [texts[i] for i in r.token_ids],
                "earlier": r.earlier,
                "earlier_tokens": [texts[i] for i in r.earlier_ids],
                "scalars": [
                    {name: getattr(ps, name) for name in ("keys", "values", "rest", *SUMMARIES)} for ps in r.scalars
                ],
            }
            for r in group
        ]
        for group in (hd.top_records, hd.random_records)
    ]


def test_page_json_decodes_to_the_head_data(site):
    texts = token_table()
    n_pages = 0
    for d, spec in HEADS.items():
        built = spec.ids()
        for n, (fid, hd) in enumerate(sorted(heads(site, d).items())):
            data = page_json(read(site, f"features/{d}/{fid}.html"))
            assert (data["v"], data["dictionary"], data["feature"]) == (1, d, fid)
            assert (data["layer"], data["head"], data["kv_head"]) == (hd.layer, hd.head, hd.kv_head)
            assert data["nav"] == [built[n - 1] if n else None, built[n + 1] if n + 1 < len(built) else None]
            assert data["scalars"] == list(SCALARS) and data["scalars"][data["rank_by"]] == spec.rank_by
            assert data["maxima"] == hd.maxima
            assert decoded_records(data) == expected_records(hd, texts)
            n_pages += 1
    assert n_pages == 8


def test_fixture_covers_the_edge_cases(site):
    """Ragged records (first queries with fewer keys than k), earlier keys with and without a gap,
    an all-zero record, a head whose write norms and maxima are all 0, and hostile tokens."""
    hds = [*heads(site, 2).values(), *heads(site, 3).values()]
    records = [r for hd in hds for r in (*hd.top_records, *hd.random_records)]
    assert any(len(r.scalars[0].keys[0]) < 8 for r in records)
    assert any(r.earlier and r.earlier[-1] + 1 < r.start for r in records)
    assert any(r.earlier and r.earlier[-1] + 1 == r.start for r in records)
    assert all(any(all(v == 0 for vs in ps.values for v in vs) for ps in r.scalars) for r in records if r.score == 0)
    assert sum(all(x == 0 for x in [*r.scalars[0].total_in, *r.scalars[1].total_in]) for r in records) == len(hds)
    assert heads(site, 2)[3].maxima[1] == [0, 0, 0, 0, 0]
    hostile = {display_text(t) for t in HOSTILE + PAYLOADS}
    assert any(set(page_json(read(site, f"features/2/{f}.html"))["tokens"]) & hostile for f in range(4))


def test_page_size_budget(site):
    """Default sizes (12 top + 6 random records, windows of 11 queries, 8 kept keys, 2 scalars):
    each head page <= 60 KB."""
    assert HeadSizes().top_records == 12 and HeadSizes().random_records == 6 and HeadSizes().top_keys == 8
    sizes = {
        p.relative_to(site).as_posix(): p.stat().st_size for d in HEADS for p in (site / "features" / str(d)).iterdir()
    }
    print("head page sizes (bytes):", sizes)
    assert max(sizes.values()) <= PAGE_BUDGET, sizes


def index_data(site: Path) -> dict:
    return json.loads(read(site, "assets/index-data.js").removeprefix("window.SITEGEN_INDEX=").strip()[:-1])


def test_index_heads_table(site):
    data = index_data(site)
    assert data["v"] == 3 and data["dicts"] == ["sae", "l6", "heads", "multi"]
    # the feature table is unchanged: features only
    assert list(zip(data["d"], data["id"])) == [(0, 0), (0, 1), (0, 2), (0, 5), (1, 0), (1, 3)]
    rows = [(d, hd) for d in HEADS for _, hd in sorted(heads(site, d).items())]
    s = [hd.summary for _, hd in rows]
    assert data["heads"] == {
        "d": [d for d, _ in rows],
        "id": [hd.feature for _, hd in rows],
        "layer": [hd.layer for _, hd in rows],
        "head": [hd.head for _, hd in rows],
        "entropy": [x.entropy for x in s],
        "first": [x.first for x in s],
        "previous": [x.previous for x in s],
        "self": [x.self for x in s],
        "write": [x.write_mean for x in s],
    }
    assert data["heads"]["layer"] == [1, 1, 1, 1, 1, 1, 2, 2]
    html = read(site, "index.html")
    sorts = [a for tag, a in PageParser(html).elements if tag == "th" and "data-hsort" in a]
    assert [a["data-hsort"] for a in sorts] == ["d", "layer", "head", "entropy", "first", "previous", "self", "write"]
    assert {a["data-hsort"] for a in sorts if a.get("data-first") == "-1"} == {
        "entropy",
        "first",
        "previous",
        "self",
        "write",
    }
    parser = PageParser(html)
    assert [a["id"] for tag, a in parser.elements if tag == "tr" and a.get("id", "").startswith("dict-")] == [
        f"dict-{d}" for d in range(4)
    ]
    assert '4 of 4</td><td class="muted" title="attention heads have no dead state">–' in html
    assert html.count("every built feature of this dictionary is dead") == 0
    about = read(site, "about.html")
    assert "attention_heads on blocks.{1,2}.attn.hook_pattern: 4 heads of d_head 16 (layers 1, 2), 4 built" in about


def links(html: str) -> list[str]:
    """Every link of the page but the site's navigation (to the index, about, search)."""
    return [
        a["href"]
        for tag, a in PageParser(html).elements
        if tag == "a"
        and a.get("href")
        and a["href"] not in ("../../index.html", "../../about.html")
        and not a["href"].endswith("#search")
    ]


def test_feature_and_head_pages_link_both_ways(site):
    assert check_site(site) == []
    layer1_heads = ["../2/0.html", "../2/1.html", "../2/2.html", "../2/3.html", "../3/0.html", "../3/1.html"]
    for fid in FEATURE_SPECS[0].feature_ids:
        html = read(site, f"features/0/{fid}.html")
        assert [h for h in links(html) if h.startswith("../")] == layer1_heads
        assert "attention heads of layer 1 in heads:" in html and "attention heads of layer 1 in multi:" in html
    for fid in FEATURE_SPECS[1].feature_ids:  # layer 6: no heads
        html = read(site, f"features/1/{fid}.html")
        assert not [h for h in links(html) if h.startswith("../")] and "attention heads of layer" not in html
    html = read(site, "features/2/1.html")
    hrefs = links(html)
    assert [h for h in hrefs if "#dict-" in h] == ["../../index.html#dict-0", "../../index.html#dict-3"]
    assert {"0.html", "2.html", "3.html", "../3/0.html", "../3/1.html"} <= set(hrefs) and "1.html" not in hrefs
    assert '<b aria-current="page" title="layer 1 head 1 (this page)">H1</b>' in html
    # a head of layer 2 of the multi-layer dictionary: its layer's heads only, no other dictionary reads layer 2
    html = read(site, "features/3/2.html")
    hrefs = links(html)
    assert "3.html" in hrefs and not [h for h in hrefs if "#dict-" in h or h.startswith("../2/")]
    assert 'layer</span> 2 <span class="muted">head</span> 0' in html


def test_check_site_finds_a_missing_head_page(site, tmp_path):
    tampered = tmp_path / "tampered"
    shutil.copytree(site, tampered)
    (tampered / "features" / "2" / "2.html").unlink()
    problems = check_site(tampered)
    assert "assets/index-data.js: lists head 2 of dictionary 2 but features/2/2.html is missing" in problems
    assert any(p.startswith("features/2/1.html: broken link '2.html'") for p in problems)  # its "next" link
    assert any(p.startswith("features/0/0.html: broken link '../2/2.html'") for p in problems)  # a feature's link


def test_head_header_and_summary(site):
    hd = heads(site, 2)[1]
    html = read(site, "features/2/1.html")
    assert "<title>heads layer 1 head 1 · Synthetic dashboards</title>" in html
    assert "reads key/value head 0 (grouped-query attention)" in html
    assert "key/value head" not in read(site, "features/2/0.html")  # head 0 reads kv head 0
    s = hd.summary
    for text in (f"{s.entropy:g}", f"{s.previous * 100:.3g}%", f"{s.write_mean:g}", f"{s.n_queries:,}"):
        assert f"<dd>{text}</dd>" in html
    assert "the post-softmax attention probability from query token i to key token j" in html
    assert "before any post-attention norm" in html
    keys = table_cells(html, "top-keys")
    assert [r[0] for r in keys] == [token_table()[i] for i in s.top_keys.token_ids]
    assert html.count("<rect ") == len(s.distance_mass)
    assert "[lo, hi)" in html
    assert "Top sequences" in html and "Random sample" in html


def page_stats(html: str) -> dict[str, str]:
    """The summary's <dt> label -> <dd> text."""
    return {dt: unescape(dd) for dt, dd in re.findall(r'<dt title="[^"]*">([^<]*)</dt><dd>([^<]*)</dd>', html)}


@pytest.mark.parametrize("fresh", [False, True])
def test_every_head_summary_stat_and_share_on_the_page(site, tmp_path, fresh):
    """Every summary number of every head page equals the cached HeadSummary's, formatted as
    the page says (:g, a percent to 3 significant digits, thousands separators); the top key
    and top query tables list the cached tokens and shares in order. On the module's site and
    on one of a fresh seed."""
    if fresh:
        seed = random.randrange(10**6)
        print("seed", seed)
        write_head_cache(tmp_path / "cache", FEATURE_SPECS, HEAD_SPECS, seed=seed)
        site = render_site(tmp_path / "cache", site_config(tmp_path), tmp_path / "site", workers=1)
    texts = token_table()
    checked = 0
    for d in HEADS:
        for fid, hd in sorted(heads(site, d).items()):
            html, s = read(site, f"features/{d}/{fid}.html"), hd.summary
            assert page_stats(html) == {
                "mean entropy (nats)": f"{s.entropy:g}",
                "first token": f"{s.first * 100:.3g}%",
                "previous token": f"{s.previous * 100:.3g}%",
                "self": f"{s.self * 100:.3g}%",
                "mean write norm per pair": f"{s.write_mean:g}",
                "mean total write norm per query": f"{s.write_total_mean:g}",
                "counted queries": f"{s.n_queries:,}",
            }, (d, fid)
            for table, tv in (("top-keys", s.top_keys), ("top-queries", s.top_queries)):
                want = [[texts[i], f"{v * 100:.3g}%"] for i, v in zip(tv.token_ids, tv.values)]
                assert table_cells(html, table) == (want or [["none"]]), (d, fid, table)
            checked += bool(s.top_queries.token_ids)
    assert checked >= 6


def test_hostile_tokens_are_escaped(site):
    for d in HEADS:
        for page in (site / "features" / str(d)).iterdir():
            html = page.read_text(encoding="utf-8")
            for bad in ("<img", "<svg onload", "<script>alert", "</script><", "\u202e"):
                assert bad not in html, (page, bad)
            elements = PageParser(html).elements
            assert not [(t, a) for t, a in elements if t == "img" or any(k.startswith("on") for k in a)]


def test_pool_render_is_byte_identical(tmp_path, site, pools):
    pooled = make_site(site.parent, workers=2, name=f"pooled-{tmp_path.name}")
    assert pools == [2]  # head batch files rendered by the workers too
    files = sorted(p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(pooled).as_posix() for p in pooled.rglob("*") if p.is_file())
    assert [f for f in files if (site / f).read_bytes() != (pooled / f).read_bytes()] == []
    assert len([f for f in files if f.startswith("features/")]) == 4 + 2 + 4 + 4


def test_cache_errors_are_one_line(tmp_path):
    write_head_cache(tmp_path / "cache", FEATURE_SPECS, HEAD_SPECS)
    path = batch_files(tmp_path / "cache", 2)[0]
    original = read_head_batch(path)
    bad = copy.deepcopy(original)
    bad[0].top_records[0].scalars[0].keys[3][0] = bad[0].top_records[0].start + 5  # a key after its query
    write_batch(tmp_path / "cache", 2, 0, bad)
    with pytest.raises(SitegenError, match="its kept keys are not shown before it; rebuild the cache"):
        render_site(tmp_path / "cache", site_config(tmp_path), tmp_path / "site")
    write_batch(tmp_path / "cache", 2, 0, original[:1])  # head 1 missing
    with pytest.raises(SitegenError, match="'heads' lists 4 heads but 3 are cached"):
        render_site(tmp_path / "cache", site_config(tmp_path), tmp_path / "site")
    bad = copy.deepcopy(original)
    bad[1].feature = 7  # not in the manifest
    write_batch(tmp_path / "cache", 2, 0, bad)
    with pytest.raises(SitegenError, match="head 7 of 'heads' is cached but not listed in the manifest"):
        render_site(tmp_path / "cache", site_config(tmp_path), tmp_path / "site")
    write_batch(tmp_path / "cache", 2, 0, original)
    assert render_site(tmp_path / "cache", site_config(tmp_path), tmp_path / "site").is_dir()


def test_zero_maxima_never_divide():
    """The page ships raw values and maxima; a head that writes nothing has all-zero maxima,
    which head.js reads as "shade 0" (never NaN): no NaN or infinity can reach the page."""
    from head_fixtures import HeadMaker

    hd = HeadMaker(7).head(HeadSpec(), 3)
    data = head_page_json(hd, 2, (None, None), token_table())
    assert data["maxima"][1] == [0, 0, 0, 0, 0]
    assert all(math.isfinite(x) for x in floats24(data["h"]))


def test_head_page_static_budget():
    """What a head page inlines (site.css, feature.css, head.css, dom.js, head.js, minified) <= 14 KB
    (13 KB before dom.js took the tooltip, pager and sort helpers each page script had its own copy of,
    and site.css / feature.css the rules several pages' CSS repeated)."""
    inlined = sum(len(static_markup(n).encode()) for n in ("site.css", "feature.css", "head.css", "dom.js", "head.js"))
    assert inlined <= 14 * 1024
    for name in ("head.js", "index.js"):
        assert "</script" not in static_markup(name) and "<!--" not in static_markup(name)
