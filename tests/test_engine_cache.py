"""The feature cache as files: byte-identical reruns, resuming after a kill,
stale-cache detection, the manifest, memmapped activations, and the helpers."""

from __future__ import annotations

import json
import logging
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import tiny_model, tiny_sae, tiny_tokens, write_project

from sitegen.cache.feature_data import FORMAT_VERSION
from sitegen.cache.files import batch_path, feature_data_from_dict, read_batch, read_json, write_batch
from sitegen.cache.manifest import read_manifest
from sitegen.compute import build_feature_cache, store
from sitegen.compute.activations import capture_activations
from sitegen.compute.rounding import round_sig
from sitegen.compute.stats import dense_histograms, row_histograms
from sitegen.config import load_config
from sitegen.sources import load_sources
from sitegen.sources.dictionaries import SAEDictionary

SEED = random.randrange(10**6)


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def written(files: dict[str, bytes], folder: Path) -> Path:
    """``files`` (as ``files_of`` returns them) written under ``folder``."""
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A project and one complete build of it (the reference bytes)."""
    root = tmp_path_factory.mktemp("project")
    config = write_project(root, seed=SEED, extra={"features": {"feature_batch_size": 16}})
    src = load_sources(load_config(config))
    manifest = build_feature_cache(src, root / "first", progress=False)
    return root, config, src, manifest, files_of(root / "first")


def test_rerun_is_byte_identical_and_portable(built, tmp_path):
    root, _, src, manifest, first = built
    again = build_feature_cache(src, tmp_path / "again", progress=False)
    assert files_of(tmp_path / "again") == first, f"seed={SEED}"
    assert again["stats"]["model_passes"] == 1 and again["stats"]["reused_batches"] == 0
    for name, data in first.items():
        assert str(root).encode() not in data, f"{name} holds an absolute path"
    assert not any(name.startswith("activations") for name in first)


def test_manifest_schema(built):
    root, _, src, manifest, first = built
    on_disk = read_manifest(root / "first")
    assert on_disk["format"] == FORMAT_VERSION and on_disk["complete"] is True
    assert on_disk["fingerprints"] == src.fingerprints
    assert on_disk["batches"] == {"0": 4, "1": 1}  # 64 SAE features and 16 neurons, 16 per batch
    assert [d["name"] for d in on_disk["dictionaries"]] == ["sae", "neurons"]
    assert set(on_disk["stats"]) == {"n_tokens", "n_sequences", "n_nonfinite"}  # no timings on disk
    assert on_disk["stats"]["n_tokens"] == 16 * 23 and on_disk["stats"]["n_sequences"] == 16
    prov = on_disk["provenance"]
    assert prov["model"] == "model" and prov["n_layers"] == 2 and prov["d_model"] == 32
    assert prov["dataset"] == {
        "paths": ["tokens.npy"],
        "context_length": 24,
        "n_sequences": 16,
        "n_tokens": 16 * 24,
        "n_documents": 16,
    }
    assert set(manifest["stats"]) >= {"model_passes", "seconds", "reused_batches"}
    assert {k: v for k, v in manifest.items() if k != "stats"} == {k: v for k, v in on_disk.items() if k != "stats"}
    assert sorted(name for name in first if name.startswith("features")) == [
        "features/0/00000.json",
        "features/0/00001.json",
        "features/0/00002.json",
        "features/0/00003.json",
        "features/1/00000.json",
    ]


def test_resume_reuses_batches_and_is_identical(built, tmp_path, caplog):
    root, _, src, _, first = built
    cache = written(first, tmp_path / "cache")
    gone = [batch_path(cache, 0, 1), batch_path(cache, 0, 3), batch_path(cache, 1, 0)]
    for path in gone:
        path.unlink()
    manifest = json.loads((cache / "manifest.json").read_text())
    (cache / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    (cache / "tokens.json").unlink()
    (cache / "features" / "0" / ".00001.json.123.tmp").write_text("[{half")  # a write cut short
    with caplog.at_level(logging.INFO, logger="sitegen"):
        out = build_feature_cache(src, cache, progress=False)
    assert out["stats"]["reused_batches"] == 2 and out["stats"]["model_passes"] == 1
    assert "reusing 2 of 5 feature batches" in caplog.text
    assert files_of(cache) == first, f"seed={SEED}"
    # nothing missing: nothing recomputed, no model pass
    out = build_feature_cache(src, cache, progress=False)
    assert out["stats"]["model_passes"] == 0 and out["stats"]["reused_batches"] == 5
    assert files_of(cache) == first


KILLER = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from sitegen.compute import feature_shard as writing
from sitegen.compute.engine import build_feature_cache
from sitegen.config import load_config
from sitegen.sources import load_sources
writes = []
real = writing.write_batch
def write_then_die(*args):
    real(*args)
    writes.append(args)
    if len(writes) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
writing.write_batch = write_then_die
build_feature_cache(load_sources(load_config({config!r})), {cache!r}, progress=False)
"""


