"""``kind: neuron_records``: NeuronRecord folders imported without a model.

- export -> import -> export gives byte-identical files (SAE latents, neurons and attention
  heads of a tiny model), and the import builds and renders with torch unimportable;
- every page's JSON holds exactly the file's records (tokens, values, splits), and says what is
  absent; the index has no density for them (null, never 0);
- a file in OpenAI's public layout (its key order, NaN moments, integer activations, no quantile
  sample) imports, with its explanations (neuron-explainer JSONL) on the right pages;
- a folder of several layers numbers ids as heads are numbered;
- malformed files and folders: one line naming the file and the field, exit 2, nothing written;
- a config mixing a model's dictionaries and an import builds both, resumes, and notices a
  changed file.
"""

from __future__ import annotations

import json
import math
import random
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from fixtures import write_project
from test_cli_torch_free import sitegen

from sitegen.cache.files import batch_files, read_json, read_record_batch
from sitegen.cache.manifest import read_manifest
from sitegen.cache.record_data import RECORDS_KIND, ActivationRecord
from sitegen.config import load_config
from sitegen.export import MARKER, ExportInput, export_to
from sitegen.export.neuron_records import SPLITS_RANDOM, split_of
from sitegen.render.record_page import record_page_json
from sitegen.text import display_text


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def export_of(config: Path, out: Path) -> Path:
    cfg = load_config(config)
    cache = cfg.resolve(cfg.cache)
    return export_to("neuron-records", ExportInput.read(cache, cfg, read_manifest(cache)), out)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """sitegen's own NeuronRecord export of a tiny model's SAE, neurons and heads."""
    from sitegen.compute import build_feature_cache
    from sitegen.sources import load_sources

    root = tmp_path_factory.mktemp("imports")
    dictionaries = [
        {"name": "sae", "kind": "sae", "path": "sae"},
        {"name": "neurons", "kind": "neurons", "layer": 0, "features": "0:16"},
        {"name": "heads", "kind": "attention_heads", "layers": "all"},
    ]
    config = write_project(
        root / "model", extra={"dictionaries": dictionaries, "records": {"top": 8, "random": 6}, "features": {}}
    )
    cfg = load_config(config)
    build_feature_cache(load_sources(cfg), cfg.resolve(cfg.cache), progress=False)
    return export_of(config, root / "export")


