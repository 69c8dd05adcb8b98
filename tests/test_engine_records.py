"""NeuronRecord data (FeatureData.records) against numpy over the FULL activation tensor of
tiny random models, fixed and fresh seeds (printed): moments over every counted token, the
top sequences, quantile boundaries of the sequences' largest activations and the per-bin
samples, the random sample, and each record's activations."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import write_project

from sitegen.cache.files import read_features, read_sequences
from sitegen.compute import build_feature_cache
from sitegen.config import load_config
from sitegen.sources import load_sources

SEEDS = [0, random.randrange(10**6)]


def full_activations(src, i: int) -> np.ndarray:
    """[n_seq, ctx, d_sae] float64 activations of dictionary i, 0 at ignored positions."""
    d = src.dictionaries[i]
    tokens = src.data.tokens
    with torch.no_grad():
        _, cache = src.model.run_with_cache(tokens, names_filter=d.hook_name)
        h = cache[d.hook_name].reshape(-1, d.d_in)
        acts = d.encode(h).reshape(*tokens.shape, -1).double().numpy()
    acts[src.data.ignore.numpy()] = 0.0
    return acts


def close(x: float, ref: float, rtol: float = 2e-3, atol: float = 1e-5) -> bool:
    return abs(x - ref) <= atol + rtol * abs(ref)


@pytest.mark.parametrize("seed", SEEDS)
def test_records_against_the_full_activations(tmp_path: Path, seed: int):
    print("seed", seed)
    src = load_sources(load_config(write_project(tmp_path, seed=seed, n_seq=40)))
    build_feature_cache(src, tmp_path / "cache", progress=False)
    rc = src.config.records
    counted = ~src.data.ignore.numpy()
    sequences = read_sequences(tmp_path / "cache")
    for i in range(len(src.dictionaries)):
        acts = full_activations(src, i)
        for fd in read_features(tmp_path / "cache", i):
            r = fd.records
            assert r is not None
            a = acts[:, :, fd.feature]
            x = a[counted]
            mean, var = x.mean(), x.var()
            skew = ((x - mean) ** 3).mean() / var**1.5 if var > 0 else 0.0
            kurt = ((x - mean) ** 4).mean() / var**2 - 3 if var > 0 else 0.0
            got = [r.mean, r.variance, r.skewness, r.kurtosis]
            assert all(close(g, e, rtol=5e-3, atol=1e-4) for g, e in zip(got, [mean, var, skew, kurt])), (i, fd.feature)
            best = np.where(counted, a, -np.inf).max(axis=1)  # [n_seq]
            kth = np.sort(best)[::-1][rc.top - 1]
            assert len(r.top) == rc.top and len({s.seq for s in r.top}) == rc.top
            assert all(best[s.seq] >= kth - 1e-5 for s in r.top), (i, fd.feature)
            maxima = [best[s.seq] for s in r.top]
            assert all(m1 >= m2 - 1e-5 for m1, m2 in zip(maxima, maxima[1:]))
            bounds = np.quantile(best, rc.quantiles)
            assert all(close(g, e) for g, e in zip(r.quantile_boundaries, bounds)), (r.quantile_boundaries, bounds)
            assert len(r.by_quantile) == len(rc.quantiles) + 1
            edges = [-np.inf, *bounds, np.inf]
            for b, group in enumerate(r.by_quantile):
                members = [s for s in range(len(best)) if edges[b] - 1e-5 <= best[s] < edges[b + 1] + 1e-5]
                assert len({s.seq for s in group}) == len(group) <= rc.per_quantile
                assert all(s.seq in members for s in group), (b, [s.seq for s in group])
            assert len(r.random) == rc.random and len({s.seq for s in r.random}) == rc.random
            for rec in (*r.top, *r.random, *(s for g in r.by_quantile for s in g)):
                nz = np.flatnonzero(np.where(counted[rec.seq], a[rec.seq], 0.0))
                assert rec.positions == nz.tolist(), (i, fd.feature, rec.seq)
                assert all(close(v, a[rec.seq, p]) for p, v in zip(rec.positions, rec.values))
                assert sequences[rec.seq] == src.data.tokens[rec.seq].tolist()


def test_records_are_seeded_and_deterministic(tmp_path: Path):
    a = load_sources(load_config(write_project(tmp_path / "a", seed=3, n_seq=40)))
    b = load_sources(load_config(write_project(tmp_path / "b", seed=3, n_seq=40)))
    build_feature_cache(a, tmp_path / "a" / "cache", progress=False)
    build_feature_cache(b, tmp_path / "b" / "cache", progress=False)
    ra = [fd.records for fd in read_features(tmp_path / "a" / "cache", 0)]
    rb = [fd.records for fd in read_features(tmp_path / "b" / "cache", 0)]
    assert ra == rb
    # each feature draws its own random sample (neuron-explainer: independent across neurons)
    samples = {tuple(s.seq for s in r.random) for r in ra if r is not None}
    assert len(samples) > 1


def test_pages_label_each_top_example_with_its_split(tmp_path: Path):
    from site_fixtures import page_json

    from sitegen.render import render_site

    cfg = load_config(write_project(tmp_path, seed=1, n_seq=40))
    src = load_sources(cfg)
    build_feature_cache(src, tmp_path / "cache", progress=False)
    render_site(tmp_path / "cache", cfg, tmp_path / "site", workers=1)
    names = ["train", "calibration", "valid", "test"]
    labelled = 0
    for fd in read_features(tmp_path / "cache", 0):
        data = page_json((tmp_path / "site" / "features" / "0" / f"{fd.feature}.html").read_text(encoding="utf-8"))
        assert fd.records is not None
        order = [r.seq for r in fd.records.top]
        expected = [names[order.index(ex.seq) % 4] if ex.seq in order else None for ex in fd.top_examples]
        assert data["splits"] == expected
        labelled += sum(x is not None for x in expected)
    assert labelled > 0
