"""Prompt pages (sitegen/render/prompt_page.py, templates/prompt.html): the page JSON decodes back
to exactly the PromptData's numbers, the static tables (top predictions, ablations, upstream
traces) show them, every node link resolves and none goes to a feature without a page, node
pages link back with their rank, the index lists the prompts, hostile prompt text and tokens
are escaped, the size budget, one-line cache errors, and a pool render byte-identical to an
in-process one."""

from __future__ import annotations

import copy
import random
import re
import shutil
from pathlib import Path

import pytest
from prompt_fixtures import FEATURE_SPECS, HEAD_SPECS, PROMPTS, UNBUILT, node_layer, write_prompt_cache
from site_fixtures import PageParser, page_json, site_config, table_cells, token_table

from sitegen.cache.files import read_prompts, write_prompts
from sitegen.cache.prompt_data import PromptData
from sitegen.errors import SitegenError
from sitegen.render import check_site, render_site
from sitegen.render.assets import static_markup
from sitegen.render.prompt_page import GRADIENT_TEXT, N_LINKED, linked_pages, text_snippet, visible_text
from sitegen.render.site import number_text, signed_text

NOTE = "<script>window.__pwned=1</script> Fires on *capitals*"  # its snippet: "Fires on capitals"
PAGE_BUDGET = 150 * 1024  # a page of 600 node rows
BUILT = {d: set(s.feature_ids) for d, s in enumerate(FEATURE_SPECS)}
BUILT.update({2 + n: set(s.ids()) for n, s in enumerate(HEAD_SPECS)})
NAMES = [s.name for s in FEATURE_SPECS] + [s.name for s in HEAD_SPECS]


def make_site(root: Path, workers: int | None = 1, name: str = "site") -> Path:
    if not (root / "cache").exists():
        write_prompt_cache(root / "cache")
        (root / "notes.yaml").write_text(f"sae:\n  1: '{NOTE}'\nheads:\n  0: a *head* note\n")
    return render_site(root / "cache", site_config(root, notes="notes.yaml"), root / name, workers=workers)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return make_site(tmp_path_factory.mktemp("prompts"))


def prompts(site: Path) -> list[PromptData]:
    return read_prompts(site.parent / "cache")


def read(site: Path, relative: str) -> str:
    return (site / relative).read_text(encoding="utf-8")


def label(d: int, n) -> str:
    if d >= 2:
        spec = HEAD_SPECS[d - 2]
        return f"L{node_layer(d, n.feature)}.H{n.feature % spec.n_heads} (query {n.position} ← key {n.key})"
    return f"{'neuron' if d == 1 else 'feature'} {n.feature}"


def test_page_json_decodes_to_the_prompt_data(site):
    texts = token_table()
    all_prompts = prompts(site)
    assert [len(pd.nodes) for pd in all_prompts] == [s.n_nodes for s in PROMPTS]
    for pd in all_prompts:
        data = page_json(read(site, f"prompts/{pd.slug}.html"))
        tok = data["tokens"]
        assert (data["v"], data["index"], data["slug"]) == (1, pd.index, pd.slug)
        assert (data["metric_kind"], data["metric"], data["position"]) == (pd.metric_kind, pd.metric, pd.position)
        assert [tok[t] for t in data["prompt"]] == [texts[i] for i in pd.token_ids]
        assert tok[data["target"]] == texts[pd.target]
        assert (data["distractor"] is None) == (pd.distractor is None)
        if pd.distractor is not None:
            assert tok[data["distractor"]] == texts[pd.distractor]
        assert len(tok) == len(set(tok)) == len({texts[i] for i in pd.token_ids_used()})
        top = pd.top_predictions
        assert [[tok[t] for t in data["top"][0]], data["top"][1]] == [[texts[i] for i in top.token_ids], top.values]
        assert [[[tok[t] for t in ids], ps] for ids, ps in data["next"]] == [
            [[texts[i] for i in tv.token_ids], tv.values] for tv in pd.next_tokens
        ]
        assert data["attr"] == pd.layer_attribution
        assert data["dicts"] == [[s.name, s.kind] for s in FEATURE_SPECS] + [
            [s.name, "attention_heads"] for s in HEAD_SPECS
        ]
        decoded = [(d, f, pos, key, act, ag, wn, direct) for d, f, _, _, pos, key, act, ag, wn, direct in data["nodes"]]
        expected = [
            (n.dictionary, n.feature, n.position, n.key, n.activation, n.act_grad, n.write_norm, n.direct)
            for n in pd.nodes
        ]
        assert decoded == expected
        for d, f, layer, head, *_ in data["nodes"]:
            assert layer == node_layer(d, f)
            assert head == (f % HEAD_SPECS[d - 2].n_heads if d >= 2 else -1)
        in_table = {(n.dictionary, n.feature) for n in pd.nodes}
        assert data["unlinked"] == ([list(UNBUILT)] if UNBUILT in in_table else [])
        assert data["notes"] == [
            [d, f, note] for d, f, note in ([0, 1, "Fires on capitals"], [2, 0, "a head note"]) if (d, f) in in_table
        ]


