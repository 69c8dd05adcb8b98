"""Explanations (site.explanations, sitegen/render/explanations.py): each format read from its
fixture (tests/explanation_fixtures/, written from the formats' public descriptions) to the
exact ids, texts and scores; detection; bad input as one line naming file, line and field
(exit 2 through the CLI, nothing written); pages listing them best first; the index's
explanation column; hostile text that stays text."""

from __future__ import annotations

import gzip
import json
import logging
import shutil
from pathlib import Path

import pytest
import yaml
from fixtures import HOSTILE
from head_fixtures import HeadSpec, write_head_cache
from site_fixtures import PAYLOADS, DictSpec, PageParser, site_config, write_cache
from test_config_errors import expect_error, run_cli

from sitegen.config import load_config
from sitegen.errors import SitegenError
from sitegen.render import render_site
from sitegen.render.explanations import (
    MAX_TEXT_CHARS,
    Explanation,
    Score,
    SiteDictionary,
    clean_text,
    load_explanations,
)

FIXTURES = Path(__file__).parent / "explanation_fixtures"
SPECS = [
    DictSpec(name="sae", hook_name="blocks.6.hook_resid_post", feature_ids=(0, 1, 2, 7)),  # d_sae 4096
    DictSpec(name="mlp", kind="neurons", hook_name="blocks.2.mlp.hook_post", d_sae=2048, feature_ids=(0, 3, 5)),
    DictSpec(name="dense", hook_name="blocks.3.hook_resid_pre", d_sae=64, feature_ids=(0, 1)),
]
DICTS = [
    SiteDictionary("sae", "sae", (6,), 4096, frozenset({0, 1, 2, 7})),
    SiteDictionary("mlp", "neurons", (2,), 2048, frozenset({0, 3, 5})),
]
NEURONPEDIA = {"path": "expl/neuronpedia.json", "dictionary": "sae"}
ENTRIES = ["expl/neuron-explainer.jsonl", NEURONPEDIA, "expl/delphi-run", "expl/plain.yaml", "expl/plain.csv"]
FUZZ_0 = (2 / 3 + 1 / 2) / 2  # delphi-run fuzz, latent 0: TP 2 of P 3, TN 1 of N 2 (one unanswered left out)


def project(root: Path, entries: list):
    """A config at ``root`` whose explanations are ``entries`` (paths under ``root/expl``)."""
    if not (root / "expl").exists():
        shutil.copytree(FIXTURES, root / "expl")
    cfg = site_config(root)
    cfg.site.explanations = entries
    return cfg


def load(root: Path, entries: list, dictionaries: list[SiteDictionary] | None = None) -> dict:
    return load_explanations(project(root, entries), dictionaries or DICTS)


def flat(explanations: dict) -> list[Explanation]:
    return [e for name in explanations for f in sorted(explanations[name]) for e in explanations[name][f]]


def test_neuron_explainer_fixture(tmp_path):
    got = load(tmp_path, ["expl/neuron-explainer.jsonl"])
    assert list(got) == ["mlp"] and sorted(got["mlp"]) == [0, 3, 5]  # layer 2: the one dictionary there
    detail = got["mlp"][3][0].scores[0].detail
    assert "correlation" in detail
    assert got["mlp"][3] == [  # best first: 0.6875 before 0.4123
        Explanation(
            "mlp",
            3,
            'the token ")"',
            (Score(0.6875, "ev_correlation_score", None, detail),),
            None,
            "expl/neuron-explainer.jsonl",
            "neuron-explainer",
            1,
        ),
        Explanation(
            "mlp",
            3,
            "closing brackets of Python calls",
            (Score(0.4123, "ev_correlation_score", None, detail),),
            None,
            "expl/neuron-explainer.jsonl",
            "neuron-explainer",
            1,
        ),
    ]
    (five,) = got["mlp"][5]
    assert (five.text, five.scores, five.score, five.line) == ("indentation after a colon", (), None, 2)
    (zero,) = got["mlp"][0]  # a line without dataclass_name tags, after a blank line
    assert (zero.text, zero.score, zero.line) == ('the word "def"', 0.25, 4)


