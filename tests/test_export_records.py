"""The NeuronRecord export read back by an independent minimal reader written here from
neuron-explainer's field list (activations.py): dataclass tags, NeuronId, whole-window
ActivationRecords (heads: the neuron-viewer's flattened token pairs), moments; the record
counts pass neuron-explainer's split conditions (interleaved, disjoint, covering); every
number against the feature cache."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from fixtures import write_project
from test_config_errors import run_cli

from sitegen.cache.files import batch_files, read_features, read_head_batch, read_sequences, read_token_strings


def slices_for_splits(splits: list[str], per_split: int) -> dict[str, slice]:
    """neuron-explainer's get_slices_for_splits, from its description: equal interleaved subsets."""
    return {name: slice(i, per_split * len(splits), len(splits)) for i, name in enumerate(splits)}


def check_slices(slices: dict[str, slice], n: int) -> None:
    """Disjoint, covering 0..n-1, each split one residue class (neuron-explainer's _check_slices)."""
    seen: list[int] = []
    for s in slices.values():
        seen += list(range(n)[s])
    assert sorted(seen) == list(range(n)) and len(seen) == len(set(seen))
    stride = len(slices)
    assert set(seen) == {i for start in range(stride) for i in range(start, n, stride)}


def read_record(path: Path) -> dict:
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["dataclass_name"] == "NeuronRecord"
    nid = data["neuron_id"]
    assert nid["dataclass_name"] == "NeuronId" and isinstance(nid["layer_index"], int)
    assert isinstance(nid["neuron_index"], int)
    for key in ("mean", "variance", "skewness", "kurtosis"):
        assert isinstance(data[key], float | int)
    records = [*data["most_positive_activation_records"], *data["random_sample"]]
    records += [r for b in data["random_sample_by_quantile"] or [] for r in b]
    for r in records:
        assert r["dataclass_name"] == "ActivationRecord"
        assert all(isinstance(t, str) for t in r["tokens"])
    top, rnd = data["most_positive_activation_records"], data["random_sample"]
    assert len(top) % 4 == 0 and len(rnd) % 3 == 0
    check_slices(slices_for_splits(["train", "calibration", "valid", "test"], len(top) // 4), len(top))
    check_slices(slices_for_splits(["calibration", "valid", "test"], len(rnd) // 3), len(rnd))
    return data


def test_neuron_records_export(monkeypatch, capsys, tmp_path):
    config = write_project(tmp_path, n_kv_heads=2, n_seq=24)
    cfg = yaml.safe_load(config.read_text())
    cfg["dictionaries"].append({"name": "heads", "kind": "attention_heads", "layer": 1})
    cfg["heads"] = {"top_records": 8, "random_records": 6}
    config.write_text(yaml.safe_dump(cfg))
    code, _, err = run_cli(monkeypatch, capsys, "build", "--config", str(config))
    assert code == 0, err
    out = tmp_path / "records"
    code, _, err = run_cli(
        monkeypatch, capsys, "export", "--format", "neuron-records", "--config", str(config), "--out", str(out)
    )
    assert code == 0, err
    cache = tmp_path / ".sitegen-cache"
    strings, sequences = read_token_strings(cache), read_sequences(cache)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.json"))
    assert len(files) == 64 + 16 + 4
    for fd in read_features(cache, 0):  # the SAE on blocks.1.hook_resid_pre: layer 1
        data = read_record(out / "sae" / "1" / f"{fd.feature}.json")
        assert data["neuron_id"] == {"dataclass_name": "NeuronId", "layer_index": 1, "neuron_index": fd.feature}
        r = fd.records
        assert r is not None
        assert [data["mean"], data["variance"], data["skewness"], data["kurtosis"]] == [
            r.mean,
            r.variance,
            r.skewness,
            r.kurtosis,
        ]
        assert data["quantile_boundaries"] == r.quantile_boundaries
        for got, want in zip(data["most_positive_activation_records"], r.top):
            ids = sequences[want.seq]
            assert got["tokens"] == [strings[t] for t in ids]
            dense = [0.0] * len(ids)
            for p, v in zip(want.positions, want.values):
                dense[p] = v
            assert got["activations"] == dense
        assert len(data["random_sample_by_quantile"]) == len(r.by_quantile)
    for hd in read_head_batch(batch_files(cache, 2)[0]):
        data = read_record(out / "heads" / "1" / f"{hd.head}.json")
        assert data["random_sample_by_quantile"] is None and data["quantile_boundaries"] is None
        for got, want in zip(data["most_positive_activation_records"], hd.top_records):
            n = len(got["tokens"])
            assert len(got["activations"]) == n * (n + 1) // 2  # the n-th token's n scalars
            assert got["tokens"] == [strings[t] for t in want.token_ids] and got["activations"] == want.pairs
    # the same bytes on a second export
    again = tmp_path / "again"
    run_cli(monkeypatch, capsys, "export", "--format", "neuron-records", "--config", str(config), "--out", str(again))
    assert all((out / f).read_bytes() == (again / f).read_bytes() for f in files)