def import_project(root: Path, dictionaries: list[dict], **extra) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    raw = {"out": "site", "dictionaries": dictionaries, "site": {"title": "imported"}, **extra}
    (root / "site_config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return root / "site_config.yaml"


def own_import(root: Path, exported: Path, **extra) -> Path:
    names = ("sae", "neurons", "heads")
    return import_project(root, [{"name": n, "kind": RECORDS_KIND, "path": str(exported / n)} for n in names], **extra)


def test_export_import_export_is_identical_without_torch(exported, tmp_path):
    config = own_import(tmp_path / "p", exported, site={"title": "t", "export": ["neuron-records"]})
    result = sitegen("build", cwd=tmp_path / "p")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no model loaded" in result.stderr
    site = tmp_path / "p" / "site"
    assert tree(site / "export" / "neuron-records") == tree(exported)
    assert tree(export_of(config, tmp_path / "again")) == tree(exported)
    assert (exported / MARKER).is_file() and len(tree(exported)) == 64 + 16 + 8 + 1
    result = sitegen("check", "site", cwd=tmp_path / "p")
    assert result.returncode == 0, result.stdout + result.stderr
    result = sitegen("validate", cwd=tmp_path / "p")
    assert result.returncode == 0 and "dictionary 'heads': NeuronRecords imported from" in result.stdout
    assert "8 records to build" in result.stdout and result.stdout.endswith("config OK\n")
    # a rerun reuses every batch and writes the same site
    before = tree(site)
    assert sitegen("build", cwd=tmp_path / "p").returncode == 0
    assert tree(site) == before


def page_data(html: str) -> dict:
    start = html.index('<script type="application/json" id="data">') + len('<script type="application/json" id="data">')
    return json.loads(html[start : html.index("</script>", start)])


def test_pages_hold_the_files_records(exported, tmp_path):
    own_import(tmp_path / "p", exported)
    assert sitegen("build", cwd=tmp_path / "p").returncode == 0
    root = tmp_path / "p"
    cache, site = root / ".sitegen-cache", root / "site"
    index = (site / "assets" / "index-data.js").read_text(encoding="utf-8")
    index_json = json.loads(index[index.index("=") + 1 : index.rindex(";")])
    assert index_json["density"] == [None] * (64 + 16 + 8) and index_json["top"] == [[]] * (64 + 16 + 8)
    checked = 0
    for d, name in enumerate(("sae", "neurons", "heads")):
        for rd in (rd for p in batch_files(cache, d) for rd in read_record_batch(p)):
            file = json.loads((exported / name / rd.source).read_bytes())
            html = (site / "features" / str(d) / f"{rd.feature}.html").read_text(encoding="utf-8")
            data = page_data(html)
            assert data["pairs"] == (name == "heads")
            groups = [file["most_positive_activation_records"], file["random_sample"]]
            groups += file["random_sample_by_quantile"] or []
            assert len(data["groups"]) == len(groups)
            for g, (shown, records) in enumerate(zip(data["groups"], groups)):
                assert len(shown) == len(records)
                for k, (row, rec) in enumerate(zip(shown, records)):
                    ar = ActivationRecord(rec["tokens"], rec["activations"])
                    assert [data["tokens"][t] for t in row[0]] == [display_text(t) for t in rec["tokens"]]
                    assert row[1] == ar.token_values()
                    assert row[3] == (rec["activations"] if name == "heads" else None)
                    split = split_of(k, len(records)) if g == 0 else split_of(k, len(records), SPLITS_RANDOM)
                    assert row[2] == (split if g < 2 else None)
            assert data["scale"] == max(v for r in groups[0] for v in ActivationRecord(**_ar(r)).token_values())
            assert "cannot support it" in html and "logit effects" in html
            for moment in ("mean", "variance", "skewness", "kurtosis"):
                assert f"<dd>{_num(file[moment])}</dd>" in html
            checked += 1
    assert checked == 88


def _ar(rec: dict) -> dict:
    return {"tokens": rec["tokens"], "activations": rec["activations"]}


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def openai_record(layer: int, neuron: int, rng: random.Random, n_tokens: int = 64) -> dict:
    """A NeuronRecord as OpenAI's public collated activations lay it out (its key order, NaN
    moments where not computed, integer zeros, no quantile sample), from the dataclass fields."""

    def record() -> dict:
        tokens = [rng.choice([" the", " cat", "<script>alert(1)</script>", "\u202e", "\n"]) for _ in range(n_tokens)]
        acts = [0 if rng.random() < 0.5 else round(rng.uniform(-1, 10), 3) for _ in tokens]
        return {"dataclass_name": "ActivationRecord", "tokens": tokens, "activations": acts}

    return {
        "dataclass_name": "NeuronRecord",
        "neuron_id": {"dataclass_name": "NeuronId", "layer_index": layer, "neuron_index": neuron},
        "random_sample": [record() for _ in range(6)],
        "random_sample_by_quantile": None,
        "quantile_boundaries": None,
        "mean": math.nan,
        "variance": 1.25,
        "skewness": math.nan,
        "kurtosis": math.nan,
        "most_positive_activation_records": [record() for _ in range(8)],
    }


def write_openai_folder(root: Path, layers: dict[int, list[int]], seed: int) -> Path:
    rng = random.Random(seed)
    for layer, neurons in layers.items():
        for n in neurons:
            path = root / str(layer) / f"{n}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(openai_record(layer, n, rng)))  # Python's json: NaN unquoted
    return root


def test_openai_layout_several_layers_and_explanations(tmp_path):
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    folder = write_openai_folder(tmp_path / "gpt2", {3: [0, 5, 7], 10: [2, 7]}, seed)
    expl = tmp_path / "expl.jsonl"
    lines = [
        {
            "neuron_id": {"layer_index": layer, "neuron_index": n},
            "scored_explanations": [
                {"explanation": f"L{layer} N{n} <script>x</script>", "scored_simulation": {"ev_correlation_score": 0.5}}
            ],
        }
        for layer, n in ((3, 5), (10, 7))
    ]
    expl.write_text("".join(json.dumps(x) + "\n" for x in lines))
    import_project(
        tmp_path / "p",
        [{"name": "gpt2", "kind": RECORDS_KIND, "path": str(folder)}],
        site={"title": "t", "explanations": [str(expl)]},
    )
    result = sitegen("build", cwd=tmp_path / "p")
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = read_manifest(tmp_path / "p" / ".sitegen-cache")
    (summary,) = manifest["dictionaries"]
    # per_layer = 1 + the largest index (7): ids = layer slot * 8 + index
    assert summary["layers"] == [3, 10] and summary["d_sae"] == 16
    assert summary["feature_ids"] == [0, 5, 7, 8 + 2, 8 + 7]
    site = tmp_path / "p" / "site"
    for feature, (layer, n) in {5: (3, 5), 15: (10, 7)}.items():
        html = (site / "features" / "0" / f"{feature}.html").read_text(encoding="utf-8")
        assert f"L{layer} N{n} &lt;script&gt;x&lt;/script&gt;" in html and "<script>x" not in html
        assert f"layer</span> {layer} <span" in html
    html = (site / "features" / "0" / "10.html").read_text(encoding="utf-8")
    assert '<dt title="mean activation' in html and "<dd>–</dd>" in html  # NaN mean: not computed, no number
    assert "<dd>1.25</dd>" in html
    data = page_data(html)
    rd = read_record_batch(batch_files(tmp_path / "p" / ".sitegen-cache", 0)[0])[3]
    assert (rd.layer, rd.index, rd.mean, rd.variance) == (10, 2, None, 1.25)
    assert len(data["groups"]) == 2 and [len(g) for g in data["groups"]] == [8, 6]
    assert data["groups"][0][0][1] == rd.top[0].activations  # integer zeros kept as the file has them


def test_features_and_layer_select(tmp_path):
    folder = write_openai_folder(tmp_path / "f", {0: [0, 1, 2], 1: [0, 1, 2]}, 1)
    cfg = import_project(tmp_path / "p", [{"name": "x", "kind": RECORDS_KIND, "path": str(folder), "layer": 1}])
    from sitegen.imports import record_folders

    (f,) = record_folders(load_config(cfg))
    assert f.layers == [1] and f.feature_ids == [0, 1, 2] and f.files[2] == (1, 2)
    cfg = import_project(tmp_path / "p", [{"name": "x", "kind": RECORDS_KIND, "path": str(folder), "features": "2:5"}])
    (f,) = record_folders(load_config(cfg))
    assert f.feature_ids == [2, 3, 4] and f.files[3] == (1, 0)


def one_line(result: subprocess.CompletedProcess, *needles: str) -> str:
    lines = result.stderr.splitlines()
    errors = [ln for ln in lines if ln.startswith("error")]
    assert result.returncode == 2 and errors == lines[-1:], result.stderr[-2000:]  # one line, the last
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


BAD_FILES = [
    (lambda r: b"{not json", "0/1.json: not JSON"),
    (lambda r: json.dumps([r]).encode(), "0/1.json: expected a NeuronRecord object"),
    (
        lambda r: _with(r, dataclass_name="NeuronSimulationResults"),
        "the file: dataclass_name is 'NeuronSimulationResults'",
    ),
    (lambda r: _with(r, neuron_id={"layer_index": 0, "neuron_index": 2}), "neuron_id: says layer 0 neuron 2"),
    (lambda r: _with(r, neuron_id={"layer_index": 0}), "neuron_id.neuron_index: expected an integer"),
    (lambda r: _with(r, random_sample={}), "random_sample: expected a list of ActivationRecords"),
    (lambda r: _top(r, activations=[1.0]), "most_positive_activation_records[0].activations: 1 values for 64 tokens"),
    (lambda r: _top(r, tokens=[1] * 64), "most_positive_activation_records[0].tokens: expected a list of strings"),
    (
        lambda r: _top(r, activations=[True] * 64),
        "most_positive_activation_records[0].activations[0]: expected a finite",
    ),
    (lambda r: _with(r, variance="big"), "variance: expected a finite number or null, got 'big'"),
    (lambda r: _with(r, quantile_boundaries=3), "quantile_boundaries: expected a list of numbers or null"),
    (lambda r: b"[" * 100_000, "0/1.json: not JSON (nested too deeply)"),
    (lambda r: _with(r, variance="x" * 200_000), "variance: expected a finite number or null, got 'xxx"),
]


def _with(record: dict, **fields) -> bytes:
    return json.dumps({**record, **fields}).encode()


def _top(record: dict, **fields) -> bytes:
    top = [{**record["most_positive_activation_records"][0], **fields}] + record["most_positive_activation_records"][1:]
    return _with(record, most_positive_activation_records=top)


@pytest.mark.parametrize("n", range(len(BAD_FILES)))
def test_malformed_files_give_one_line_and_write_nothing(tmp_path, n):
    make, needle = BAD_FILES[n]
    folder = write_openai_folder(tmp_path / "f", {0: [0, 1]}, n)
    good = json.loads((folder / "0" / "1.json").read_text())
    (folder / "0" / "1.json").write_bytes(make(good))
    import_project(tmp_path / "p", [{"name": "x", "kind": RECORDS_KIND, "path": str(folder)}])
    line = one_line(sitegen("build", cwd=tmp_path / "p"), needle)
    assert str(folder / "0" / "1.json") in line and len(line) < 400  # hostile values are cut
    assert not (tmp_path / "p" / "site").exists()
    one_line(sitegen("validate", cwd=tmp_path / "p"), needle)  # validate reads every file too


def test_bad_folders_and_keys(tmp_path):
    folder = write_openai_folder(tmp_path / "f", {0: [0, 1]}, 0)
    cases = [
        ({"path": str(tmp_path)}, "dictionaries[0].path: " + str(tmp_path) + " has no layer folders"),
        ({"path": str(folder), "layer": 4}, "dictionaries[0].layer: " + str(folder) + " has no folder for layer 4"),
        ({"path": str(folder), "features": [1, 1000]}, "dictionaries[0].features: id 1000 is out of range 0..3"),
        ({"path": str(folder), "features": "5:9"}, "dictionaries[0].features: range '5:9' is empty or outside"),
        ({}, "dictionaries[0].path: kind 'neuron_records' needs 'path'"),
        ({"path": str(folder), "release": "r", "id": "i"}, "kind 'neuron_records' reads 'path' only"),
    ]
    (folder / "0" / "3.json").write_text("{}")
    (tmp_path / "odd" / "01").mkdir(parents=True)
    (tmp_path / "zero" / "0").mkdir(parents=True)
    (tmp_path / "zero" / "-0").mkdir()
    cases += [
        ({"path": str(tmp_path / "odd")}, f"dictionaries[0].path: {tmp_path / 'odd' / '01'}: write the number as 1"),
        ({"path": str(tmp_path / "zero")}, "dictionaries[0].path: "),
        ({"path": str(folder / "0" / "0.json")}, "dictionaries[0].path: folder not found"),
    ]
    cases.append(({"path": str(folder), "features": [0, 2]}, "dictionaries[0].features: id 2: "))
    for entry, needle in cases:
        import_project(tmp_path / "p", [{"name": "x", "kind": RECORDS_KIND, **entry}])
        one_line(sitegen("build", cwd=tmp_path / "p"), needle)
        assert not (tmp_path / "p" / "site").exists()


def test_mixed_with_a_model_resumes_and_notices_a_changed_file(exported, tmp_path):
    config = write_project(tmp_path / "m", neurons=False)
    raw = yaml.safe_load(config.read_text())
    raw["dictionaries"].append({"name": "imported", "kind": RECORDS_KIND, "path": str(exported / "neurons")})
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    from sitegen.cli import cli

    def build() -> str:
        from click.testing import CliRunner

        result = CliRunner().invoke(cli, ["build", "--config", str(config)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    build()
    site = tmp_path / "m" / "site"
    summaries = read_manifest(tmp_path / "m" / ".sitegen-cache")["dictionaries"]
    assert [s["kind"] for s in summaries] == ["sae", RECORDS_KIND]
    assert (site / "features" / "1" / "15.html").is_file() and (site / "features" / "0" / "63.html").is_file()
    assert "imported files" in (site / "index.html").read_text(encoding="utf-8")
    assert export_of(config, tmp_path / "x") and tree(tmp_path / "x" / "imported") == tree(exported / "neurons")
    # a changed record file: the cache is stale, named by its fingerprint
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in (exported / "neurons").rglob("*.json"):
        (copy / p.relative_to(exported / "neurons")).parent.mkdir(parents=True, exist_ok=True)
        (copy / p.relative_to(exported / "neurons")).write_bytes(p.read_bytes())
    raw["dictionaries"][-1]["path"] = str(copy)
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    build()
    rec = read_json(copy / "0" / "3.json")
    rec["mean"] = 123.5
    (copy / "0" / "3.json").write_text(json.dumps(rec))
    from sitegen.imports import record_folders

    cfg = load_config(config)
    (folder,) = record_folders(cfg)
    manifest = read_manifest(tmp_path / "m" / ".sitegen-cache")
    assert manifest["fingerprints"]["dictionary:imported"] != folder.fingerprint()
    build()
    assert "<dd>123.5</dd>" in (site / "features" / "1" / "3.html").read_text(encoding="utf-8")


def test_null_and_nan_boundaries_stay_absent(tmp_path):
    folder = write_openai_folder(tmp_path / "f", {0: [0]}, 3)
    rec = json.loads((folder / "0" / "0.json").read_text())
    rec["quantile_boundaries"], rec["random_sample_by_quantile"] = [None, math.nan, 1.0, 0], [[], [], [], [], []]
    (folder / "0" / "0.json").write_text(json.dumps(rec))
    import_project(tmp_path / "p", [{"name": "x", "kind": RECORDS_KIND, "path": str(folder)}])
    assert sitegen("build", cwd=tmp_path / "p").returncode == 0
    html = (tmp_path / "p" / "site" / "features" / "0" / "0.html").read_text(encoding="utf-8")
    assert "<dd>–, –, 1, 0</dd>" in html and "below –" in html
    out = export_of(tmp_path / "p" / "site_config.yaml", tmp_path / "x")
    assert json.loads((out / "x" / "0" / "0.json").read_bytes())["quantile_boundaries"] == [None, None, 1.0, 0]


def test_explanation_of_a_layer_the_folder_lacks(tmp_path):
    folder = write_openai_folder(tmp_path / "f", {3: [0], 4: [1]}, 5)
    expl = tmp_path / "e.jsonl"
    line = {"neuron_id": {"layer_index": 9, "neuron_index": 0}, "scored_explanations": [{"explanation": "x"}]}
    expl.write_text(json.dumps(line) + "\n")
    entry = {"path": str(expl), "dictionary": "x"}
    import_project(
        tmp_path / "p",
        [{"name": "x", "kind": RECORDS_KIND, "path": str(folder)}],
        site={"title": "t", "explanations": [entry]},
    )
    for command in ("validate", "build"):
        one_line(
            sitegen(command, cwd=tmp_path / "p"), "neuron_id: layer 9 neuron 0 is not in 'x' (layers 3, 4, 2 per layer)"
        )


def test_page_json_schema_on_a_hand_made_record():
    from sitegen.cache.record_data import RecordData

    rd = RecordData(
        "x", 4, 0, 4, "0/4.json",
        top=[ActivationRecord(["a", "b", "c"], [0.0, 2.0, 1.0, 3.0, 0.5, 0.25])],
        random=[], by_quantile=None, quantile_boundaries=None,
        mean=None, variance=None, skewness=None, kurtosis=None,
    )  # fmt: skip
    data = record_page_json(rd, 2, (None, 7))
    # token pairs: token n's n scalars; its value is its largest (a: 0, b: max(2, 1), c: max(3, .5, .25))
    assert data["pairs"] and data["groups"][0][0][1] == [0, 2, 3] and data["scale"] == 3
    assert data["groups"][0][0][2] is None and data["tokens"] == ["a", "b", "c"]  # 1 top record: no split of 4
    assert (data["dictionary"], data["feature"], data["nav"]) == (2, 4, [None, 7])


def per_token_reference(tokens: list[str], values: list[float]) -> list[float]:
    """One value per token, by an explicit double loop: the activation (one value per token) or,
    for token pairs (n(n+1)/2 values, the i-th token's i + 1 in order), the largest of its slice."""
    if len(values) == len(tokens):
        return list(values)
    assert len(values) == len(tokens) * (len(tokens) + 1) // 2
    out, k = [], 0
    for i in range(len(tokens)):
        best = values[k]
        for j in range(1, i + 1):
            best = max(best, values[k + j])
        out.append(best)
        k += i + 1
    return out


def random_record_file(layer: int, index: int, rng: random.Random, pairs: bool) -> dict:
    """A NeuronRecord of random records (token or token-pair), 5 quantile bins and their 4
    boundaries; the largest value planted in the top, random or a quantile record at random."""

    def record() -> dict:
        n = rng.randint(2, 9)
        values = [
            rng.choice([0, round(rng.uniform(-4, 6), 3), rng.uniform(-4, 6)])
            for _ in range(n * (n + 1) // 2 if pairs else n)
        ]
        return {
            "dataclass_name": "ActivationRecord",
            "tokens": [rng.choice(["a", " b", "<c>"]) for _ in range(n)],
            "activations": values,
        }

    groups = {"top": [record() for _ in range(8)], "random": [record() for _ in range(6)]}
    groups["quantile"] = [[record() for _ in range(2)] for _ in range(5)]
    flat = {"top": groups["top"], "random": groups["random"], "quantile": [r for b in groups["quantile"] for r in b]}
    planted = rng.choice(flat[rng.choice(list(flat))])
    planted["activations"][rng.randrange(len(planted["activations"]))] = 10 + rng.random()
    return {
        "dataclass_name": "NeuronRecord",
        "neuron_id": {"dataclass_name": "NeuronId", "layer_index": layer, "neuron_index": index},
        "random_sample": groups["random"],
        "random_sample_by_quantile": groups["quantile"],
        "quantile_boundaries": sorted(rng.uniform(-1, 5) for _ in range(4)),
        "mean": rng.random(),
        "variance": 1.5,
        "skewness": 0,
        "kurtosis": rng.random(),
        "most_positive_activation_records": groups["top"],
    }


def file_records(file: dict) -> list[dict]:
    """A NeuronRecord file's records: top, random, then by quantile."""
    by_quantile = [r for b in file["random_sample_by_quantile"] or [] for r in b]
    return [*file["most_positive_activation_records"], *file["random_sample"], *by_quantile]


def test_token_values_max_and_the_pages_stats_on_random_records(tmp_path):
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    files = {n: random_record_file(0, n, rng, pairs=n % 2 == 1) for n in range(6)}
    for rec in file_records(files[4]):  # file 4: every value negative
        rec["activations"] = [v - 20 for v in rec["activations"]]
    for n, file in files.items():
        (tmp_path / "f" / "0").mkdir(parents=True, exist_ok=True)
        (tmp_path / "f" / "0" / f"{n}.json").write_text(json.dumps(file))
    import_project(tmp_path / "p", [{"name": "x", "kind": RECORDS_KIND, "path": str(tmp_path / "f")}])
    result = sitegen("build", cwd=tmp_path / "p")
    assert result.returncode == 0, result.stderr[-3000:]
    cached = [rd for p in batch_files(tmp_path / "p" / ".sitegen-cache", 0) for rd in read_record_batch(p)]
    assert sorted(rd.feature for rd in cached) == list(files)
    for rd in cached:
        file = files[rd.feature]
        records = file_records(file)
        assert rd.is_pairs() == (rd.feature % 2 == 1), (seed, rd.feature)
        assert len(rd.records()) == len(records) == 24, (seed, rd.feature)
        for got, rec in zip(rd.records(), records):
            assert got.token_values() == per_token_reference(rec["tokens"], rec["activations"]), (seed, rd.feature)
        largest = -math.inf
        for rec in records:
            for v in rec["activations"]:
                largest = max(largest, v)
        assert (largest < 0) == (rd.feature == 4) and rd.max_activation() == largest, (seed, rd.feature, largest)
        html = (tmp_path / "p" / "site" / "features" / "0" / f"{rd.feature}.html").read_text(encoding="utf-8")
        stats = dict(re.findall(r'<dt title="[^"]*">([^<]*)</dt><dd>([^<]*)</dd>', html))
        assert stats["max in records"] == _num(largest), (seed, rd.feature, stats)
        assert stats["quantile boundaries"] == ", ".join(_num(b) for b in file["quantile_boundaries"]), seed