def test_neuronpedia_fixture_array_and_gzipped_lines(tmp_path):
    got = load(tmp_path, [NEURONPEDIA])
    assert sorted(got["sae"]) == [1, 2, 7]
    (one,) = got["sae"][1]
    assert one.text == "Python keywords such as def and class"
    assert one.explainer == "gpt-4o-mini (oai_token-act-pair)"
    assert [(s.value, s.scorer, s.model) for s in one.scores] == [
        (0.82, "eleuther_fuzz", "claude-4-5-haiku"),
        (0.71, "eleuther_recall", "claude-4-5-haiku"),
    ]
    assert one.score == 0.82 and (one.format, one.line) == ("neuronpedia", None)
    (two,) = got["sae"][2]
    assert [(s.value, s.scorer) for s in two.scores] == [(0.33, "scoreV2")]  # no scores: the legacy scoreV2
    (seven,) = got["sae"][7]
    assert (seven.text, seven.scores, seven.explainer) == ("docstrings", (), None)  # scoreV1 0: its default
    # the same objects as gzipped JSON lines (Neuronpedia's explanations/batch-N.jsonl.gz)
    rows = json.loads((FIXTURES / "neuronpedia.json").read_text())
    (tmp_path / "expl" / "batch-0.jsonl.gz").write_bytes(gzip.compress("\n".join(map(json.dumps, rows)).encode()))
    lines = load(tmp_path, [{"path": "expl/batch-0.jsonl.gz", "dictionary": "sae"}])
    assert [(e.feature, e.text, e.scores, e.line) for e in flat(lines)] == [
        (e.feature, e.text, e.scores, n) for n, e in zip((1, 2, 3), flat(got))
    ]
    # a site dictionary named as the Neuronpedia source needs no `dictionary:`
    named = [SiteDictionary("6-res-jb", "sae", (6,), 4096, frozenset({1, 2, 7}))]
    assert sorted(load(tmp_path, ["expl/neuronpedia.json"], named)["6-res-jb"]) == [1, 2, 7]


def test_delphi_fixture(tmp_path):
    got = load(tmp_path, ["expl/delphi-run"])
    assert sorted(got["sae"]) == [0, 2]  # module layers.6: the one dictionary of layer 6
    (zero,) = got["sae"][0]
    assert zero.text == "numbers and digits in Python code"
    assert zero.explainer == "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4"
    assert [(s.scorer, s.value) for s in zero.scores] == [("detection", 1.0), ("fuzz", FUZZ_0)]  # no embedding
    assert "over the 5 of 6 scored examples" in zero.scores[1].detail
    assert zero.score == 1.0 and (zero.file, zero.format) == ("expl/delphi-run", "delphi")
    (two,) = got["sae"][2]
    assert two.text == 'the word "list" in docstrings'
    assert [(s.scorer, s.value) for s in two.scores] == [("fuzz", 0.5)]  # no non-activating example: (1 + 0) / 2


def test_plain_yaml_and_csv(tmp_path):
    got = load(tmp_path, ["expl/plain.yaml", "expl/plain.csv"])
    (seven,) = got["sae"][7]
    assert (seven.text, seven.scores[0].value, seven.scores[0].scorer) == (
        'Docstring openings, the `"""` after a def line',
        0.9,
        "human rating",
    )
    assert (seven.explainer, seven.line, seven.format) == ("hand-written", 2, "plain")
    (zero,) = got["mlp"][0]
    assert (zero.text, zero.scores, zero.explainer, zero.line) == ("keyword def", (), "a reader", 8)
    (one,) = got["sae"][1]
    assert (one.text, one.score, one.explainer, one.line, one.file) == (
        'says "hello", with commas',
        0.5,
        "csv author",
        2,
        "expl/plain.csv",
    )
    (five,) = got["mlp"][5]
    assert (five.text, five.scores, five.explainer, five.line) == ("indented lines", (), None, 4)  # after a blank line