def test_sigkill_mid_build_then_rerun_is_identical(built, tmp_path):
    root, config, src, _, first = built
    cache = tmp_path / "cache"
    script = KILLER.format(tests=str(Path(__file__).parent), config=str(config), cache=str(cache))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert read_json(cache / "manifest.json")["complete"] is False
    assert len(list((cache / "features").rglob("*.json"))) == 2
    out = build_feature_cache(src, cache, progress=False)
    assert out["stats"]["reused_batches"] == 2
    assert files_of(cache) == first, f"seed={SEED}"


def test_stale_cache_is_detected_and_rebuilt(built, tmp_path, caplog):
    root, config, src, _, first = built
    cache = written(first, tmp_path / "cache")
    # changed input data: the dataset fingerprint changes
    project = tmp_path / "project"
    changed = write_project(project, seed=SEED, extra={"features": {"feature_batch_size": 16}})
    np.save(project / "tokens.npy", tiny_tokens(16, 23, SEED + 1))
    src2 = load_sources(load_config(changed))
    caplog.set_level(logging.INFO, logger="sitegen")
    caplog.clear()
    build_feature_cache(src2, cache, progress=False)
    assert len(caplog.messages) == 1 and "stale" in caplog.text and "changed input: dataset" in caplog.text, (
        caplog.messages
    )
    assert files_of(cache) != first
    fresh = tmp_path / "fresh"
    build_feature_cache(src2, fresh, progress=False)
    assert files_of(cache) == files_of(fresh)
    # changed config section
    src2.config.features.top_examples = 4
    caplog.clear()
    build_feature_cache(src2, cache, progress=False)
    assert "changed config: features.top_examples" in caplog.text, caplog.messages
    # another sitegen version
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["provenance"]["sitegen_version"] = "0.0.1"
    (cache / "manifest.json").write_text(json.dumps(manifest))
    caplog.clear()
    build_feature_cache(src2, cache, progress=False)
    assert "built by sitegen 0.0.1" in caplog.text


def test_memmapped_activations_give_the_same_features(built, tmp_path):
    root, config, _, _, first = built
    src = load_sources(load_config(config))
    src.config.features.activation_cache_mb = 0  # everything over budget: memmaps
    build_feature_cache(src, tmp_path / "cache", progress=False)
    got = files_of(tmp_path / "cache")
    assert {k: v for k, v in got.items() if k != "manifest.json"} == {
        k: v for k, v in first.items() if k != "manifest.json"
    }
    assert not (tmp_path / "cache" / "activations.tmp").exists()


def test_capture_to_memmap_equals_memory(built, tmp_path):
    _, _, src, _, _ = built
    widths = {"blocks.1.hook_resid_pre": 32, "blocks.0.mlp.hook_post": 64}
    mem = capture_activations(src.model, src.data.tokens, widths, 5, 2048, tmp_path, False)
    disk = capture_activations(src.model, src.data.tokens, widths, 3, 0, tmp_path, False)
    assert disk.folder is not None and mem.folder is None and mem.model_passes == 1
    for name in widths:
        torch.testing.assert_close(mem.acts[name], disk.acts[name])
    _, cache = src.model.run_with_cache(src.data.tokens, names_filter=list(widths))
    for name in widths:
        torch.testing.assert_close(mem.acts[name], cache[name].reshape(16 * 24, -1))
    disk.close()
    assert not disk.folder.exists()


def test_batches_round_trip_through_feature_data(built, tmp_path):
    """A batch file read back into FeatureData and written again is the same bytes; direct
    hovers are stored as (coef, loss effect, shift) alone."""
    root, _, _, _, _ = built
    for i, b in ((1, 0), (0, 2)):
        dicts = read_json(batch_path(root / "first", i, b))
        write_batch(tmp_path, i, b, read_batch(batch_path(root / "first", i, b)))
        assert batch_path(tmp_path, i, b).read_bytes() == batch_path(root / "first", i, b).read_bytes()
        stored = [h for d in dicts for e in d["top_examples"] for h in e["hovers"] if h is not None]
        assert stored and all(sorted(h) == ["coef", "loss_effect", "shift"] for h in stored)