def test_fixture_covers_the_edge_cases(site):
    pd, small, tiny = prompts(site)
    top = pd.nodes[:N_LINKED]
    assert {n.dictionary for n in top} == {0, 1, 2, 3} and any(n.key >= 0 for n in top)
    assert len([n for n in top if (n.dictionary, n.feature) == (0, 1)]) >= 2  # one feature, two positions
    assert UNBUILT in {(n.dictionary, n.feature) for n in top}
    assert any(a.change * a.estimate < 0 for a in pd.ablations)  # the estimate of the wrong sign
    assert [len(t.upstream) > 0 for t in pd.traces] == [True, True, False]  # a trace with no upstream node
    assert UNBUILT in {(u.node.dictionary, u.node.feature) for t in pd.traces for u in t.upstream}
    assert small.distractor is None and small.metric_kind == "neg_log_prob"
    assert not tiny.ablations and not tiny.traces and len(tiny.token_ids) == 2
    assert all(abs(a.act_grad) >= abs(b.act_grad) for a, b in zip(pd.nodes, pd.nodes[1:]))


def links(html: str, prefix: str) -> list[str]:
    return [
        a["href"] for tag, a in PageParser(html).elements if tag == "a" and (a.get("href") or "").startswith(prefix)
    ]


def test_node_links_resolve_and_skip_features_without_a_page(site):
    assert check_site(site) == []
    for pd in prompts(site):
        html = read(site, f"prompts/{pd.slug}.html")
        static = links(html, "../features/")
        assert bool(static) == bool(pd.ablations) and all((site / "prompts" / h).resolve().is_file() for h in static)
        assert "../features/0/3.html" not in html and not (site / "features/0/3.html").exists()
        shown = [pd.nodes[a.node] for a in pd.ablations]  # the ablations, then each trace: its node, upstream nodes
        shown += [n for t in pd.traces for n in (pd.nodes[t.node], *(u.node for u in t.upstream))]
        assert static == [
            f"../features/{n.dictionary}/{n.feature}.html" for n in shown if n.feature in BUILT[n.dictionary]
        ]
        # the node table's links, drawn by prompt.js from the JSON: every built node's page, once
        table = linked_pages(page_json(html))
        built = dict.fromkeys((n.dictionary, n.feature) for n in pd.nodes if n.feature in BUILT[n.dictionary])
        assert table == [f"../features/{d}/{f}.html" for d, f in built]
        assert all((site / "prompts" / h).resolve().is_file() for h in table)
    html = read(site, f"prompts/{prompts(site)[0].slug}.html")
    assert '<span title="no page in this site">feature 3</span>' in html


def test_check_site_finds_a_missing_node_page(site, tmp_path):
    tampered = tmp_path / "tampered"
    shutil.copytree(site, tampered)
    (tampered / "features" / "1" / "7.html").unlink()  # a neuron of the first prompt's table
    slug = prompts(site)[0].slug
    assert any(n.dictionary == 1 and n.feature == 7 for n in prompts(site)[0].nodes)
    problems = check_site(tampered)
    assert (
        f"prompts/{slug}.html: broken link '../features/1/7.html' (no features/1/7.html) (a node of the page's data)"
        in problems
    )


def appearances(html: str) -> list[tuple[str, str, list[int]]]:
    """(href, link text, ranks) of each "appears in prompt" line of a node page."""
    out = []
    for m in re.finditer(
        r'<p class="appears">appears in prompt <a href="([^"]*)">(.*?)</a> as #(\d+) by attribution(.*?)</p>', html
    ):
        also = [int(r) for r in re.findall(r"#(\d+)", m.group(4))]
        out.append((m.group(1), m.group(2), [int(m.group(3)), *also]))
    return out


def test_node_pages_link_back_with_their_rank(site):
    import html as html_lib

    all_prompts = prompts(site)
    n_lines = 0
    for d, built in BUILT.items():
        for f in sorted(built):
            page = read(site, f"features/{d}/{f}.html")
            expected = []
            for pd in all_prompts:
                ranks = [r for r, n in enumerate(pd.nodes[:N_LINKED], 1) if (n.dictionary, n.feature) == (d, f)]
                if ranks:
                    expected.append((f"../../prompts/{pd.slug}.html", text_snippet(pd.text), ranks))
            got = [(h, html_lib.unescape(t), r) for h, t, r in appearances(page)]
            assert got == expected, (d, f)
            assert page.count('class="appears"') == len(expected)
            n_lines += len(got)
    assert n_lines >= 10
    top = all_prompts[0].nodes[0]  # the layer-2 head pair ranked first: its head page says #1
    assert appearances(read(site, f"features/{top.dictionary}/{top.feature}.html"))[0][2][0] == 1
    assert check_site(site) == []