def test_all_entries_best_first(tmp_path):
    got = load(tmp_path, ENTRIES)
    order = {f: [(e.format, e.score) for e in got["sae"][f]] for f in got["sae"]}
    assert order == {
        0: [("delphi", 1.0)],
        1: [("neuronpedia", 0.82), ("plain", 0.5)],
        2: [("delphi", 0.5), ("neuronpedia", 0.33)],
        7: [("plain", 0.9), ("neuronpedia", None)],
    }
    assert [(e.format, e.score) for e in got["mlp"][0]] == [("neuron-explainer", 0.25), ("plain", None)]


def test_detection_and_named_formats(tmp_path):
    # a folder of files: each detected on its own; the delphi run inside is not a plain folder
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("neuron-explainer.jsonl", "plain.yaml"):
        shutil.copy(FIXTURES / name, folder / name)
    got = load(tmp_path, ["mixed"])
    assert {(e.format, e.file) for e in flat(got)} == {
        ("neuron-explainer", "mixed/neuron-explainer.jsonl"),
        ("plain", "mixed/plain.yaml"),
    }
    assert load(tmp_path, [{"path": "expl/neuron-explainer.jsonl", "format": "neuron-explainer"}]) == load(
        tmp_path, ["expl/neuron-explainer.jsonl"]
    )
    assert load(tmp_path, [{"path": "expl/delphi-run", "format": "delphi"}]) == load(tmp_path, ["expl/delphi-run"])
    (tmp_path / "odd.jsonl").write_text('{"name": "x"}\n')
    with pytest.raises(SitegenError, match=r"odd.jsonl: cannot tell the explanation format .* 'format:'"):
        load(tmp_path, ["odd.jsonl"])
    (tmp_path / "empty.jsonl").write_text("\n")
    assert load(tmp_path, ["empty.jsonl"]) == {}


def one_line(err: pytest.ExceptionInfo, *needles: str) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    for needle in needles:
        assert needle in text, (needle, text)
    return text


def write(root: Path, name: str, text: str) -> str:
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(text)
    return name


NE_LINE = json.loads((FIXTURES / "neuron-explainer.jsonl").read_text().splitlines()[3])


def ne(change) -> str:
    obj = json.loads(json.dumps(NE_LINE))
    change(obj)
    return json.dumps(NE_LINE) + "\n" + json.dumps(obj) + "\n"


PLAIN_ROW = {"dictionary": "sae", "feature": 1, "explanation": "x", "score": 0.5}


def plain(change) -> str:
    row = dict(PLAIN_ROW)
    change(row)
    return yaml.safe_dump([PLAIN_ROW, row], sort_keys=False)


