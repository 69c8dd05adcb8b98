"""``sitegen export`` and ``site.export`` (sitegen/export/), the Neuronpedia layout: every field of
every batch file against the feature cache it was read from (synthetic caches, and one real tiny
build through the CLI, whose densities are also checked against the model's activations),
``frac_nonzero`` exact, byte-identical reruns, atomic replacement, a stale cache refused, the
site's copy and each page's link to its file, and one-line errors for bad values."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import re
import typing
from fractions import Fraction
from pathlib import Path

import pytest
import yaml
from head_fixtures import HeadSpec, write_head_cache
from site_fixtures import DictSpec, site_config, write_cache
from test_config_errors import run_cli

from sitegen.cache.feature_data import FeatureData
from sitegen.cache.files import (
    batch_files,
    dictionary_summaries,
    read_batch,
    read_features,
    read_token_table,
    write_batch,
)
from sitegen.cache.head_data import HEADS_KIND
from sitegen.cache.manifest import read_manifest
from sitegen.config import SiteConfig
from sitegen.errors import SitegenError
from sitegen.export import FORMATS, MARKER, ExportInput, check_format, export_to
from sitegen.export import neuronpedia as np_export
from sitegen.render import check_site, render_site

BATCH_KEYS = {"model_id", "layer", "sae_set", "sae_id_suffix", "features"}
FEATURE_KEYS = {
    "feature_index",
    *(f"neuron_alignment_{k}" for k in ("indices", "values", "l1")),
    *(f"correlated_neurons_{k}" for k in ("indices", "l1", "pearson")),
    *(f"correlated_features_{k}" for k in ("indices", "l1", "pearson")),
    "neg_str",
    "neg_values",
    "pos_str",
    "pos_values",
    "frac_nonzero",
    "freq_hist_data_bar_values",
    "freq_hist_data_bar_heights",
    "logits_hist_data_bar_heights",
    "logits_hist_data_bar_values",
    "n_prompts_total",
    "n_tokens_in_prompt",
    "dataset",
    "decoder_weights_dist",
    "vector",
    "activations",
}
ACTIVATION_KEYS = {"bin_min", "bin_max", "bin_contains", "tokens", "values", "qualifying_token_index"}
# ids past 128 and 256 give several batch files; 2 is dead; the neurons can go negative
SPECS = [
    DictSpec(feature_ids=(0, 1, 2, 5, 127, 128, 300), dead=frozenset({2})),
    DictSpec(name="mlp", kind="neurons", hook_name="blocks.6.mlp.hook_post", feature_ids=(3, 4), negative=True),
]


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def export_input(cache: Path, cfg) -> ExportInput:
    return ExportInput.read(cache, cfg, read_manifest(cache))


@pytest.fixture
def synthetic(tmp_path) -> tuple[Path, object]:
    """A synthetic cache of an SAE, neurons and attention heads, and a config over it."""
    cache = write_head_cache(tmp_path / "cache", SPECS, [HeadSpec()])
    return cache, site_config(tmp_path)


def read_export(folder: Path) -> dict[int, list[dict]]:
    """Batch files by dictionary index, each file checked for its name and key set."""
    out: dict[int, list[dict]] = {}
    for path in sorted(folder.glob("*/batch-*.json")):
        batch = json.loads(path.read_bytes())
        assert set(batch) == BATCH_KEYS, path
        n = int(path.stem.removeprefix("batch-"))
        ids = [f["feature_index"] for f in batch["features"]]
        assert ids == sorted(ids) and all(i // 128 == n for i in ids), (path, ids)
        out.setdefault(int(path.parent.name), []).append(batch)
    return out


def check_feature(f: dict, fd: FeatureData, texts: dict[int, str], dataset: dict) -> None:
    """One exported feature against its FeatureData (sitegen/cache/feature_data.py says what each is)."""
    assert set(f) == FEATURE_KEYS
    assert f["feature_index"] == fd.feature
    for prefix, ranked, second in (
        ("neuron_alignment", fd.neuron_alignment, "values"),
        ("correlated_neurons", fd.correlated_neurons, "pearson"),
        ("correlated_features", fd.correlated_features, "pearson"),
    ):
        assert f[f"{prefix}_indices"] == ranked.ids
        assert f[f"{prefix}_{second}"] == ranked.values
        assert f[f"{prefix}_l1"] == ranked.extra  # L1 share; cosine; the cached second score or []
    assert f["neg_str"] == [texts[t] for t in fd.logit_bottom.token_ids]
    assert f["neg_values"] == fd.logit_bottom.values
    assert f["pos_str"] == [texts[t] for t in fd.logit_top.token_ids]
    assert f["pos_values"] == fd.logit_top.values
    assert f["frac_nonzero"] == (fd.n_active / fd.n_tokens if fd.n_tokens else 0.0)
    for key, hist in (("freq", fd.act_histogram), ("logits", fd.logit_histogram)):
        values, heights = f[f"{key}_hist_data_bar_values"], f[f"{key}_hist_data_bar_heights"]
        if not sum(hist.counts):
            assert values == heights == []
            continue
        assert heights == hist.counts
        # the centres of the cached (decimal) edges, to the nearest float
        mids = [float((Fraction(repr(a)) + Fraction(repr(b))) / 2) for a, b in zip(hist.edges, hist.edges[1:])]
        assert values == mids
        assert all(abs(v - (a + b) / 2) <= 1e-12 * abs(b - a) for v, a, b in zip(values, hist.edges, hist.edges[1:]))
    assert {k: f[k] for k in dataset} == dataset
    assert f["decoder_weights_dist"] == [] and f["vector"] == []
    expected = [(-1, fd.max_act, -1, ex) for ex in fd.top_examples]
    n_nonzero = sum(fd.act_histogram.counts)
    for g in sorted(fd.intervals, key=lambda g: g.upper, reverse=True):
        expected += [(g.lower, g.upper, g.fraction * n_nonzero / fd.n_tokens, ex) for ex in g.examples]
    assert len(f["activations"]) == len(expected)
    for a, (lower, upper, contains, ex) in zip(f["activations"], expected):
        assert set(a) == ACTIVATION_KEYS
        assert (a["bin_min"], a["bin_max"]) == (lower, upper)
        assert math.isclose(a["bin_contains"], contains, rel_tol=5e-4)
        assert a["tokens"] == [texts[t] for t in ex.token_ids]
        assert a["values"] == ex.acts
        q = a["qualifying_token_index"]
        assert q == ex.pos - ex.start and a["values"][q] == ex.acts[ex.pos - ex.start]


def check_export(folder: Path, cache: Path, texts: dict[int, str], dataset: dict, model_id: str) -> int:
    """Every feature of every SAE/neuron dictionary, once, in its batch; heads absent. Returns
    how many features were checked."""
    manifest = read_manifest(cache)
    exported = read_export(folder)
    checked = 0
    for index, summary in enumerate(dictionary_summaries(manifest)):
        if summary.kind == HEADS_KIND:
            assert index not in exported and not (folder / str(index)).exists()
            continue
        batches = exported[index]
        for batch in batches:
            head = {k: batch[k] for k in BATCH_KEYS - {"features"}}
            assert head == {
                "model_id": model_id,
                "layer": summary.layer(),
                "sae_set": summary.name,
                "sae_id_suffix": None,
            }
        features = {f["feature_index"]: f for b in batches for f in b["features"]}
        assert sorted(features) == sorted(set(summary.feature_ids))
        assert sum(len(b["features"]) for b in batches) == len(features)
        for fd in read_features(cache, index):
            check_feature(features[fd.feature], fd, texts, dataset)
            assert np_export.feature_path(summary, index, fd.feature) == f"{index}/batch-{fd.feature // 128}.json"
            checked += 1
    return checked


def test_registry_and_config_names_agree():
    hints = typing.get_type_hints(SiteConfig)
    assert (
        set(typing.get_args(typing.get_args(hints["export"])[0])) == set(FORMATS) == {"neuronpedia", "neuron-records"}
    )
    assert "neuronpedia" in FORMATS and "csv" not in FORMATS
    assert FORMATS["neuronpedia"] is np_export
    with pytest.raises(SitegenError, match=r"^--format: must be one of neuron-records, neuronpedia, got 'csv'$"):
        check_format("csv")
    pytest.importorskip("torch")
    from sitegen.sources.embedded import TL_NAME

    assert np_export.EMBEDDED_MODEL_ID == TL_NAME.split("/")[-1]  # `model: embedded`'s Neuronpedia id


def test_round4_is_the_engines_rounding():
    torch = pytest.importorskip("torch")
    from sitegen.compute.rounding import rounded

    rng = random.Random(0)
    values = [k / n for n in (368, 32768, 10_000_019) for k in rng.sample(range(n), min(n, 2000))]
    values += [rng.uniform(-1, 1) * 10 ** rng.randint(-25, 25) for _ in range(4000)]
    values += [0.00125, 0.5, 1.0, 1e-5, 0.99995, 123456.5]
    assert [np_export.round4(v) for v in values] == rounded(torch.tensor(values, dtype=torch.float64))


def test_fields_against_the_cache(synthetic, tmp_path, caplog):
    cache, cfg = synthetic
    with caplog.at_level(logging.INFO, logger="sitegen"):
        out = export_to("neuronpedia", export_input(cache, cfg), tmp_path / "export")
    assert "neuronpedia export: 'heads' skipped (attention heads have no Neuronpedia layout)" in caplog.text
    assert (out / MARKER).read_text() == "neuronpedia\n"
    assert sorted(p.relative_to(out).as_posix() for p in out.glob("*/*")) == [
        "0/batch-0.json",
        "0/batch-1.json",
        "0/batch-2.json",
        "1/batch-0.json",
    ]
    dataset = {"n_prompts_total": 256, "n_tokens_in_prompt": 128, "dataset": "texts/*.txt"}
    assert check_export(out, cache, read_token_table(cache), dataset, "synthetic-model") == 9
    heads = dictionary_summaries(read_manifest(cache))[2]
    assert np_export.feature_path(heads, 2, 0) is None
    dead = next(f for b in read_export(out)[0] for f in b["features"] if f["feature_index"] == 2)
    assert dead["activations"] == [] and dead["frac_nonzero"] == 0.0


def test_frac_nonzero_is_the_exact_density(tmp_path):
    """frac_nonzero is the cached count of positive activations over the counted tokens, not the
    density rounded to 4 digits (nor SAEDashboard's 0.001 % steps)."""
    rng = random.Random(1)
    cache = write_cache(tmp_path / "cache", SPECS[:2])
    cases = []
    for index in range(2):
        for path in batch_files(cache, index):
            fds = []
            for fd in read_batch(path):
                n_tokens = rng.choice([368, 32768, 999_983])
                n_active = 0 if fd.dead else rng.randrange(1, n_tokens)
                fds.append(
                    dataclasses.replace(fd, n_tokens=n_tokens, n_active=n_active, density=round(n_active / n_tokens, 4))
                )
            write_batch(cache, index, int(path.stem), fds)
            cases += fds
    out = export_to("neuronpedia", export_input(cache, site_config(tmp_path)), tmp_path / "export")
    exported = {
        (b["sae_set"], f["feature_index"]): f for bs in read_export(out).values() for b in bs for f in b["features"]
    }
    finer = 0
    for fd in cases:
        got = exported[(fd.dictionary, fd.feature)]["frac_nonzero"]
        assert got == fd.n_active / fd.n_tokens
        finer += got != fd.density
    assert finer >= 4


def test_reruns_are_byte_identical(synthetic, tmp_path):
    cache, cfg = synthetic
    a = tree(export_to("neuronpedia", export_input(cache, cfg), tmp_path / "a"))
    b = tree(export_to("neuronpedia", export_input(cache, cfg), tmp_path / "nested" / "b"))
    assert a == b and len(a) == 5
    assert tree(export_to("neuronpedia", export_input(cache, cfg), tmp_path / "a")) == a  # replacing in place
    orders: list[list[str]] = []
    json.loads(a["0/batch-0.json"], object_pairs_hook=lambda pairs: orders.append([k for k, _ in pairs]))
    assert orders and all(keys == sorted(keys) for keys in orders)  # every object's keys sorted


def test_failed_export_leaves_the_previous_one(synthetic, tmp_path, monkeypatch):
    cache, cfg = synthetic
    out = export_to("neuronpedia", export_input(cache, cfg), tmp_path / "export")
    before = tree(out)
    calls = []

    def fail_on_the_seventh(fd, texts, dataset):
        calls.append(fd.feature)
        if len(calls) == 7:
            raise OSError(28, "No space left on device")
        return {}

    monkeypatch.setattr(np_export, "feature_json", fail_on_the_seventh)
    with pytest.raises(OSError, match="No space left"):
        export_to("neuronpedia", export_input(cache, cfg), out)
    assert calls == [0, 1, 2, 5, 127, 128, 300]  # batches 0 and 1 were written before the failure
    assert tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "export"]


