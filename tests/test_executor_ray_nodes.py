"""A two-node Ray cluster on this machine (``ray start --head`` and ``ray start --address``, each
with its own temporary folder, both on 127.0.0.1, one CPU each), and ``sitegen build --executor
ray --address`` from another process with a shared storage folder: the same cache and site as
the local executor's. The cluster's processes are stopped at the end (found by its folders)."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from shard_fixtures import local_build, sharded_project, tree
from test_executor_ray import SEED

pytest.importorskip("ray")
RAY = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_processes(*folders: Path) -> None:
    """SIGKILL every process whose command line names one of ``folders``."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if any(str(f) in cmdline for f in folders) and int(pid) != os.getpid():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture
def two_nodes(tmp_path):
    short = Path(tempfile.mkdtemp(prefix="sg-ray-"))  # Ray's socket paths must stay under 107 characters
    head, worker = short / "head", short / "worker"
    token = tmp_path / "ray-token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0"}
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0", "--disable-usage-stats"]
    common += [f"--object-store-memory={100 * 2**20}"]
    try:
        subprocess.run(
            [RAY, "start", "--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={head}", *common],
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        subprocess.run(
            [RAY, "start", f"--address={address}", f"--temp-dir={worker}", *common],
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        for _ in range(60):  # until both nodes are up
            status = subprocess.run([RAY, "status", f"--address={address}"], env=env, capture_output=True, text=True)
            if status.stdout.count(" node_") >= 2:
                break
            time.sleep(1)
        else:
            raise AssertionError(f"the second node did not join: {status.stdout[-1000:]}")
        yield address, env
    finally:
        stop_processes(head, worker)
        shutil.rmtree(short, ignore_errors=True)


def test_two_nodes_share_storage_and_give_the_local_bytes(two_nodes, tmp_path):
    address, env = two_nodes
    config = sharded_project(tmp_path / "project", SEED)
    cache, site = local_build(config, "local")
    cfg = yaml.safe_load(config.read_text())
    cfg.update({"cache": "ray/cache", "out": "ray/site"})
    cfg["executor"].update({"workers": 2, "storage": str(tmp_path / "shared")})
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    sitegen = Path(sys.executable).parent / "sitegen"
    run = subprocess.run(
        [str(sitegen), "build", "--config", str(config), "--executor", "ray", "--address", address],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    root = config.parent / "ray"
    assert tree(root / "cache") == cache, f"seed={SEED}"
    assert tree(root / "site") == site, f"seed={SEED}"
    assert not any((tmp_path / "shared").iterdir())  # the build's shard outputs are removed when done
