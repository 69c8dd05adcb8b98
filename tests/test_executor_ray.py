"""The Ray executor against the local one, on a local Ray instance this module starts
(2 CPUs, 127.0.0.1, no dashboard): the same shards give the same cache and site, byte for byte,
also when a worker process is killed mid-build. The two-node case is in test_executor_ray_nodes.py.
"""

from __future__ import annotations

import os
import random
import signal
from functools import partial
from pathlib import Path

import pytest
import yaml
from shard_fixtures import StopAfter, local_build, sharded_project, tree
from test_config_errors import run_cli

from sitegen.compute import build_feature_cache
from sitegen.compute.executors import RayExecutor
from sitegen.config import load_config
from sitegen.render import render_site
from sitegen.sources import load_sources

ray = pytest.importorskip("ray")

SEED = random.randrange(10**6)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network


@pytest.fixture(scope="module")
def local_ray():
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        object_store_memory=100 * 2**20,
        log_to_driver=False,
    )
    yield
    ray.shutdown()


def test_ray_build_equals_local_build(local_ray, tmp_path, monkeypatch, capsys):
    config = sharded_project(tmp_path, SEED)
    cache, site = local_build(config, "local")
    cfg = yaml.safe_load(config.read_text())
    cfg.update({"cache": "ray/cache", "out": "ray/site"})
    cfg["executor"]["workers"] = 2
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    code, out, err = run_cli(monkeypatch, capsys, "build", "--config", str(config), "--executor", "ray")
    assert code == 0, err
    assert "token shards" in err and "hovers" in err, err  # progress: shards done / total per stage
    assert tree(tmp_path / "ray" / "cache") == cache, f"seed={SEED}"
    assert tree(tmp_path / "ray" / "site") == site, f"seed={SEED}"
    assert not (tmp_path / "ray" / "cache" / "shards.tmp").exists()


def die_once(fn, marker: str, src, bp, k):
    """``fn``, but the first call with k == 1 kills its own worker process (SIGKILL)."""
    if k == 1 and not os.path.exists(marker):
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return fn(src, bp, k)


class DyingWriter:
    """A page writer whose first batch file of dictionary 1 kills its worker process (SIGKILL)."""

    def __init__(self, make_writer, marker: str):
        self.inner, self.marker = make_writer(), marker

    def write_batch(self, index, path):
        if index == 1 and not os.path.exists(self.marker):
            Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return self.inner.write_batch(index, path)


class Killing(RayExecutor):
    """Kills a worker in shard 1 of every stage, and in the pages, once each."""

    def __init__(self, *args, folder: Path):
        super().__init__(*args)
        self.folder = folder

    def map(self, name, fn, bp, items, progress):
        marker = str(self.folder / name.replace(" ", "-"))
        return super().map(name, partial(by_value(die_once), fn, marker), bp, items, progress)

    def write_batches(self, tasks, make_writer):
        dying = partial(by_value(DyingWriter), make_writer, str(self.folder / "pages"))
        return super().write_batches(tasks, dying)


def by_value(fn):
    """``fn`` pickled with its code (the workers cannot import this test module)."""
    ray.cloudpickle.register_pickle_by_value(__import__(fn.__module__))
    return fn


def test_killed_workers_are_retried_and_the_bytes_stay_the_same(local_ray, tmp_path):
    config = sharded_project(tmp_path, SEED, effects="exact")
    cache, site = local_build(config, "local")
    cfg = load_config(config)
    killed = tmp_path / "killed"
    killed.mkdir()
    executor = Killing(cfg, 2, folder=killed)
    try:
        src = load_sources(cfg)
        build_feature_cache(src, tmp_path / "ray" / "cache", progress=False, executor=executor)
        render_site(tmp_path / "ray" / "cache", cfg, tmp_path / "ray" / "site", pool=executor)
    finally:
        executor.close()
    assert sorted(p.name for p in killed.iterdir()) == ["feature-shards", "hovers", "pages", "token-shards", "writing"]
    assert tree(tmp_path / "ray" / "cache") == cache, f"seed={SEED}"
    assert tree(tmp_path / "ray" / "site") == site, f"seed={SEED}"


def test_a_rerun_reuses_finished_shards(local_ray, tmp_path):
    """Shards left in storage by a build that stopped after its token shards are reused."""
    config = sharded_project(tmp_path, SEED)
    cache, _ = local_build(config, "local")
    cfg = load_config(config)
    cfg.executor.storage = str(tmp_path / "storage")
    src = load_sources(cfg)
    executor = RayExecutor(cfg, 3)
    try:
        stopped = StopAfter(executor, "token shards")
        with pytest.raises(KeyboardInterrupt):
            build_feature_cache(src, tmp_path / "ray" / "cache", progress=False, executor=stopped)
        assert len(list((tmp_path / "storage").glob("*/tokens/*"))) == 3
        out = build_feature_cache(src, tmp_path / "ray" / "cache", progress=False, executor=executor)
    finally:
        executor.close()
    assert out["stats"]["model_passes"] == 0  # every token shard was reused
    assert tree(tmp_path / "ray" / "cache") == cache, f"seed={SEED}"
    assert not any((tmp_path / "storage").iterdir())