def test_refuses_a_folder_it_did_not_make(synthetic, tmp_path):
    cache, cfg = synthetic
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "thesis.tex").write_text("precious")
    with pytest.raises(SitegenError, match="not an export made by sitegen"):
        export_to("neuronpedia", export_input(cache, cfg), tmp_path / "docs")
    assert tree(tmp_path / "docs") == {"thesis.tex": b"precious"}
    site = render_site(cache, cfg, tmp_path / "site", workers=1)
    with pytest.raises(SitegenError, match="not an export made by sitegen"):
        export_to("neuronpedia", export_input(cache, cfg), site)
    (tmp_path / "empty").mkdir()
    assert export_to("neuronpedia", export_input(cache, cfg), tmp_path / "empty") == tmp_path / "empty"


def page_links(html: str) -> list[str]:
    block = re.search(r'<p class="exports">(.*?)</p>', html, re.S)
    return re.findall(r'href="([^"]+)"', block.group(1)) if block else []


def check_site_export(site: Path, cache: Path, name: str = "neuronpedia") -> int:
    """Every SAE/neuron page links its feature's batch file, which holds it; head pages link
    nothing; ``sitegen check`` finds every link. Returns how many pages link."""
    assert check_site(site) == []
    linked = 0
    for index, summary in enumerate(dictionary_summaries(read_manifest(cache))):
        for feature in sorted(set(summary.feature_ids)):
            links = page_links((site / "features" / str(index) / f"{feature}.html").read_text(encoding="utf-8"))
            if summary.kind == HEADS_KIND:
                assert links == []
                continue
            assert links == [f"../../export/{name}/{index}/batch-{feature // 128}.json"]
            target = (site / "features" / str(index) / links[0]).resolve()
            assert feature in [f["feature_index"] for f in json.loads(target.read_bytes())["features"]]
            linked += 1
    return linked