def test_hovers_of_every_kind_of_row_round_trip_through_the_cache():
    """The engine's hover rows become one hover type each: DirectHover where coef is finite
    (its numbers rounded to 7 and 4 digits), ListedHover where it is NaN (exact or soft-capped
    effects), None where a number is not finite; each reads back from the cache unchanged."""
    from sitegen.cache.feature_data import DirectHover, ListedHover
    from sitegen.cache.files import _hover, dumps
    from sitegen.compute.effects import HoverTable
    from sitegen.compute.serialise import hovers_of

    g = torch.Generator().manual_seed(SEED)
    n, k = 40, 3
    kind = torch.arange(n) % 4  # 0, 1: direct; 2: listed; 3: not finite
    coef = torch.where(
        kind < 2, torch.randn(n, generator=g) * 10.0 ** torch.randint(-12, 2, (n,), generator=g), float("nan")
    )
    coef[0] = -0.0
    loss = torch.randn(n, generator=g) * 1e-3
    loss[1] = -0.0
    loss[kind == 3] = float("inf")
    shift = torch.randn(n, generator=g) * 1e-4
    table = HoverTable(
        loss,
        torch.randint(0, 50, (n, k), generator=g),
        torch.randn(n, k, generator=g),
        torch.randint(0, 50, (n, k), generator=g),
        torch.randn(n, k, generator=g),
        torch.isfinite(loss),
        coef,
        shift,
    )
    hovers = hovers_of(table)
    expected = {0: DirectHover, 1: DirectHover, 2: ListedHover, 3: type(None)}
    assert [type(h) for h in hovers] == [expected[kd] for kd in kind.tolist()], f"seed {SEED}"
    for i, h in enumerate(hovers):
        if isinstance(h, DirectHover):
            assert h.coef == float(f"{coef[i].item():.7g}") and h.shift == float(f"{shift[i].item():.7g}"), (
                f"seed {SEED}"
            )
        if isinstance(h, ListedHover):
            assert h.top.token_ids == table.top_ids[i].tolist() and len(h.bottom.values) == k, f"seed {SEED}"
        if h is not None:
            assert h.loss_effect == float(f"{loss[i].item():.4g}"), f"seed {SEED}"
            assert _hover(json.loads(dumps(h))) == h, f"seed {SEED}"


def test_tokens_json_holds_exactly_the_shown_tokens(built):
    root, _, src, _, first = built
    shown: set[int] = set()
    for name in first:
        if name.startswith("features"):
            for d in json.loads(first[name]):
                shown.update(feature_data_from_dict(d).token_ids())
    table = {int(t): text for t, text in json.loads(first["tokens.json"]).items()}
    assert table == dict(zip(sorted(shown), src.token_texts(sorted(shown))))


def test_effects_none_has_no_hovers(tmp_path):
    config = write_project(tmp_path, seed=SEED, extra={"features": {"effects": "none"}})
    src = load_sources(load_config(config))
    manifest = build_feature_cache(src, tmp_path / "cache", progress=False)
    assert [d["effects"] for d in manifest["dictionaries"]] == ["none", "none"]
    for i in (0, 1):
        for d in read_json(batch_path(tmp_path / "cache", i, 0)):
            for ex in d["top_examples"]:
                assert ex["hovers"] == [None] * len(ex["token_ids"])
            assert d["logit_top"]["token_ids"]  # logit tables do not need hovers


def test_round_sig_matches_printf():
    x = torch.cat(
        [
            torch.randn(20000, dtype=torch.float64) * 10.0 ** torch.randint(-20, 20, (20000,)),
            torch.tensor([0.0, -0.0, 1000.0, 999.95, 9.9995, 0.001, 1e-25, 123456789.0, 5e-324]),
        ]
    )
    assert round_sig(x).tolist() == [float(f"{v:.4g}") for v in x.tolist()]


