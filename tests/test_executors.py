"""The decomposition every executor shares (shard ranges, storage, resume) and the executor's
config and errors; these need no Ray (the Ray executor is in test_executor_ray*.py)."""

from __future__ import annotations

import random
import sys

import pytest
import yaml
from fixtures import write_project
from shard_fixtures import StopAfter, sharded_project, tree
from test_config_errors import run_cli

from sitegen.compute import build_feature_cache
from sitegen.compute.executors import LocalExecutor
from sitegen.compute.shard_files import feature_groups, token_ranges
from sitegen.config import load_config
from sitegen.sources import load_sources

SEED = random.randrange(10**6)


@pytest.mark.parametrize("seed", [0, SEED])
def test_token_shards_are_whole_model_batches_covering_the_data(seed):
    rng = random.Random(seed)
    for _ in range(200):
        n_seq, size, n = rng.randint(1, 300), rng.randint(1, 40), rng.randint(1, 12)
        shards = token_ranges(n_seq, size, n)
        n_batches = -(-n_seq // size)
        assert len(shards) == min(n, n_batches), (seed, n_seq, size, n)
        assert shards[0][0] == 0 and shards[-1][1] == n_seq
        assert all(a < b for a, b in shards)
        assert all(b == c for (_, b), (c, _) in zip(shards, shards[1:]))
        assert all(a % size == 0 for a, _ in shards), (seed, n_seq, size, n, shards)
        sizes = [b - a for a, b in shards[:-1]]
        assert not sizes or max(sizes) - min(sizes) <= size  # as even as whole batches allow


@pytest.mark.parametrize("seed", [0, SEED])
def test_feature_shards_keep_the_batches_in_order(seed):
    rng = random.Random(seed)
    for _ in range(200):
        pairs = [(rng.randint(0, 3), b) for b in range(rng.randint(0, 30))]
        n = rng.randint(1, 8)
        groups = feature_groups(pairs, n)
        assert [p for g in groups for p in g] == pairs
        assert len(groups) == min(n, len(pairs)) or (not pairs and len(groups) <= 1)
        assert all(groups)


def test_a_stopped_local_build_resumes_from_its_token_shards(tmp_path):
    config = sharded_project(tmp_path, SEED, effects="exact")
    cfg = load_config(config)
    src = load_sources(cfg)
    whole = tmp_path / "whole"
    build_feature_cache(src, whole, progress=False)
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        build_feature_cache(src, cache, progress=False, executor=StopAfter(LocalExecutor(src), "feature shards"))
    assert len(list((cache / "shards.tmp").glob("*/tokens/*"))) == 3
    out = build_feature_cache(src, cache, progress=False)
    assert out["stats"]["model_passes"] == 0, f"seed={SEED}"
    assert tree(cache) == tree(whole), f"seed={SEED}"
    assert not (cache / "shards.tmp").exists()


def test_token_shards_are_a_cache_key_and_the_executor_is_not(tmp_path):
    config = write_project(tmp_path, seed=SEED, extra={"executor": {"token_shards": 2}})
    cfg = load_config(config)
    src = load_sources(cfg)
    build_feature_cache(src, tmp_path / "cache", progress=False)
    cfg.executor.feature_shards, cfg.executor.workers, cfg.executor.num_cpus = 3, 2, 2.0
    assert build_feature_cache(src, tmp_path / "cache", progress=False)["stats"]["model_passes"] == 0
    cfg.executor.token_shards = 3
    assert build_feature_cache(src, tmp_path / "cache", progress=False)["stats"]["model_passes"] == 1


def test_ray_without_ray_installed_is_one_line(monkeypatch, capsys, tmp_path):
    config = write_project(tmp_path, seed=SEED, extra={"executor": {"kind": "ray"}})
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails
    code, out, err = run_cli(monkeypatch, capsys, "build", "--config", str(config))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert 'executor.kind: "ray" needs Ray' in lines[0] and "sitegen-dashboards[ray]" in lines[0], err
    assert not (tmp_path / "site").exists()
    code, out, err = run_cli(monkeypatch, capsys, "build", "--config", str(config), "--executor", "local")
    assert code == 0, err


@pytest.mark.parametrize(
    ("executor", "message"),
    [
        ({"kind": "dask"}, "executor.kind: must be one of 'local' | 'ray'"),
        ({"token_shards": 0}, "executor.token_shards: must be > 0"),
        ({"num_gpus": -1}, "executor: num_cpus and num_gpus must be >= 0"),
        ({"shards": 2}, "executor.shards: unknown key"),
    ],
)
def test_bad_executor_config_is_one_line(monkeypatch, capsys, tmp_path, executor, message):
    config = write_project(tmp_path, seed=0)
    cfg = yaml.safe_load(config.read_text())
    cfg["executor"] = executor
    config.write_text(yaml.safe_dump(cfg))
    code, out, err = run_cli(monkeypatch, capsys, "build", "--config", str(config))
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_address_needs_the_ray_executor(monkeypatch, capsys, tmp_path):
    config = write_project(tmp_path, seed=0)
    code, out, err = run_cli(monkeypatch, capsys, "build", "--config", str(config), "--address", "auto")
    assert code == 2 and "--address: only with --executor ray" in err, err