def test_site_export_publishes_the_files_and_links_each_page(synthetic, tmp_path):
    cache, cfg = synthetic
    plain = tree(render_site(cache, cfg, tmp_path / "plain", workers=1))
    cfg.site.export = ["neuronpedia", "neuronpedia"]  # listed twice: written once
    site = render_site(cache, cfg, tmp_path / "site", workers=1)
    assert check_site_export(site, cache) == 9
    standalone = tree(export_to("neuronpedia", export_input(cache, cfg), tmp_path / "export"))
    files = tree(site)
    assert {k.removeprefix("export/neuronpedia/"): v for k, v in files.items() if k.startswith("export/")} == standalone
    assert not any(k.startswith("export/") for k in plain)
    # broken: a page's file gone
    (site / "export" / "neuronpedia" / "0" / "batch-2.json").unlink()
    assert any("broken link '../../export/neuronpedia/0/batch-2.json'" in p for p in check_site(site))


def cli_project(root: Path, **site) -> Path:
    """A config file whose synthetic cache was built from it (``sitegen render`` accepts it)."""
    root.mkdir(parents=True, exist_ok=True)
    config = root / "site_config.yaml"
    raw = {
        "dictionaries": [{"name": "sae", "path": "sae"}],
        "dataset": {"paths": ["texts/*.txt"]},
        "site": {"title": "t", **site},
    }
    (root / "sae").mkdir(exist_ok=True)
    config.write_text(yaml.safe_dump(raw))
    from sitegen.config import load_config

    try:
        cfg = load_config(config)
    except SitegenError:  # a bad config: the cache of a good one
        cfg = None
    write_cache(root / ".sitegen-cache", SPECS, config=cfg)
    return config