@pytest.mark.parametrize(
    "name, text, needles",
    [
        (
            "a.jsonl",
            ne(lambda o: o["neuron_id"].pop("layer_index")),
            ["a.jsonl: line 2: neuron_id.layer_index: missing"],
        ),
        ("a.jsonl", json.dumps(NE_LINE) + "\n{not json\n", ["a.jsonl: line 2: JSON syntax error"]),
        (
            "a.jsonl",
            ne(lambda o: o["scored_explanations"][0].update(explanation=5)),
            ["line 2: scored_explanations[0].explanation: expected the explanation's text"],
        ),
        (
            "a.jsonl",
            ne(lambda o: o["scored_explanations"][0]["scored_simulation"].update(ev_correlation_score="high")),
            ["line 2: scored_explanations[0].scored_simulation.ev_correlation_score: expected a number"],
        ),
        (
            "a.jsonl",
            ne(lambda o: o.update(dataclass_name="NeuronRecord")),
            ["line 2: dataclass_name: expected 'NeuronSimulationResults'"],
        ),
        (
            "a.jsonl",
            ne(lambda o: o["neuron_id"].update(neuron_index=4096)),
            ["line 2: neuron_id.neuron_index: feature 4096 is out of range ('mlp' has 2,048)"],
        ),
        (
            "a.jsonl",
            ne(lambda o: o["neuron_id"].update(layer_index=6)),
            [
                "line 2: neuron_id.layer_index: neuron 0 is in layer 6,",
                "which the site dictionaries sae, dense all read",
                "'dictionary:'",
            ],
        ),
        (
            "a.jsonl",
            ne(lambda o: o["neuron_id"].update(layer_index=9)),
            ["line 2: neuron_id.layer_index: neuron 0 is in layer 9, which no site dictionary reads", "'dictionary:'"],
        ),
        ("a.json", '[{"layer": "6-res-jb", "index": "1"}]', ["a.json: item 0: description: missing"]),
        (
            "a.json",
            '[{"layer": "6-res-jb", "index": "1", "description": "d", "scores": [{"value": "x"}]}]',
            ["a.json: item 0: scores[0].value: expected a number"],
        ),
        (
            "a.json",
            '[{"layer": "6-res-jb", "index": "one", "description": "d"}]',
            ["a.json: item 0: index: expected a feature id"],
        ),
        (
            "a.yaml",
            plain(lambda r: r.update(feature=4096)),
            ["a.yaml: line 5: feature: feature 4096 is out of range ('sae' has 4,096)"],
        ),
        (
            "a.yaml",
            plain(lambda r: r.update(dictionary="nope")),
            ["a.yaml: line 5: dictionary: no site dictionary 'nope'"],
        ),
        ("a.yaml", plain(lambda r: r.update(feature=-1)), ["a.yaml: line 5: feature: expected a feature id"]),
        ("a.yaml", plain(lambda r: r.pop("explanation")), ["a.yaml: line 5: explanation: missing"]),
        (
            "a.yaml",
            plain(lambda r: r.update(explanation=" \n ")),
            ["a.yaml: line 5: explanation: the explanation is empty"],
        ),
        (
            "a.yaml",
            plain(lambda r: r.update(explantion="y")),
            ["line 5: explantion: unknown field (did you mean 'explanation'?)"],
        ),
        ("a.yaml", plain(lambda r: r.update(score="good")), ["a.yaml: line 5: score: expected a number"]),
        ("a.yaml", "- dictionary: sae\n  feature: [1\n", ["a.yaml: line 3: YAML syntax error"]),
        ("a.yaml", "dictionary: sae\n", ["a.yaml: expected a list of"]),
        ("a.csv", "dictionary,explanation\nsae,x\n", ["a.csv: line 1: feature: missing column"]),
        (
            "a.csv",
            "dictionary,feature,explanation,score\nsae,1,x,0.5\nsae,2,y,lots\n",
            ["a.csv: line 3: score: expected a number"],
        ),
        ("a.csv", "dictionary,feature,explanation\nsae,1\n", ["a.csv: line 2: expected 3 cells"]),
    ],
)
def test_bad_files_are_one_line_errors(tmp_path, name, text, needles):
    dense = SiteDictionary("dense", "sae", (6,), 64, frozenset({0, 1}))
    write(tmp_path, name, text)
    entry = {"path": name, "dictionary": "sae", "format": "neuronpedia"} if name.endswith(".json") else name
    with pytest.raises(SitegenError) as err:
        load(tmp_path, [entry], [*DICTS, dense])
    one_line(err, str(tmp_path / name), *needles)


def test_explanations_of_unbuilt_features_are_skipped(tmp_path, caplog):
    """A dump over a whole dictionary serves a site that builds some of its features: those of
    the others are left out, one message per file saying how many."""
    caplog.set_level(logging.INFO, logger="sitegen")
    full = load(tmp_path, ENTRIES)
    assert not [r for r in caplog.messages if "not built" in r]  # all built: no message
    some = [
        SiteDictionary("sae", "sae", (6,), 4096, frozenset({0, 7})),
        SiteDictionary("mlp", "neurons", (2,), 2048, frozenset({3})),
    ]
    built = {d.name: d.built for d in some}
    caplog.clear()
    got = load(tmp_path, ENTRIES, some)
    kept = {name: {f: v for f, v in features.items() if f in built[name]} for name, features in full.items()}
    assert got == {name: features for name, features in kept.items() if features}
    assert sorted(got["sae"]) == [0, 7] and sorted(got["mlp"]) == [3]
    skipped: dict[str, int] = {}
    for e in flat(full):
        if e.feature not in built[e.dictionary]:
            skipped[e.file] = skipped.get(e.file, 0) + 1
    assert skipped == {  # every format: a file's explanations of built features kept, the others skipped
        "expl/neuron-explainer.jsonl": 2,  # mlp 0, 5
        "expl/neuronpedia.json": 2,  # sae 1, 2
        "expl/delphi-run": 1,  # sae 2
        "expl/plain.yaml": 1,  # mlp 0
        "expl/plain.csv": 2,  # sae 1, mlp 5
    }
    assert sorted(m for m in caplog.messages if "not built" in m) == sorted(
        f"[sitegen] explanations: {file}: {n} explanation{'s' if n != 1 else ''} of features not built in this "
        "site skipped"
        for file, n in skipped.items()
    )


