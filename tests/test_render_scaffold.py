"""``sitegen init``: the starter project loads, and its workflow's build/check steps work."""

from __future__ import annotations

import shlex
from importlib import metadata

import pytest
import yaml
from packaging.requirements import Requirement
from site_fixtures import DictSpec, write_cache

import sitegen
from sitegen.config import load_config
from sitegen.errors import SitegenError
from sitegen.render import check_site, render_site, scaffold_project
from sitegen.render.scaffold import SCAFFOLD

WORKFLOW = ".github/workflows/sitegen.yml"


def steps(workflow: dict, job: str) -> list[dict]:
    return workflow["jobs"][job]["steps"]


def run_lines(workflow: dict) -> list[str]:
    return [
        line.strip() for step in steps(workflow, "build") for line in step.get("run", "").splitlines() if line.strip()
    ]


def sitegen_command(workflow: dict, name: str) -> list[str]:
    found = [shlex.split(line) for line in run_lines(workflow) if line.startswith(f"sitegen {name}")]
    assert len(found) == 1, run_lines(workflow)
    return found[0]


def test_scaffold_writes_a_loadable_project(tmp_path):
    scaffold_project(tmp_path / "proj")
    files = sorted(p.relative_to(tmp_path / "proj").as_posix() for p in (tmp_path / "proj").rglob("*") if p.is_file())
    assert files == [WORKFLOW, "pages/about.md", "site_config.yaml", "texts/example.txt"]
    cfg = load_config(tmp_path / "proj" / "site_config.yaml")
    assert cfg.model.name == "embedded"
    assert [(d.kind, d.layer) for d in cfg.dictionaries] == [("neurons", 6)]
    assert cfg.site.pages == "pages" and cfg.dataset.paths == ["texts/*.txt"]
    text = (tmp_path / "proj" / "site_config.yaml").read_text()
    assert "# - name: my-sae" in text and "#   kind: sae" in text  # the commented SAE example


def test_scaffold_never_overwrites(tmp_path):
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "about.md").write_text("mine")
    with pytest.raises(SitegenError, match="already exists"):
        scaffold_project(tmp_path)
    assert (tmp_path / "pages" / "about.md").read_text() == "mine"
    assert not (tmp_path / "site_config.yaml").exists()


def test_workflow_builds_checks_and_publishes(tmp_path):
    scaffold_project(tmp_path)
    workflow = yaml.safe_load((tmp_path / WORKFLOW).read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as true
    assert "push" in triggers and "workflow_dispatch" in triggers
    assert workflow["permissions"]["pages"] == "write" and workflow["permissions"]["id-token"] == "write"
    lines = run_lines(workflow)
    torch = next(i for i, line in enumerate(lines) if "torch" in line)
    assert "--index-url https://download.pytorch.org/whl/cpu" in lines[torch]
    assert torch < next(i for i, line in enumerate(lines) if "sitegen-dashboards[demo]" in line)
    uses = {s["uses"].split("@")[0]: s for s in steps(workflow, "build") if "uses" in s}
    site_dir = sitegen_command(workflow, "check")[2]
    assert uses["actions/upload-artifact"]["with"]["path"] == site_dir
    assert uses["actions/upload-pages-artifact"]["with"]["path"] == site_dir
    deploy = workflow["jobs"]["deploy"]
    assert deploy["needs"] == "build" and deploy["environment"]["name"] == "github-pages"
    assert [s["uses"].split("@")[0] for s in deploy["steps"]] == ["actions/deploy-pages"]

    # `sitegen build` / `sitegen check <site>`, through the Python API (the engine's part
    # replaced by a synthetic feature cache)
    assert sitegen_command(workflow, "build") == ["sitegen", "build"]
    cfg = load_config(tmp_path / "site_config.yaml")
    neurons = DictSpec(
        name="mlp-l6", kind="neurons", hook_name="blocks.6.mlp.hook_post", d_sae=2048, feature_ids=tuple(range(4))
    )
    cache = write_cache(tmp_path / cfg.cache, [neurons])
    site = render_site(cache, cfg, cfg.resolve(cfg.out))
    assert site == tmp_path / site_dir
    assert check_site(tmp_path / site_dir) == []
    assert "Reading a feature page" in (site / "about.html").read_text()


def test_workflow_pins_this_version_and_torch_range():
    """The workflow installs exactly this release (and its git alternative names the same tag),
    with CPU torch in the range this release accepts."""
    version = metadata.version("sitegen-dashboards")
    assert sitegen.__version__ == version
    text = (SCAFFOLD / "sitegen.yml").read_text()
    lines = run_lines(yaml.safe_load(text))
    assert f'pip install "sitegen-dashboards[demo]=={version}"' in lines
    assert f'#   pip install "sitegen-dashboards[demo] @ git+https://github.com/<owner>/<repo>@v{version}"' in text
    torch_line = shlex.split(next(line for line in lines if "torch" in line))
    torch = next(r for r in map(Requirement, metadata.requires("sitegen-dashboards")) if r.name == "torch")
    assert Requirement(torch_line[-1]).specifier == torch.specifier