def numpy_histogram(v: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(edges, counts) of numpy.histogram(v, bins) for float32 ``v``, also where numpy refuses
    ("Too many bins for data range": a range, or the +-0.5 around one value, under ``bins``
    float32 steps): then by numpy's own definition, its float32 edges (np.linspace, not all
    distinct) and each value in the bin with edges[i] <= v < edges[i + 1], the last one closed."""
    try:
        counts, edges = np.histogram(v, bins)
        return edges.astype(np.float32), counts
    except ValueError as err:
        if not str(err).startswith("Too many bins for data range"):
            raise
    return histogram_by_definition(v, bins)


def histogram_by_definition(v: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """``numpy_histogram`` of a non-empty float32 ``v`` from the definition alone."""
    lo, hi = v.min(), v.max()
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5  # as numpy's _get_outer_edges, then its np.linspace
    edges = np.linspace(lo, hi, bins + 1, endpoint=True, dtype=np.result_type(lo, hi, v))
    idx = np.minimum(np.searchsorted(edges, v, side="right") - 1, bins - 1)
    return edges, np.bincount(idx, minlength=bins)


def test_histograms_match_numpy_on_edges():
    rng = np.random.default_rng(SEED)
    rows, vals = [], []
    up = np.float32(1e6) + np.float32(1e6) * np.finfo(np.float32).eps * np.arange(4, dtype=np.float32)
    for r, kind in enumerate(["ints", "equal", "random", "empty", "single", "single 1e6", "equal 1e6", "ulps 1e6"]):
        v = {
            "ints": np.arange(41, dtype=np.float32),
            "equal": np.full(7, 2.5, np.float32),
            "random": rng.normal(size=300).astype(np.float32),
            "empty": np.zeros(0, np.float32),
            "single": np.array([-3.0], np.float32),
            "single 1e6": np.array([1e6], np.float32),
            "equal 1e6": np.full(5, -1e6, np.float32),
            "ulps 1e6": up[[0, 1, 1, 3, 2]],
        }[kind]
        rows.append(np.full(len(v), r))
        vals.append(v)
    rows_t, vals_t = torch.from_numpy(np.concatenate(rows)), torch.from_numpy(np.concatenate(vals))
    lo = torch.tensor([v.min() if len(v) else 0 for v in vals], dtype=torch.float32)
    hi = torch.tensor([v.max() if len(v) else 0 for v in vals], dtype=torch.float32)
    edges, counts = row_histograms(rows_t, vals_t, len(vals), lo, hi, 40)
    for r, v in enumerate(vals):
        want_edges, want_counts = numpy_histogram(v, 40)
        assert counts[r].tolist() == want_counts.tolist(), f"row {r} seed={SEED}"
        assert edges[r].numpy().tolist() == want_edges.tolist(), f"row {r} seed={SEED}"
        assert counts[r].sum() == len(v) and bool((edges[r, 1:] >= edges[r, :-1]).all()), f"row {r} seed={SEED}"
    for r in (0, 1, 2, 4):  # the definition the reference falls back on is numpy's, where numpy has one
        by_definition, by_numpy = histogram_by_definition(vals[r], 40), np.histogram(vals[r], 40)[::-1]
        assert all(np.array_equal(a, b) for a, b in zip(by_definition, by_numpy)), f"row {r} seed={SEED}"
    # many rows at random scales and offsets, some values on edges, against numpy row by row
    scales = 10.0 ** rng.uniform(-6, 6, size=60)
    many = [(rng.gamma(0.5, size=rng.integers(1, 400)) * s + rng.normal() * s).astype(np.float32) for s in scales]
    many[0] = np.linspace(0, 40, 41, dtype=np.float32)
    rows_t = torch.from_numpy(np.concatenate([np.full(len(v), r) for r, v in enumerate(many)]))
    vals_t = torch.from_numpy(np.concatenate(many))
    lo, hi = torch.tensor([v.min() for v in many]), torch.tensor([v.max() for v in many])
    edges, counts = row_histograms(rows_t, vals_t, len(many), lo, hi, 40)
    for r, v in enumerate(many):
        want_edges, want_counts = numpy_histogram(v, 40)
        assert counts[r].tolist() == want_counts.tolist(), f"row {r} seed={SEED}"
        assert edges[r].numpy().tolist() == want_edges.tolist(), f"row {r} seed={SEED}"
    dense = torch.from_numpy(rng.normal(size=(3, 500)).astype(np.float32))
    dense[0, :41] = torch.arange(41.0)
    edges, counts = dense_histograms(dense, 40)
    for r in range(3):
        want_edges, want_counts = numpy_histogram(dense[r].numpy(), 40)
        assert counts[r].tolist() == want_counts.tolist(), f"dense row {r} seed={SEED}"
        assert edges[r].numpy().tolist() == want_edges.tolist(), f"dense row {r} seed={SEED}"


@pytest.mark.parametrize("architecture", ["standard", "jumprelu", "topk"])
def test_nonzero_activations_in_cache_sized_pieces(architecture, monkeypatch):
    seed = random.randrange(10**6)
    d = SAEDictionary("d", tiny_sae(architecture, seed=seed), tiny_model(), list(range(64)))
    h = torch.randn(300, 32, generator=torch.Generator().manual_seed(seed)) * 2
    monkeypatch.setattr(store, "CPU_ENCODE_ELEMENTS", 64 * 64)  # pieces of 64 rows: 4 whole, 1 short
    row, feat, val = store.nonzero_activations(d, h, "cpu")
    dense = d.encode(h)  # [300, 64] in one piece
    assert torch.equal(torch.stack([row, feat], 1), dense.nonzero()), seed  # token-major, as nonzero()
    assert torch.allclose(val, dense[row, feat], rtol=1e-6, atol=1e-7), seed
    assert len(row) > 64, "fixture SAE should fire"


@pytest.mark.parametrize("budget", ["none", "part", "all"])
def test_activation_store_on_disk_beyond_its_budget(budget, tmp_path, monkeypatch):
    """The store against a dense reference, whether its entries stay in memory, spill to
    disk halfway through the encode or go there from the start; its files go with close()."""
    seed = random.randrange(10**6)
    gen = torch.Generator().manual_seed(seed)
    d = SAEDictionary("d", tiny_sae(seed=seed), tiny_model(), list(range(64)))
    h = torch.randn(300, 32, generator=gen) * 2
    h[17, 3] = float("nan")  # a position left out of the correlations
    counted = torch.rand(300, generator=gen) > 0.1
    monkeypatch.setattr(store, "chunk_rows", lambda width, elements=0: 37)  # 9 encode chunks
    monkeypatch.setattr(store, "PIECE_ENTRIES", 101)  # several pieces in the feature-major sort
    monkeypatch.setattr(store, "GRAM_TOKENS", 64)  # Gram rows over 5 token ranges, the last one short
    dense = d.encode(h)  # [300, 64]
    log_bytes = 12 * int((dense[counted] != 0).sum())
    folder = tmp_path / "scratch"
    budget_bytes = {"none": 0, "part": log_bytes // 3, "all": 10**9}[budget]
    acts = store.SparseActs(d, h, counted, device="cpu", progress=False, budget=budget_bytes, folder=folder)
    assert bool(acts.arrays.files) == (budget != "all"), seed
    keep = counted[:, None] & (dense != 0) & ~dense.isnan()  # [300, 64]
    for f in range(64):
        tok = keep[:, f].nonzero().squeeze(1)
        segment = slice(int(acts.ptr[f]), int(acts.ptr[f + 1]))
        assert torch.equal(acts.csc_tok[segment].long(), tok), (seed, f)
        assert torch.equal(acts.csc_val[segment], dense[tok, f]), (seed, f)
    clean = counted & ~h.isnan().any(1)
    assert torch.equal(acts.clean, clean), seed
    x = torch.where(clean[:, None] & keep, dense, 0.0).double()  # [300, 64] what correlations see
    assert torch.equal(acts.matrix.to_dense(), x), seed
    ids = torch.tensor([3, 17, 40, 63])
    gram, hook_sums = acts.correlation_sums(ids, acts.entries(ids))
    torch.testing.assert_close(gram, x[:, ids].T @ x, rtol=1e-12, atol=1e-12, msg=str(seed))
    h_clean = torch.where(clean[:, None], h, 0.0).double()
    torch.testing.assert_close(hook_sums, x[:, ids].T @ h_clean, rtol=1e-5, atol=1e-5, msg=str(seed))
    acts.close()
    assert not folder.exists(), seed
    ent = acts.entries(torch.arange(64))  # mappings outlive their deleted files
    assert torch.equal(torch.stack([ent.rows, ent.tok]), keep.T.nonzero().T), seed


def test_activation_store_of_a_dictionary_that_never_fires_at_counted_positions(tmp_path):
    d = SAEDictionary("d", tiny_sae(), tiny_model(), list(range(64)))
    for budget in (0, 10**9):
        acts = store.SparseActs(
            d,
            torch.randn(50, 32),
            torch.zeros(50, dtype=torch.bool),
            device="cpu",
            progress=False,
            budget=budget,
            folder=tmp_path / "scratch",
        )
        ent = acts.entries(torch.arange(64))
        assert len(ent.tok) == 0 and acts.ptr.sum() == 0 and acts.matrix.to_dense().abs().sum() == 0
        gram, _ = acts.correlation_sums(torch.arange(64), ent)
        assert gram.shape == (64, 64) and gram.abs().sum() == 0
        acts.close()
        assert not (tmp_path / "scratch").exists()