@pytest.mark.parametrize(
    "relative, text, needles",
    [
        ("scores/fuzz/layers.6_latent0.txt", "[{", ["scores/fuzz/layers.6_latent0.txt: JSON syntax error"]),
        (
            "scores/fuzz/layers.6_latent0.txt",
            '[{"activating": true, "prediction": "yes"}]',
            ["scores/fuzz/layers.6_latent0.txt: [0].prediction: expected true, false or null"],
        ),
        (
            "scores/fuzz/layers.6_latent0.txt",
            '[{"activating": true, "prediction": true}, {"prediction": true}]',
            ["scores/fuzz/layers.6_latent0.txt: [1].activating: missing"],
        ),
        ("scores/fuzz/layers.6_latent9.txt", "[]", ["layers.6_latent9.txt: a score without an explanation"]),
        (
            "explanations/layers.6_latent0.txt",
            "plain words",
            ["explanations/layers.6_latent0.txt: expected a JSON string"],
        ),
        (
            "explanations/notes.txt",
            '"x"',
            ["explanations/notes.txt: file name: expected delphi's <module>_latent<N>.txt"],
        ),
        ("explanations/blocks.6.mlp_latent0.txt", '"x"', ["module 'blocks.6.mlp'", "'dictionary:'"]),
        (
            "explanations/layers.6_latent4096.txt",
            '"x"',
            ["explanations/layers.6_latent4096.txt: latent: feature 4096 is out of range ('sae' has 4,096)"],
        ),
    ],
)
def test_bad_delphi_runs_are_one_line_errors(tmp_path, relative, text, needles):
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "delphi-run", run)
    write(run, relative, text)
    dicts = [SiteDictionary("sae", "sae", (6,), 4096, frozenset({0, 2}))]
    if "blocks.6.mlp" in relative:
        dicts.append(SiteDictionary("mlp6", "neurons", (6,), 2048, frozenset({0})))
    with pytest.raises(SitegenError) as err:
        load(tmp_path, ["run"], dicts)
    one_line(err, *needles)


@pytest.mark.parametrize(
    "entry, needles",
    [
        (
            {"path": "expl/plain.yaml", "fromat": "plain"},
            ["site.explanations[0].fromat: unknown key (did you mean 'format'?)"],
        ),
        (
            {"path": "expl/plain.yaml", "format": "yaml"},
            ["site.explanations[0].format: must be one of neuron-explainer"],
        ),
        ({"format": "plain"}, ["site.explanations[0]: missing required key 'path'"]),
        ("expl/none.yaml", ["site.explanations[0].path: not found"]),
        (5, ["site.explanations[0]: expected a path or a mapping"]),
        (
            {"path": "expl/plain.yaml", "dictionary": "nope"},
            ["site.explanations[0].dictionary: no site dictionary 'nope'"],
        ),
        ({"path": "expl/neuronpedia.json"}, ["layer: source '6-res-jb' is no site dictionary", "'dictionary:'"]),
        ({"path": "expl/plain.yaml", "format": "neuronpedia"}, ["plain.yaml: a .yaml file is plain explanations"]),
        ({"path": "expl/plain.yaml", "format": "delphi"}, ["a delphi run is a folder"]),
    ],
)
def test_bad_entries_are_one_line_errors(tmp_path, entry, needles):
    with pytest.raises(SitegenError) as err:
        load(tmp_path, [entry])
    one_line(err, "site_config.yaml" if "site.explanations" in needles[0] else "", *needles)


