"""Bad input catalogue: each case gives one line naming the file/key and the problem,
exit code 2, no traceback, and nothing written."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import yaml
from fixtures import tiny_sae, write_project

from sitegen import cli


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["sitegen", *args])
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def edit(config, change) -> None:
    cfg = yaml.safe_load(config.read_text())
    change(cfg)
    config.write_text(yaml.safe_dump(cfg))


def expect_error(monkeypatch, capsys, config, *needles: str, command: str = "validate") -> str:
    code, out, err = run_cli(monkeypatch, capsys, command, "--config", str(config))
    lines = [line for line in err.splitlines() if not line.startswith("[sitegen]")]
    assert code == 2, (code, out, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not (config.parent / "site").exists(), "nothing may be written on bad input"
    return lines[0]


def test_valid_tiny_config_validates(monkeypatch, capsys, tiny_config):
    code, out, err = run_cli(monkeypatch, capsys, "validate", "--config", str(tiny_config))
    assert code == 0, err
    assert "dictionary 'sae': sae on blocks.1.hook_resid_pre, d_in 32, d_sae 64" in out
    assert "dictionary 'neurons': neurons on blocks.0.mlp.hook_post" in out
    assert "dataset: 16 sequences x 24 tokens" in out and "config OK" in out


def test_yaml_syntax_error(monkeypatch, capsys, tiny_config):
    tiny_config.write_text("model: {name: model\ndataset: [")
    expect_error(monkeypatch, capsys, tiny_config, "site_config.yaml", "YAML syntax error at line")


def test_empty_config(monkeypatch, capsys, tiny_config):
    tiny_config.write_text("")
    expect_error(monkeypatch, capsys, tiny_config, "site_config.yaml", "empty")


def test_unknown_key_suggests_closest(monkeypatch, capsys, tiny_config):
    edit(tiny_config, lambda c: c["dataset"].update(contxt_length=32))
    expect_error(monkeypatch, capsys, tiny_config, "dataset.contxt_length", "did you mean 'context_length'")


@pytest.mark.parametrize(
    "section,key,value,needle",
    [
        ("features", "top_examples", "many", "expected an integer"),
        ("features", "top_examples", 0, "must be > 0"),
        ("dataset", "max_tokens", -5, "must be > 0"),
        ("dataset", "max_document_share", 0, "must be > 0 and <= 1"),
        ("dataset", "max_document_share", 1.5, "must be > 0 and <= 1"),
        ("dataset", "max_document_share", "half", "expected a number"),
        ("features", "context_before", -1, "must be >= 0"),
        ("features", "effects", "sometimes", "must be one of"),
        ("model", "device", 3, "expected a string"),
    ],
)
def test_wrong_type_and_bad_sizes(monkeypatch, capsys, tiny_config, section, key, value, needle):
    edit(tiny_config, lambda c: c.setdefault(section, {}).update({key: value}))
    expect_error(monkeypatch, capsys, tiny_config, f"{section}.{key}", needle)


def test_missing_paths(monkeypatch, capsys, tiny_config):
    edit(tiny_config, lambda c: c["dictionaries"][0].update(path="nowhere"))
    expect_error(monkeypatch, capsys, tiny_config, "dictionaries[0].path", "folder not found")
    edit(tiny_config, lambda c: c["dictionaries"][0].update(path="sae"))
    edit(tiny_config, lambda c: c["dataset"].update(paths=["missing/*.txt"]))
    expect_error(monkeypatch, capsys, tiny_config, "dataset.paths[0]", "no file matches")
    edit(tiny_config, lambda c: c["dataset"].update(paths=["tokens.npy"]))
    edit(tiny_config, lambda c: c["model"].update(name="./no-such-model"))
    expect_error(monkeypatch, capsys, tiny_config, "model.name", "not 'embedded', an existing folder")


def test_sae_width_and_hook_mismatch(monkeypatch, capsys, tiny_config):
    root = tiny_config.parent
    tiny_sae(d_in=16).save_model(root / "narrow")
    edit(tiny_config, lambda c: c["dictionaries"][0].update(path="narrow"))
    expect_error(monkeypatch, capsys, tiny_config, "dictionaries[0]", "d_in 16 != width 32")
    tiny_sae(hook="blocks.7.hook_resid_pre").save_model(root / "deep")
    edit(tiny_config, lambda c: c["dictionaries"][0].update(path="deep"))
    expect_error(monkeypatch, capsys, tiny_config, "blocks.7.hook_resid_pre", "not a hook of the model")


def test_exact_effects_need_a_hook_the_rerun_passes(monkeypatch, capsys, tiny_config):
    """An SAE after the last block: the re-run from its hook would never fire it."""
    tiny_sae(hook="ln_final.hook_normalized").save_model(tiny_config.parent / "final")
    edit(tiny_config, lambda c: c["dictionaries"][0].update(path="final"))
    edit(tiny_config, lambda c: c.setdefault("features", {}).update(effects="exact"))
    expect_error(monkeypatch, capsys, tiny_config, "dictionaries[0]", "ln_final.hook_normalized", "effects 'exact'")
    edit(tiny_config, lambda c: c["features"].update(effects="direct"))
    code, _, err = run_cli(monkeypatch, capsys, "validate", "--config", str(tiny_config))
    assert code == 0, err


def test_feature_ids_out_of_range_and_duplicates(monkeypatch, capsys, tiny_config):
    edit(tiny_config, lambda c: c["dictionaries"][0].update(features=[1, 64]))
    expect_error(monkeypatch, capsys, tiny_config, "dictionaries[0].features", "id 64 is out of range 0..63")
    edit(tiny_config, lambda c: c["dictionaries"][0].update(features="70:80"))
    expect_error(monkeypatch, capsys, tiny_config, "dictionaries[0].features", "outside 0..63")
    edit(tiny_config, lambda c: c["dictionaries"][0].update(features=None))
    edit(tiny_config, lambda c: c["dictionaries"][1].update(name="sae"))
    expect_error(monkeypatch, capsys, tiny_config, "dictionaries[1].name", "duplicate dictionary name 'sae'")


def test_neuron_layer_out_of_range(monkeypatch, capsys, tiny_config):
    edit(tiny_config, lambda c: c["dictionaries"][1].update(layer=5))
    expect_error(monkeypatch, capsys, tiny_config, "dictionaries[1].layer", "outside 0..1")


def test_output_folder_is_a_file(monkeypatch, capsys, tiny_config):
    (tiny_config.parent / "site").write_text("not a folder")
    code, _, err = run_cli(monkeypatch, capsys, "build", "--config", str(tiny_config))
    assert code == 2 and "exists and is not a folder" in err and "Traceback" not in err
    assert (tiny_config.parent / "site").read_text() == "not a folder"


def test_output_folder_not_writable(monkeypatch, capsys, tiny_config):
    code, _, err = run_cli(monkeypatch, capsys, "build", "--config", str(tiny_config), "--out", "/proc/sitegen-site")
    assert code == 2 and "cannot write under /proc" in err and "Traceback" not in err


def test_empty_dataset(monkeypatch, capsys, tiny_config):
    (tiny_config.parent / "empty.jsonl").write_text("")
    edit(tiny_config, lambda c: c["dataset"].update(paths=["empty.jsonl"]))
    expect_error(monkeypatch, capsys, tiny_config, "dataset", "no documents found")


def test_documents_shorter_than_a_window(monkeypatch, capsys, tiny_config):
    docs = [json.dumps({"text": "w1 w2 w3"}), json.dumps({"text": "w4 w5"})]
    (tiny_config.parent / "short.jsonl").write_text("\n".join(docs))
    edit(tiny_config, lambda c: c["dataset"].update(paths=["short.jsonl"]))
    expect_error(
        monkeypatch, capsys, tiny_config, "all 2 documents are shorter than one context window", "longest has 3"
    )


def test_undecodable_bytes(monkeypatch, capsys, tiny_config):
    (tiny_config.parent / "bad.txt").write_bytes(b"w1 w2 \xff\xfe w3")
    edit(tiny_config, lambda c: c["dataset"].update(paths=["bad.txt"]))
    expect_error(monkeypatch, capsys, tiny_config, "bad.txt", "not UTF-8", "offset 6")


def test_bad_jsonl_and_token_arrays(monkeypatch, capsys, tiny_config):
    root = tiny_config.parent
    (root / "x.jsonl").write_text('{"body": "w1 w2"}\n')
    edit(tiny_config, lambda c: c["dataset"].update(paths=["x.jsonl"]))
    expect_error(monkeypatch, capsys, tiny_config, "x.jsonl:1", "no string field 'text'")
    np.save(root / "floats.npy", np.zeros((4, 24), dtype=np.float32))
    edit(tiny_config, lambda c: c["dataset"].update(paths=["floats.npy"]))
    expect_error(monkeypatch, capsys, tiny_config, "floats.npy", "integer token array")
    np.save(root / "big.npy", np.full((4, 23), 10_000, dtype=np.int64))
    edit(tiny_config, lambda c: c["dataset"].update(paths=["big.npy"]))
    expect_error(monkeypatch, capsys, tiny_config, "dataset", "outside the model's vocabulary")


def test_debug_flag_shows_traceback(monkeypatch, capsys, tiny_config):
    tiny_config.write_text("dataset: [")
    monkeypatch.setattr(sys, "argv", ["sitegen", "--debug", "validate", "--config", str(tiny_config)])
    with pytest.raises(Exception, match="YAML syntax error"):
        cli.main()


def test_project_writer_round_trip(tmp_path):
    path = write_project(tmp_path, architecture="jumprelu", neurons=False)
    assert yaml.safe_load(path.read_text())["dictionaries"] == [{"name": "sae", "kind": "sae", "path": "sae"}]


def test_hub_model_fails_fast_offline(monkeypatch, capsys, tiny_config):
    edit(tiny_config, lambda c: c["model"].update(name="gpt2"))
    line = expect_error(monkeypatch, capsys, tiny_config, "model.name", "cannot load 'gpt2'")
    assert "unreachable" in line


def test_cuda_requested_without_gpu(monkeypatch, capsys, tiny_config):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    edit(tiny_config, lambda c: c["model"].update(device="cuda"))
    expect_error(monkeypatch, capsys, tiny_config, "model.device", "no CUDA device")


@pytest.mark.parametrize(
    "entry,key,needle",
    [
        ({}, "dictionaries[2]", "needs 'layer' (one) or 'layers'"),
        ({"layer": 0, "layers": [1]}, "dictionaries[2]", "needs 'layer' (one) or 'layers'"),
        ({"layers": "some"}, "dictionaries[2].layers", 'expected a list of layers or "all"'),
        ({"layers": []}, "dictionaries[2].layers", "expected layers >= 0"),
        ({"layer": 5}, "dictionaries[2].layer", "layer 5 is outside 0..1"),
        ({"layers": [0, 7]}, "dictionaries[2].layers", "layer 7 is outside 0..1"),
        ({"layers": [1, 1]}, "dictionaries[2].layers", "layer 1 is listed twice"),
        ({"layer": 0, "features": [4]}, "dictionaries[2].features", "id 4 is out of range 0..3"),
    ],
)
def test_attention_head_dictionary_errors(monkeypatch, capsys, tiny_config, entry, key, needle):
    edit(tiny_config, lambda c: c["dictionaries"].append({"name": "heads", "kind": "attention_heads", **entry}))
    expect_error(monkeypatch, capsys, tiny_config, key, needle)


def test_layers_only_for_attention_heads(monkeypatch, capsys, tiny_config):
    edit(tiny_config, lambda c: c["dictionaries"][1].update(layers=[0]))
    expect_error(monkeypatch, capsys, tiny_config, "dictionaries[1].layers", "only kind 'attention_heads'")


@pytest.mark.parametrize(
    "prompt,key,needle",
    [
        ({"text": "w1 w2", "target": "w3 w4"}, "prompts[0].target", "is 2 tokens, not one"),
        ({"text": "w1 w2", "target": "w3", "distractor": "w4 w5 w6"}, "prompts[0].distractor", "is 3 tokens"),
        ({"text": "w1 w2", "target": "w3", "distractor": "w3"}, "prompts[0].distractor", "the same token"),
        ({"text": "  ", "target": "w3"}, "prompts[0].text", "the prompt is empty"),
        ({"text": " ".join(["w1"] * 80), "target": "w3"}, "prompts[0].text", "longer than the model's context of 64"),
        ({"text": "w1 w2", "target": "w3", "position": 9}, "prompts[0].position", "outside the prompt's 3 tokens"),
        ({"text": "w1 w2"}, "prompts[0]", "missing required key 'target'"),
    ],
)
def test_prompt_errors(monkeypatch, capsys, tiny_config, prompt, key, needle):
    edit(tiny_config, lambda c: c.update(prompts=[prompt]))
    expect_error(monkeypatch, capsys, tiny_config, key, needle)


@pytest.mark.parametrize(
    ("section", "key", "value", "needle"),
    [
        ("records", "top", 10, "records.top: 10 is not a multiple of 4"),
        ("records", "random", 20, "records.random: 20 is not a multiple of 3"),
        ("records", "quantiles", [0.9, 0.5], "records.quantiles: expected increasing values in (0, 1)"),
        ("heads", "top_records", 6, "heads.top_records: 6 is not a multiple of 4"),
        ("heads", "random_records", 4, "heads.random_records: 4 is not a multiple of 3"),
    ],
)
def test_record_counts_fit_neuron_explainers_splits(monkeypatch, capsys, tiny_config, section, key, value, needle):
    edit(tiny_config, lambda c: c.setdefault(section, {}).update({key: value}))
    expect_error(monkeypatch, capsys, tiny_config, f"site_config.yaml.{needle}")