def test_index_lists_prompts(site):
    html = read(site, "index.html")
    rows = table_cells(html, "prompts")
    texts = token_table()
    assert rows == [
        [
            text_snippet(pd.text),
            "logit difference target − distractor at position " + str(pd.position)
            if pd.distractor is not None
            else f"negative log-prob of the target at position {pd.position}",
            number_text(pd.metric),
            texts[pd.target],
            "–" if pd.distractor is None else texts[pd.distractor],
        ]
        for pd in prompts(site)
    ]
    assert links(html, "prompts/") == [f"prompts/{pd.slug}.html" for pd in prompts(site)]


def test_index_and_pages_without_prompts(tmp_path):
    from head_fixtures import write_head_cache

    write_head_cache(tmp_path / "cache", FEATURE_SPECS, HEAD_SPECS)
    out = render_site(tmp_path / "cache", site_config(tmp_path), tmp_path / "site", workers=1)
    assert not (out / "prompts").exists() and 'id="prompts"' not in read(out, "index.html")
    assert "appears in prompt" not in read(out, "features/0/1.html")


def test_header_metric_and_definitions(site):
    texts = token_table()
    pd, small, _ = prompts(site)
    html = read(site, f"prompts/{pd.slug}.html")
    assert f'<dd id="metric">logit difference target − distractor at position {pd.position}</dd>' in html
    assert GRADIENT_TEXT.replace("'", "&#39;") in html
    assert (
        "activation × gradient of the metric w.r.t. that activation, with the final norm&#39;s scale detached" in html
    )
    assert "the norm of what the node writes into the residual stream" in html
    assert "that write · the gradient of the metric w.r.t. the final residual stream" in html
    assert table_cells(html, "top-predictions") == [
        [texts[i], f"{p * 100:.3g}%"] for i, p in zip(pd.top_predictions.token_ids, pd.top_predictions.values)
    ]
    html = read(site, f"prompts/{small.slug}.html")
    assert f'<dd id="metric">negative log-prob of the target at position {small.position}</dd>' in html
    assert "<dt>distractor</dt>" not in html


@pytest.mark.parametrize("fresh", [False, True])
def test_header_value_is_the_cached_metric(site, tmp_path, fresh):
    """The header's value is the cached PromptData.metric as pages print numbers (an integral
    value as an int with thousands separators, else its repr), on every prompt page of the
    module's site and of a fresh seed's."""
    if fresh:
        seed = random.randrange(10**6)
        print("seed", seed)
        write_prompt_cache(tmp_path / "cache", seed=seed)
        site = render_site(tmp_path / "cache", site_config(tmp_path), tmp_path / "site", workers=1)
    for pd in prompts(site):
        html = read(site, f"prompts/{pd.slug}.html")
        shown = re.findall(r'<dt title="the metric on the clean prompt">value</dt><dd>([^<]*)</dd>', html)
        m = pd.metric
        assert shown == [f"{int(m):,}" if float(m).is_integer() else repr(m)], (pd.slug, shown, m)


def test_ablations_and_traces_tables(site):
    texts = token_table()
    pd = prompts(site)[0]
    html = read(site, f"prompts/{pd.slug}.html")

    def where(n) -> list[str]:
        return [str(node_layer(n.dictionary, n.feature)), f"{n.position} {texts[pd.token_ids[n.position]]}"]

    rows = table_cells(html, "ablations")
    expected = []
    for a in pd.ablations:
        n = pd.nodes[a.node]
        diff = float(f"{a.change - a.estimate:.4g}")
        expected.append(
            [str(a.node + 1), NAMES[n.dictionary], label(n.dictionary, n), *where(n)]
            + [signed_text(a.change), signed_text(a.estimate), signed_text(diff), ""]
        )
    assert rows == expected
    flipped = [a.node + 1 for a in pd.ablations if a.change * a.estimate < 0]
    trs = [a for tag, a in PageParser(html.split('id="ablations"')[1].split("</table>")[0]).elements if tag == "tr"]
    assert [n + 1 for n, a in enumerate(trs[1:]) if a.get("class") == "flip"] == flipped and flipped
    for k, t in enumerate(pd.traces):
        rows = table_cells(html, f"trace-{k}")
        ups = sorted(t.upstream, key=lambda u: -abs(u.act_grad))
        assert rows == (
            [
                [NAMES[u.node.dictionary], label(u.node.dictionary, u.node), *where(u.node)]
                + [number_text(u.node.activation), signed_text(u.act_grad), signed_text(u.node.act_grad)]
                for u in ups
            ]
            or [["no upstream nodes"]]
        )
        assert [abs(u.act_grad) for u in ups] == sorted((abs(u.act_grad) for u in t.upstream), reverse=True)
    assert "no traces" in read(site, f"prompts/{prompts(site)[2].slug}.html")