def test_dictionary_takes_one_foreign_dictionary(tmp_path):
    rows = json.loads((FIXTURES / "neuronpedia.json").read_text())
    rows[2]["layer"] = "12-res-jb"
    write(tmp_path, "np.json", json.dumps(rows))
    with pytest.raises(SitegenError) as err:
        load(tmp_path, [{"path": "np.json", "dictionary": "sae"}])
    one_line(err, "np.json: item 2: layer: source '12-res-jb' after '6-res-jb'")
    lines = (FIXTURES / "neuron-explainer.jsonl").read_text().splitlines()
    moved = json.loads(lines[3])
    moved["neuron_id"]["layer_index"] = 3
    write(tmp_path, "ne.jsonl", json.dumps(moved))
    assert sorted(load(tmp_path, [{"path": "ne.jsonl", "dictionary": "mlp"}])["mlp"]) == [0]  # one layer: fine
    write(tmp_path, "ne.jsonl", "\n".join([*lines[:2], json.dumps(moved)]))
    with pytest.raises(SitegenError) as err:
        load(tmp_path, [{"path": "ne.jsonl", "dictionary": "mlp"}])
    one_line(err, "ne.jsonl: line 3: neuron_id.layer_index: neuron 0 layer 3 after layer 2")


def test_clean_text():
    assert clean_text(" a\n\tb  \u202eevil\u200b\x00 ") == "a b \\u202eevil\\u200b\\u0000"
    long = clean_text("word " * 1000)
    assert len(long) == MAX_TEXT_CHARS and long.endswith("\u2026")


# -- rendered sites -------------------------------------------------------------------------------

HOSTILE_TEXTS = [
    "<script>window.__pwned=1</script>",
    "[click](javascript:window.__pwned=1) <a href='javascript:alert(1)'>a</a>",
    *PAYLOADS,
    *(t for t in HOSTILE if t.strip()),  # a blank explanation is an error, not text
]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("expl-site")
    write_cache(root / "cache", SPECS)
    cfg = project(root, [*ENTRIES, "hostile.yaml"])
    rows = [{"dictionary": "dense", "feature": 0, "explanation": t, "source": t} for t in HOSTILE_TEXTS]
    (root / "hostile.yaml").write_text(yaml.safe_dump(rows))
    return render_site(root / "cache", cfg, root / "site", workers=1)


def explanation_items(html: str) -> list[tuple[str, str]]:
    """(text, meta line) of each listed explanation, in page order."""
    parser = PageParser(html)
    assert parser  # parses
    start = html.find('<ol class="expl-list">')
    if start < 0:
        return []
    body = html[start : html.index("</ol>", start)]
    items = []
    for chunk in body.split("<li>")[1:]:
        p = PageParser(chunk)
        text = "".join(p.text)
        head, _, meta = chunk.partition('<span class="expl-meta">')
        items.append(("".join(PageParser(head).text).strip(), "".join(PageParser(meta).text).strip()))
        assert text
    return items


def test_feature_pages_list_explanations_best_first(site):
    items = explanation_items((site / "features/0/1.html").read_text())
    assert [t for t, _ in items] == ["Python keywords such as def and class", 'says "hello", with commas']
    assert items[0][1] == (
        "0.82 eleuther_fuzz (claude-4-5-haiku) 0.71 eleuther_recall (claude-4-5-haiku) · "
        "gpt-4o-mini (oai_token-act-pair) · expl/neuronpedia.json (neuronpedia)"
    )
    assert items[1][1] == "0.5 score · csv author · expl/plain.csv (plain, line 2)"
    seven = explanation_items((site / "features/0/7.html").read_text())
    assert [m for _, m in seven] == [
        "0.9 human rating · hand-written · expl/plain.yaml (plain, line 2)",
        "no score · expl/neuronpedia.json (neuronpedia)",
    ]
    zero = explanation_items((site / "features/0/0.html").read_text())
    assert zero == [
        (
            "numbers and digits in Python code",
            "1 detection (hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4) 0.583 fuzz "
            "(hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4) · "
            "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4 · expl/delphi-run (delphi)",
        )
    ]
    assert 'class="expl-score" title="delphi&#39;s class-balanced accuracy' in (site / "features/0/0.html").read_text()
    mlp3 = explanation_items((site / "features/1/3.html").read_text())
    assert [t for t, _ in mlp3] == ['the token ")"', "closing brackets of Python calls"]
    assert explanation_items((site / "features/2/1.html").read_text()) == []  # unexplained: no section
    assert 'aria-label="explanations"' not in (site / "features/2/1.html").read_text()


