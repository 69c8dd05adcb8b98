"""``sitegen render``, ``export``, ``check``, ``init`` and ``serve`` run without torch or
TransformerLens: each runs in a subprocess where importing them fails. ``render`` and ``export``
refuse a cache built from another config, naming the keys that changed."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import yaml
from site_fixtures import DictSpec, write_cache

from sitegen.config import load_config
from sitegen.render import scaffold_project

HEAVY = ("torch", "transformer_lens", "transformers", "sae_lens")
# a meta-path finder that refuses the heavy packages, then the CLI
SITEGEN_WITHOUT_TORCH = f"""
import sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {HEAVY!r}:
            raise ModuleNotFoundError(f"{{name}} is made unimportable by this test")
sys.meta_path.insert(0, Refuse())
from sitegen.cli import main
main()
"""


def sitegen(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", SITEGEN_WITHOUT_TORCH, *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def project(root: Path) -> Path:
    scaffold_project(root)
    cfg = load_config(root / "site_config.yaml")
    neurons = DictSpec(
        name="mlp-l6", kind="neurons", hook_name="blocks.6.mlp.hook_post", d_sae=2048, feature_ids=tuple(range(4))
    )
    write_cache(root / cfg.cache, [neurons], config=cfg)
    return root


def test_refusing_finder_works():
    result = sitegen("build", cwd=Path.cwd())
    assert result.returncode != 0 and "made unimportable by this test" in result.stderr, result.stderr[-2000:]


def test_render_check_init_without_torch(tmp_path):
    root = project(tmp_path / "proj")
    result = sitegen("render", cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (root / "site" / "features" / "0" / "3.html").is_file()
    result = sitegen("check", "site", cwd=root)
    assert result.returncode == 0 and "resolve" in result.stdout, result.stdout + result.stderr
    result = sitegen("init", "other", cwd=tmp_path)
    assert result.returncode == 0 and (tmp_path / "other" / "site_config.yaml").is_file(), result.stderr


def test_export_without_torch(tmp_path):
    root = project(tmp_path / "proj")
    result = sitegen("export", "--format", "neuronpedia", cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    batch = json.loads((root / "export" / "neuronpedia" / "0" / "batch-0.json").read_text())
    assert [f["feature_index"] for f in batch["features"]] == [0, 1, 2, 3]
    config = root / "site_config.yaml"
    raw = yaml.safe_load(config.read_text())
    raw.setdefault("site", {})["export"] = ["neuronpedia"]  # site keys leave the cache current
    config.write_text(yaml.safe_dump(raw))
    result = sitegen("render", cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (root / "site" / "export" / "neuronpedia" / "0" / "batch-0.json").read_bytes() == (
        root / "export" / "neuronpedia" / "0" / "batch-0.json"
    ).read_bytes()
    result = sitegen("check", "site", cwd=root)
    assert result.returncode == 0 and "resolve" in result.stdout, result.stdout + result.stderr
    raw["features"]["top_examples"] = 3
    config.write_text(yaml.safe_dump(raw))
    result = sitegen("export", "--format", "neuronpedia", "--out", "other", cwd=root)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "features.top_examples" in lines[0], result.stderr
    assert not (root / "other").exists()


def test_serve_without_torch(tmp_path):
    root = project(tmp_path / "proj")
    assert sitegen("render", cwd=root).returncode == 0
    proc = subprocess.Popen(
        [sys.executable, "-c", SITEGEN_WITHOUT_TORCH, "serve", "site", "--port", "0"],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line, line + proc.stderr.read()
        url = line.split()[3]
        with urllib.request.urlopen(url + "index.html", timeout=30) as response:
            assert b'<meta name="generator" content="sitegen">' in response.read()
    finally:
        proc.terminate()
        proc.communicate(timeout=30)  # also closes the pipes


def test_render_refuses_a_cache_of_another_config(tmp_path):
    root = project(tmp_path / "proj")
    config = root / "site_config.yaml"
    # the memory budget and batch size change how a build runs, not what it computes
    text = config.read_text().replace("features:\n", "features:\n  activation_cache_mb: 64\n  feature_batch_size: 32\n")
    config.write_text(text)
    assert "activation_cache_mb: 64" in config.read_text()
    result = sitegen("render", cwd=root)
    assert result.returncode == 0, result.stderr
    config.write_text(config.read_text().replace('features: "0:128"', 'features: "0:64"'))
    result = sitegen("render", cwd=root)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "dictionaries[0].features" in lines[0], lines
    assert "Traceback" not in result.stderr