def test_hostile_text_is_escaped(site):
    pages = [f"prompts/{pd.slug}.html" for pd in prompts(site)] + [
        "index.html",
        "features/0/1.html",
        "features/3/2.html",
    ]
    for page in pages:
        html = read(site, page)
        for bad in ("<img", "<svg onload", "<script>alert", "</script><", "\u202e", "\x00", "<script>window"):
            assert bad not in html, (page, bad)
        elements = PageParser(html).elements
        assert not [(t, a) for t, a in elements if t in ("img", "iframe") or any(k.startswith("on") for k in a)]
        assert {a.get("src") for t, a in elements if t == "script"} <= {None, "assets/index-data.js"}
    pd = prompts(site)[0]
    text = PageParser(read(site, f"prompts/{pd.slug}.html"))
    assert visible_text(pd.text) in "".join(text.text)  # the prompt as text, control characters made visible
    assert "\\u202eevil\\u200b" in visible_text(pd.text) and "{{ 7*7 }}" in visible_text(pd.text)


def test_page_size_budget(site):
    sizes = {pd.slug: (site / "prompts" / f"{pd.slug}.html").stat().st_size for pd in prompts(site)}
    print("prompt page sizes (bytes):", sizes)
    assert len(prompts(site)[0].nodes) == 600
    assert max(sizes.values()) <= PAGE_BUDGET, sizes


def test_prompt_page_static_budget():
    """What a prompt page inlines (site.css, feature.css, prompt.css, dom.js, prompt.js, minified) <= 14 KB
    (13 KB before the helpers and rules pages repeated moved to dom.js, site.css and feature.css)."""
    inlined = sum(
        len(static_markup(n).encode()) for n in ("site.css", "feature.css", "prompt.css", "dom.js", "prompt.js")
    )
    print("prompt page static bytes:", inlined)
    assert inlined <= 14 * 1024
    assert "</script" not in static_markup("prompt.js") and "<!--" not in static_markup("prompt.js")


def test_pool_render_is_byte_identical(tmp_path, site, pools):
    pooled = make_site(site.parent, workers=2, name=f"pooled-{tmp_path.name}")
    assert pools == [2]  # the workers render the node pages, with their links back to the prompts
    files = sorted(p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(pooled).as_posix() for p in pooled.rglob("*") if p.is_file())
    assert [f for f in files if (site / f).read_bytes() != (pooled / f).read_bytes()] == []
    assert len([f for f in files if f.startswith("prompts/")]) == len(PROMPTS)
    assert "appears in prompt" in read(pooled, "features/3/2.html")


def test_cache_errors_are_one_line(tmp_path):
    original = write_prompt_cache(tmp_path / "cache")
    cache, cfg = tmp_path / "cache", site_config(tmp_path)

    def fails(change, match: str) -> None:
        bad = copy.deepcopy(original)
        change(bad)
        write_prompts(cache, bad)
        with pytest.raises(SitegenError, match=match):
            render_site(cache, cfg, tmp_path / "site")
        assert not (tmp_path / "site").exists()

    fails(
        lambda b: setattr(b[0].nodes[3], "dictionary", 9),
        r"prompt 0 .*: a node of dictionary 9, which the site does not have; rebuild the cache",
    )
    fails(lambda b: setattr(b[1], "slug", "../evil"), r"prompt 1 \('\.\./evil'\): its slug is not a file name")
    fails(lambda b: setattr(b[2], "slug", b[0].slug), "another prompt has the same slug")
    fails(
        lambda b: setattr(b[0].nodes[0], "key", b[0].nodes[0].position + 1), "a node of 'multi' at position 23, key 24"
    )
    fails(lambda b: b[0].ablations.append(type(b[0].ablations[0])(600, 0.0, 0.0)), "an ablation or trace names a node")
    fails(lambda b: b[1].next_tokens.pop(), "do not fit its 8 tokens")
    fails(lambda b: setattr(b[0].traces[0].upstream[2], "act_grad", float("nan")), "a NaN or infinite number")
    (cache / "prompts.json").write_text('[{"index": 0}]')
    with pytest.raises(SitegenError, match="not prompt data of this sitegen"):
        render_site(cache, cfg, tmp_path / "site")
    write_prompts(cache, original)
    assert render_site(cache, cfg, tmp_path / "site").is_dir()