def test_index_data_has_the_best_explanation(site):
    data = json.loads((site / "assets/index-data.js").read_text().removeprefix("window.SITEGEN_INDEX=").strip()[:-1])
    assert data["v"] == 3
    rows = {(data["d"][r], data["id"][r]): (text, score) for r, text, score in data["expl"]}
    assert {k: v for k, v in rows.items() if k[0] < 2} == {
        (0, 0): ("numbers and digits in Python code", 1),
        (0, 1): ("Python keywords such as def and class", 0.82),
        (0, 2): ('the word "list" in docstrings', 0.5),
        (0, 7): ('Docstring openings, the `"""` after a def line', 0.9),
        (1, 0): ('the word "def"', 0.25),
        (1, 3): ('the token ")"', 0.6875),
        (1, 5): ("indentation after a colon", None),
    }
    assert rows[(2, 0)] == (clean_text(HOSTILE_TEXTS[0]), None)
    assert (2, 1) not in rows


def test_hostile_explanations_stay_text(site):
    html = (site / "features/2/0.html").read_text()
    for bad in ("<script>window", "<img", "<svg onload", "<a href='", "\u202e", "\x00", "javascript:alert(1)'>"):
        assert bad not in html.split('<script type="application/json"')[0], bad
    elements = PageParser(html).elements
    assert not [(t, a) for t, a in elements if t in ("img", "iframe") or any(k.startswith("on") for k in a)]
    assert not [a for t, a in elements if t == "a" and "javascript" in (a.get("href") or "")]
    texts = [t for t, _ in explanation_items(html)]
    assert texts == [clean_text(t) for t in HOSTILE_TEXTS]  # every one, as text
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in html
    data_js = (site / "assets/index-data.js").read_text()
    assert "<" not in data_js and ">" not in data_js


def test_head_pages_list_explanations(tmp_path):
    write_head_cache(tmp_path / "cache", head_specs=[HeadSpec()])
    write(tmp_path, "heads.yaml", "- {dictionary: heads, feature: 2, explanation: previous-token head, score: 0.7}\n")
    cfg = site_config(tmp_path)
    cfg.site.explanations = ["heads.yaml"]
    site = render_site(tmp_path / "cache", cfg, tmp_path / "site", workers=1)
    items = explanation_items((site / "features/1/2.html").read_text())
    assert items == [("previous-token head", "0.7 score · heads.yaml (plain, line 1)")]
    assert explanation_items((site / "features/1/1.html").read_text()) == []
    write(tmp_path, "heads.yaml", "- {dictionary: heads, feature: 4, explanation: x}\n")
    with pytest.raises(SitegenError, match=r"heads.yaml: line 1: feature: head 4 is out of range \('heads' has 4\)"):
        render_site(tmp_path / "cache", cfg, tmp_path / "site2", workers=1)


def test_render_loads_explanations_before_writing(tmp_path):
    write_cache(tmp_path / "cache", SPECS)
    write(tmp_path, "bad.yaml", "- {dictionary: sae, feature: 4096, explanation: x}\n")
    cfg = site_config(tmp_path)
    cfg.site.explanations = ["bad.yaml"]
    with pytest.raises(SitegenError, match="out of range"):
        render_site(tmp_path / "cache", cfg, tmp_path / "site")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "cache"]