def one_line_error(code: int, err: str, *needles: str) -> str:
    lines = [line for line in err.splitlines() if not line.startswith("[sitegen]")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_cli_export_default_folder_and_stale_cache(monkeypatch, capsys, tmp_path):
    config = cli_project(tmp_path)
    code, out, err = run_cli(monkeypatch, capsys, "export", "--format", "neuronpedia", "--config", str(config))
    assert code == 0, err
    assert f"neuronpedia export written to {tmp_path / 'export' / 'neuronpedia'}" in out
    written = tree(tmp_path / "export" / "neuronpedia")
    assert sorted(written) == [MARKER, "0/batch-0.json", "0/batch-1.json", "0/batch-2.json", "1/batch-0.json"]
    code, _, err = run_cli(
        monkeypatch, capsys, "export", "--format", "neuronpedia", "--config", str(config), "--out", str(tmp_path / "x")
    )
    assert code == 0 and tree(tmp_path / "x") == written, err
    # the config's feature keys changed since the build: refused, naming them, nothing written
    raw = yaml.safe_load(config.read_text())
    raw["features"] = {"top_examples": 4}
    config.write_text(yaml.safe_dump(raw))
    code, _, err = run_cli(
        monkeypatch, capsys, "export", "--format", "neuronpedia", "--config", str(config), "--out", str(tmp_path / "y")
    )
    one_line_error(code, err, "built from another config", "features.top_examples")
    assert not (tmp_path / "y").exists()
    assert tree(tmp_path / "export" / "neuronpedia") == written


def test_cli_bad_format_and_bad_site_export(monkeypatch, capsys, tmp_path):
    config = cli_project(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, "export", "--format", "csv", "--config", str(config))
    one_line_error(code, err, "--format: must be one of neuron-records, neuronpedia, got 'csv'")
    code, _, err = run_cli(monkeypatch, capsys, "export", "--config", str(config))
    one_line_error(code, err, "--format: must be one of", "got None")
    config = cli_project(tmp_path / "a", export=["neuronpedia", "csv"])
    code, _, err = run_cli(monkeypatch, capsys, "render", "--config", str(config))
    one_line_error(code, err, "site_config.yaml.site.export[1]", "'neuron-records' | 'neuronpedia'", "'csv'")
    config = cli_project(tmp_path / "b", export="neuronpedia")
    code, _, err = run_cli(monkeypatch, capsys, "render", "--config", str(config))
    one_line_error(code, err, "site_config.yaml.site.export", "expected a list of")
    for root in (tmp_path, tmp_path / "a", tmp_path / "b"):
        assert not (root / "site").exists() and not (root / "export").exists()


def test_cli_render_with_site_export(monkeypatch, capsys, tmp_path):
    config = cli_project(tmp_path, export=["neuronpedia"])
    code, _, err = run_cli(monkeypatch, capsys, "render", "--config", str(config))
    assert code == 0, err
    code, out, err = run_cli(monkeypatch, capsys, "check", str(tmp_path / "site"))
    assert code == 0 and "resolve" in out, out + err
    assert check_site_export(tmp_path / "site", tmp_path / ".sitegen-cache") == 9


# ---- one real tiny build through the CLI ----


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A tiny real project built by ``sitegen build`` with ``site.export: [neuronpedia]``."""
    from fixtures import write_project

    import sitegen.cli

    root = tmp_path_factory.mktemp("real")
    config = write_project(root, extra={"site": {"export": ["neuronpedia"]}})
    mp = pytest.MonkeyPatch()
    mp.setattr("sys.argv", ["sitegen", "build", "--config", str(config)])
    try:
        sitegen.cli.main()
    except SystemExit as exc:
        pytest.fail(f"sitegen build exited with {exc.code}")
    finally:
        mp.undo()
    return config


def real_texts(cache: Path) -> dict[int, str]:
    strings = cache / np_export.STRINGS_FILE
    return np_export.read_token_strings(cache) if strings.is_file() else read_token_table(cache)


def test_real_build_publishes_checks_and_matches_the_cache(built, monkeypatch, capsys, tmp_path):
    root, cache = built.parent, built.parent / ".sitegen-cache"
    code, out, err = run_cli(monkeypatch, capsys, "check", str(root / "site"))
    assert code == 0 and "resolve" in out, out + err
    assert check_site_export(root / "site", cache) == 64 + 16
    dataset = {"n_prompts_total": 16, "n_tokens_in_prompt": 24, "dataset": "tokens.npy"}
    assert check_export(root / "site" / "export" / "neuronpedia", cache, real_texts(cache), dataset, "model") == 80
    for n in range(2):  # the standalone export: the site's files, the same bytes on every run
        out_dir = tmp_path / f"e{n}"
        code, _, err = run_cli(
            monkeypatch, capsys, "export", "--format", "neuronpedia", "--config", str(built), "--out", str(out_dir)
        )
        assert code == 0, err
        assert tree(out_dir) == tree(root / "site" / "export" / "neuronpedia")


def test_real_build_frac_nonzero_against_the_model(built):
    torch = pytest.importorskip("torch")
    from test_engine_reference import Reference

    from sitegen.config import load_config
    from sitegen.sources import load_sources

    src = load_sources(load_config(built))
    folder = built.parent / "site" / "export" / "neuronpedia"
    exported = {
        (i, f["feature_index"]): f["frac_nonzero"]
        for i, bs in read_export(folder).items()
        for b in bs
        for f in b["features"]
    }
    n_checked = 0
    for index, d in enumerate(src.dictionaries):
        ref = Reference(src, d)
        for feature in d.feature_ids:
            a, ok = ref.column(feature)
            n_pos, n_tok = int((ok & (a > 0)).sum()), int(ok.sum())
            # activations this close to 0 may fall on either side in the engine's batch shapes
            near_zero = int((ok & (a != 0) & (abs(a) <= 1e-6 * max(float(abs(a).max()), 1e-30))).sum())
            got = exported[(index, feature)]
            assert abs(round(got * n_tok) - n_pos) <= near_zero, (d.name, feature, got, n_pos, n_tok)
            if not near_zero:
                assert got == n_pos / n_tok, (d.name, feature)
                n_checked += 1
    assert torch is not None and n_checked >= 70
