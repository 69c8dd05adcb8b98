"""Attention-head records against brute force over TransformerLens ``run_with_cache`` on tiny
random models (plain and grouped-query attention), fixed and fresh seeds (printed on failure):
every stored pair scalar, the kept keys and their rest, the per-token summaries, the head
summary, the top records' ranking, the seeded random sample; and the neuron-viewer's
normalisation on random ragged records."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch
import yaml
from fixtures import write_project

from sitegen.cache.files import batch_files, read_head_batch, read_token_table
from sitegen.cache.head_data import SCALARS, HeadData, HeadRecord, PairScalars
from sitegen.compute import build_feature_cache
from sitegen.compute.head_records import maxima
from sitegen.compute.heads import causal, token_summaries
from sitegen.config import load_config
from sitegen.sources import load_sources

SEEDS = [0, random.randrange(10**6)]
RTOL, ATOL = 1.5e-3, 1e-5  # 4 significant digits, float32 sums in another order


def close(x: float, ref: float) -> bool:
    return abs(x - ref) <= ATOL + RTOL * abs(ref)


def head_project(tmp_path: Path, seed: int, *, n_kv_heads: int | None = None, heads: dict | None = None, **entry):
    path = write_project(tmp_path, seed=seed, n_seq=20, n_kv_heads=n_kv_heads, extra={"heads": heads or {}})
    cfg = yaml.safe_load(path.read_text())
    cfg["dictionaries"].append({"name": "heads", "kind": "attention_heads", **(entry or {"layers": "all"})})
    path.write_text(yaml.safe_dump(cfg))
    return load_sources(load_config(path))


def built_heads(src, cache: Path) -> list[HeadData]:
    build_feature_cache(src, cache, progress=False)
    index = len(src.dictionaries)
    return [hd for path in batch_files(cache, index) for hd in read_head_batch(path)]


def reference_scalars(src) -> dict[int, list[torch.Tensor]]:
    """Per layer, [pattern, write norm] as [seq, head, query, key], from run_with_cache over the
    engine's token batches and an explicit A[i, j] * v_j @ W_O[h] per pair."""
    model, tokens = src.model, src.data.tokens
    size = src.config.features.token_batch_size
    out: dict[int, list[torch.Tensor]] = {}
    n_heads = model.cfg.n_heads
    with torch.no_grad():
        for s in range(0, len(tokens), size):
            _, cache = model.run_with_cache(tokens[s : s + size])
            for layer in range(model.cfg.n_layers):
                a = cache[f"blocks.{layer}.attn.hook_pattern"]  # [b, head, q, k]
                v = cache[f"blocks.{layer}.attn.hook_v"]  # [b, k, kv head, d_head]
                group = n_heads // v.shape[2]
                w_o = model.blocks[layer].attn.W_O  # [head, d_head, d_model]
                ctx = a.shape[-1]
                w = torch.zeros_like(a)
                for h in range(n_heads):
                    for j in range(ctx):
                        write = v[:, j, h // group] @ w_o[h]  # [b, d_model]
                        for i in range(j, ctx):
                            w[:, h, i, j] = (a[:, h, i, j, None] * write).norm(dim=-1)
                out.setdefault(layer, [[], []])
                out[layer][0].append(a)
                out[layer][1].append(w)
    return {layer: [torch.cat(x) for x in pair] for layer, pair in out.items()}


def check_pairs(p: PairScalars, x: torch.Tensor, start: int, k: int, where: str) -> None:
    """``x`` [query, key] of the record's sequence."""
    ctx = x.shape[0]
    mask = causal(ctx, x.device)
    xm = torch.where(mask, x, 0.0)
    for n, (keys, values) in enumerate(zip(p.keys, p.values)):
        q = start + n
        assert len(keys) == min(k, q + 1) == len(set(keys)), (where, q, keys)
        assert all(0 <= j <= q for j in keys), (where, q, keys)
        assert all(close(v, float(x[q, j])) for v, j in zip(values, keys)), (where, q, keys, values)
        assert values == sorted(values, reverse=True), (where, q, values)
        others = [float(x[q, j]) for j in range(q + 1) if j not in keys]
        if others:
            assert max(others) <= min(float(x[q, j]) for j in keys) + 1e-6, (where, q)
        assert close(p.rest[n], sum(others)) or abs(p.rest[n] - sum(others)) < 1e-5, (where, q)
        assert close(p.total_in[n], float(xm[q].sum())), (where, q)
        assert close(p.max_in[n], float(xm[q].max())), (where, q)
        assert close(p.total_out[n], float(xm[:, q].sum())), (where, q)
        assert close(p.max_out[n], float(xm[:, q].max())), (where, q)


def check_top_tokens(got, totals: dict[int, float], k: int, where: str) -> None:
    """``got`` (TokenValues) = the k tokens with the largest positive ``totals`` as shares of
    their sum, share descending, ties the lower id; exact ids unless the top k + 1 nearly tie."""
    share = {t: v / sum(totals.values()) for t, v in totals.items()}
    ranked = sorted((t for t in totals if totals[t] > 0), key=lambda t: (-share[t], t))
    order = ranked[:k]
    assert len(got.token_ids) == len(order) == len(set(got.token_ids)), (where, got.token_ids, order)
    assert all(close(v, share[t]) for t, v in zip(got.token_ids, got.values)), (where, got, share)
    assert got.values == sorted(got.values, reverse=True), (where, got.values)
    gaps = [share[a] - share[b] for a, b in zip(ranked, ranked[1 : k + 1])]
    if all(g > 1e-5 * share[ranked[0]] for g in gaps):
        assert got.token_ids == order, (where, got.token_ids, order)
    else:
        assert min(got.values) >= share[order[-1]] * (1 - 2e-3), (where, got.values)


def check_record(r: HeadRecord, ref: list[torch.Tensor], tokens, width: int, k: int, where: str) -> None:
    """``ref``: the head's [pattern, write norm], each [seq, query, key]."""
    ctx = tokens.shape[1]
    assert r.start == max(0, min(r.query - 5, ctx - width)), where
    assert r.token_ids == tokens[r.seq, r.start : r.start + width].tolist(), where
    kept = {j for p in r.scalars for keys in p.keys for j in keys}
    assert r.earlier == sorted(j for j in kept if j < r.start), where
    assert r.earlier_ids == [int(tokens[r.seq, j]) for j in r.earlier], where
    for s, p in enumerate(r.scalars):
        check_pairs(p, ref[s][r.seq], r.start, k, f"{where} {SCALARS[s]}")
    rank = ref[1][r.seq]  # write norm: the default ranking scalar
    flat = [float(rank[r.start + q, r.start + j]) for q in range(width) for j in range(q + 1)]
    assert len(r.pairs) == len(flat) and all(close(a, b) for a, b in zip(r.pairs, flat)), where


@pytest.mark.parametrize("n_kv_heads", [None, 2, 1])
@pytest.mark.parametrize("seed", SEEDS)
def test_head_records_against_run_with_cache(tmp_path, seed, n_kv_heads):
    print("seed", seed, "n_kv_heads", n_kv_heads)
    src = head_project(tmp_path, seed, n_kv_heads=n_kv_heads, heads={"top_records": 8, "random_records": 6})
    heads = built_heads(src, tmp_path / "cache")
    ref = reference_scalars(src)
    tokens, counted = src.data.tokens, ~src.data.ignore
    n_seq, ctx = tokens.shape
    n_heads = src.model.cfg.n_heads
    assert [hd.feature for hd in heads] == list(range(2 * n_heads))
    mask = causal(ctx, tokens.device)
    for hd in heads:
        where = f"seed {seed} L{hd.layer}H{hd.head}"
        a, w = ref[hd.layer][0][:, hd.head], ref[hd.layer][1][:, hd.head]
        assert hd.kv_head == hd.head // (n_heads // (n_kv_heads or n_heads))
        # top records: distinct sequences, the true top by the largest write norm of a counted query
        rank = torch.where(mask & counted[:, :, None], w, -math.inf).reshape(n_seq, -1)
        best = rank.max(-1).values.tolist()
        expected = sorted(range(n_seq), key=lambda s: (-best[s], s))[:8]
        got = [r.seq for r in hd.top_records]
        assert len(set(got)) == len(got) == 8, where
        assert [close(r.score, best[r.seq]) for r in hd.top_records] == [True] * 8, where
        # near-ties may swap neighbours; every chosen score must reach the 8th best
        assert min(best[s] for s in got) >= best[expected[-1]] * (1 - 1e-5), where
        for r in hd.top_records:
            q, j = r.query, r.key
            assert counted[r.seq, q] and j <= q and close(float(w[r.seq, q, j]), best[r.seq]), where
            check_record(r, [a, w], tokens, 11, 8, where)
        for r in hd.random_records:
            assert counted[r.seq, r.query], where
            check_record(r, [a, w], tokens, 11, 8, where + " random")
        # summary over every counted query
        q = counted.float()
        n_q = q.sum()
        assert hd.summary.n_queries == int(n_q)
        entropy = -(torch.where(a > 0, a * a.clamp(min=1e-30).log(), 0.0)).sum(-1)
        assert close(hd.summary.entropy, float((entropy * q).sum() / n_q)), where
        assert close(hd.summary.first, float((a[:, :, 0] * q).sum() / n_q)), where
        assert close(hd.summary.self, float((a.diagonal(dim1=1, dim2=2) * q).sum() / n_q)), where
        prev = a.diagonal(offset=-1, dim1=1, dim2=2)
        assert close(hd.summary.previous, float((prev * q[:, 1:]).sum() / q[:, 1:].sum())), where
        wm = torch.where(mask, w, 0.0)
        total = float((wm.sum(-1) * q).sum())
        n_pairs = float((q * (torch.arange(ctx) + 1)).sum())
        assert close(hd.summary.write_mean, total / n_pairs) and close(hd.summary.write_total_mean, total / float(n_q))
        edges = hd.summary.distance_edges
        mass = [0.0] * (len(edges) - 1)
        for s in range(n_seq):
            for i in range(ctx):
                if counted[s, i]:
                    for j in range(i + 1):
                        b = max(n for n in range(len(edges) - 1) if edges[n] <= i - j)
                        mass[b] += float(a[s, i, j])
        assert all(close(m, r * sum(mass)) for m, r in zip(mass, hd.summary.distance_mass)) or all(
            abs(x - m / sum(mass)) < 2e-5 for x, m in zip(hd.summary.distance_mass, mass)
        ), where
        received: dict[int, float] = {}
        for s in range(n_seq):
            for j in range(ctx):
                t = int(tokens[s, j])
                received[t] = received.get(t, 0.0) + float((a[s, :, j] * q[s]).sum())
        top = sorted(received, key=lambda t: -received[t])[:5]
        share = {t: v / sum(received.values()) for t, v in received.items()}
        assert all(close(v, share[t]) for t, v in zip(hd.summary.top_keys.token_ids, hd.summary.top_keys.values))
        assert min(hd.summary.top_keys.values) >= share[top[-1]] * (1 - 2e-3), where
        # query tokens by their share of the total write norm written at them (counted queries)
        written: dict[int, float] = {}
        for s in range(n_seq):
            for i in range(ctx):
                if counted[s, i]:
                    t = int(tokens[s, i])
                    written[t] = written.get(t, 0.0) + sum(float(w[s, i, j]) for j in range(i + 1))
        check_top_tokens(hd.summary.top_queries, written, src.config.features.n_top_tokens, f"{where} top queries")
        # NeuronRecord moments of the write norm over every (counted query, key <= query) pair
        x = torch.cat([w[s][i, : i + 1] for s in range(n_seq) for i in range(ctx) if counted[s, i]]).double()
        mean, var = float(x.mean()), float(x.var(unbiased=False))
        skew = float(((x - mean) ** 3).mean()) / var**1.5
        kurt = float(((x - mean) ** 4).mean()) / var**2 - 3
        assert all(close(a, b) for a, b in zip(hd.moments, [mean, var, skew, kurt])), (where, hd.moments)
        # the normalisers are the maxima over what the records show
        assert hd.maxima == maxima([*hd.top_records, *hd.random_records])
    # every token a page shows is in tokens.json
    texts = read_token_table(tmp_path / "cache")
    assert set().union(*(hd.token_ids() for hd in heads)) <= set(texts)


def neuron_viewer_normalised(records: list[list[list[float]]]) -> tuple[list, list]:
    """The neuron-viewer's definitions, directly (read_routes.normalize_attention_token_scalars),
    with an exact max: per token its scalars floored at 0 and divided by the largest scalar of
    all records; per token total/max in (over its own scalars) and total/max out (over the
    later tokens' scalars for it), each divided by its own largest value over all records
    (floored at 0; 0 where that largest value is 0)."""

    def scale(top: float):
        return lambda x: max(x, 0.0) / top if top > 0 else 0.0

    top = max([max(a, 0.0) for rec in records for tok in rec for a in tok], default=0.0)
    pairs = [[[scale(top)(a) for a in tok] for tok in rec] for rec in records]
    summaries = []
    for fn in ("total_in", "max_in", "total_out", "max_out"):
        per = []
        for rec in records:
            if fn.endswith("in"):
                vals = [sum(tok) if fn == "total_in" else max(tok) for tok in rec]
            else:
                cols = [[rec[i][j] for i in range(j, len(rec)) if j < len(rec[i])] for j in range(len(rec))]
                vals = [sum(c) if fn == "total_out" else max(c) for c in cols]
            per.append(vals)
        m = max([max(v, 0.0) for vals in per for v in vals], default=0.0)
        summaries.append([[scale(m)(v) for v in vals] for vals in per])
    return pairs, summaries


@pytest.mark.parametrize("seed", SEEDS)
def test_normalised_summaries_against_the_neuron_viewer_definitions(seed):
    print("seed", seed)
    rng = random.Random(seed)
    records = []
    for n in range(6):
        length = rng.randint(1, 12)
        zero = n == 2  # a record whose every scalar is 0
        records.append(
            [[0.0 if zero else rng.random() * rng.choice([1, 10]) for _ in range(i + 1)] for i in range(length)]
        )
    for case in (records, [records[2]]):  # and a head whose only record is all zeros
        pairs_ref, summaries_ref = neuron_viewer_normalised(case)
        built = []
        for rec in case:
            t = len(rec)
            dense = torch.zeros(t, t, dtype=torch.float64)
            for i, tok in enumerate(rec):
                dense[i, : i + 1] = torch.tensor(tok, dtype=torch.float64)
            sm = token_summaries(dense, causal(t, dense.device)).tolist()
            keys = [list(range(i + 1)) for i in range(t)]
            built.append(HeadRecord(0, 0, [0] * t, [], [], 0, 0, 0.0, [PairScalars(keys, rec, [0.0] * t, *sm)] * 2, []))
        top, *tops = maxima(built)[0]

        def norm(x: float, m: float) -> float:  # what static/head.js shows
            return max(x, 0.0) / m if m > 0 else 0.0

        for r, ref in zip(built, pairs_ref):
            assert all(
                math.isclose(norm(v, top), x, rel_tol=1e-12, abs_tol=1e-15)
                for row, rrow in zip(r.scalars[0].values, ref)
                for v, x in zip(row, rrow)
            )
        for f, name in enumerate(("total_in", "max_in", "total_out", "max_out")):
            for r, ref in zip(built, summaries_ref[f]):
                got = [norm(v, tops[f]) for v in getattr(r.scalars[0], name)]
                assert all(math.isfinite(g) for g in got)
                assert all(math.isclose(g, x, rel_tol=1e-12, abs_tol=1e-15) for g, x in zip(got, ref)), (name, got, ref)


def test_a_subset_of_heads_matches_the_whole_build(tmp_path):
    """Picking heads (``features``) changes nothing about the heads picked; a rerun reuses the
    cache and a fresh build gives the same bytes."""
    seed = random.randrange(10**6)
    print("seed", seed)
    whole = built_heads(head_project(tmp_path / "all", seed, n_kv_heads=2), tmp_path / "all" / "cache")
    src = head_project(tmp_path / "some", seed, n_kv_heads=2, layers=[1, 0], features=[1, 6])
    some = built_heads(src, tmp_path / "some" / "cache")
    assert [(hd.layer, hd.head) for hd in some] == [(1, 1), (0, 2)]
    by_pair = {(hd.layer, hd.head): hd for hd in whole}
    for hd in some:
        ref = by_pair[(hd.layer, hd.head)]
        assert (hd.summary, hd.top_records, hd.random_records, hd.maxima) == (
            ref.summary,
            ref.top_records,
            ref.random_records,
            ref.maxima,
        )
    files = batch_files(tmp_path / "some" / "cache", len(src.dictionaries))
    before = [p.read_bytes() for p in files]
    assert build_feature_cache(src, tmp_path / "some" / "cache", progress=False)["stats"]["model_passes"] == 0
    build_feature_cache(src, tmp_path / "again", progress=False)
    assert [p.read_bytes() for p in batch_files(tmp_path / "again", len(src.dictionaries))] == before