def cli_project(root: Path, explanations: list) -> Path:
    """A config that ``sitegen render`` accepts for a synthetic cache of SPECS."""
    (root / "sae").mkdir(parents=True)
    config = root / "site_config.yaml"
    cfg = {
        "out": "site",
        "cache": "cache",
        "dictionaries": [{"name": "sae", "path": "sae"}, {"name": "mlp", "kind": "neurons", "layer": 2}],
        "dataset": {"paths": ["texts/*.txt"]},
        "site": {"title": "explained", "explanations": explanations},
    }
    config.write_text(yaml.safe_dump(cfg))
    write_cache(root / "cache", SPECS, config=load_config(config))
    return config


def test_cli_render_with_explanations(monkeypatch, capsys, tmp_path):
    shutil.copytree(FIXTURES, tmp_path / "expl")
    config = cli_project(tmp_path, ENTRIES)
    code, out, err = run_cli(monkeypatch, capsys, "render", "--config", str(config))
    assert code == 0, err
    assert "numbers and digits in Python code" in (tmp_path / "site/features/0/0.html").read_text()
    code, out, _ = run_cli(monkeypatch, capsys, "check", str(tmp_path / "site"))
    assert code == 0, out


@pytest.mark.parametrize(
    "name, text, needles",
    [
        (
            "bad.yaml",
            "- {dictionary: sae, feature: 4096, explanation: x}\n",
            ["bad.yaml: line 1: feature: feature 4096 is out of range"],
        ),
        (
            "bad.yaml",
            "- {dictionary: nope, feature: 1, explanation: x}\n",
            ["bad.yaml: line 1: dictionary: no site dictionary"],
        ),
        (
            "bad.jsonl",
            '{"neuron_id": {"layer_index": 2}, "scored_explanations": []}\n',
            ["bad.jsonl: line 1: neuron_id.neuron_index: missing"],
        ),
        ("bad.csv", "dictionary,feature\nsae,1\n", ["bad.csv: line 1: explanation: missing column"]),
    ],
)
def test_cli_render_rejects_bad_explanations(monkeypatch, capsys, tmp_path, name, text, needles):
    write(tmp_path, name, text)
    config = cli_project(tmp_path, [name])
    expect_error(monkeypatch, capsys, config, str(tmp_path / name), *needles, command="render")


def test_cli_validate_checks_explanations(monkeypatch, capsys, tiny_config):
    root = tiny_config.parent
    write(root, "ok.yaml", "- {dictionary: sae, feature: 3, explanation: fires on w3}\n")
    cfg = yaml.safe_load(tiny_config.read_text())
    cfg["site"]["explanations"] = ["ok.yaml"]
    tiny_config.write_text(yaml.safe_dump(cfg))
    code, out, err = run_cli(monkeypatch, capsys, "validate", "--config", str(tiny_config))
    assert code == 0, err
    assert "explanations: 1 for 1 features (sae: 1)" in out and "config OK" in out
    write(root, "ok.yaml", "- {dictionary: neurons, feature: 20, explanation: x}\n")  # neurons builds 0:16
    code, out, err = run_cli(monkeypatch, capsys, "validate", "--config", str(tiny_config))
    assert code == 0, err
    assert "explanations: 0 for 0 features" in out
    assert "[sitegen] explanations: ok.yaml: 1 explanation of features not built in this site skipped" in err
    write(root, "ok.yaml", "- {dictionary: neurons, feature: 1000000, explanation: x}\n")
    expect_error(monkeypatch, capsys, tiny_config, "ok.yaml: line 1: feature: feature 1000000 is out of range")


def test_pool_render_is_byte_identical(site, tmp_path):
    """Worker processes get the explanations with their SiteWriter: the same bytes as in-process."""
    root = site.parent
    cfg = project(root, [*ENTRIES, "hostile.yaml"])
    pooled = render_site(root / "cache", cfg, tmp_path / "site", workers=2)

    def tree(folder: Path) -> dict[str, bytes]:
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    assert tree(pooled) == tree(site)
