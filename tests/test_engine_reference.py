"""The feature engine against slow, obvious references computed from the FULL
activation tensor of tiny random models and SAEs (tests/fixtures.py).

Every test runs with a fixed seed and a fresh random one (printed in failures).
Values in the cache are rounded to 4 significant digits, hence the tolerances.
"""

from __future__ import annotations

import copy
import math
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fixtures import tiny_model, tiny_sae, write_project
from site_fixtures import listed_changes

from sitegen.cache.feature_data import DirectHover, ListedHover, TokenValues
from sitegen.cache.files import dictionary_summaries, read_features, read_token_table
from sitegen.cache.manifest import read_manifest
from sitegen.compute import build_feature_cache
from sitegen.config import load_config
from sitegen.sources import load_sources

SEEDS = [0, 278569, random.randrange(10**6)]  # 278569: a near-tie at the top-3 cut
RTOL = 1e-3  # 4 significant digits: rounding error <= 5e-4 relative


def close(x: float, ref: float, atol: float = 1e-6, rtol: float = RTOL) -> bool:
    return abs(x - ref) <= atol + rtol * abs(ref)


def project(tmp_path: Path, seed: int, architecture: str = "standard", post_norm: bool = False, **features):
    path = write_project(
        tmp_path, architecture=architecture, seed=seed, post_norm=post_norm, extra={"features": features}
    )
    return load_sources(load_config(path))


def build(src, tmp_path: Path, name: str = "cache") -> tuple[dict, dict]:
    manifest = build_feature_cache(src, tmp_path / name, progress=False)
    feats = {i: {f.feature: f for f in read_features(tmp_path / name, i)} for i in range(len(src.dictionaries))}
    return manifest, feats


class Reference:
    """Everything about one dictionary, recomputed from the full activation tensor."""

    def __init__(self, src, d):
        model = src.model
        self.src, self.d, self.model = src, d, model
        tokens = src.data.tokens
        self.n_seq, self.ctx = tokens.shape
        self.tokens = tokens.numpy()
        final = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
        with torch.no_grad():
            logits, cache = model.run_with_cache(tokens, names_filter=[d.hook_name, final])
            hook = cache[d.hook_name].reshape(self.n_seq * self.ctx, -1)
            self.acts = d.encode(hook).numpy().astype(np.float64)  # [n_tok, d_sae]
        self.hook = hook.numpy().astype(np.float64)
        self.final = cache[final].reshape(self.n_seq * self.ctx, -1).numpy().astype(np.float64)
        self.logits = logits.reshape(self.n_seq * self.ctx, -1).numpy().astype(np.float64)
        self.counted = ~src.data.ignore.reshape(-1).numpy()
        finite_rows = np.isfinite(self.acts).all(1) & np.isfinite(self.hook).all(1)
        self.clean = self.counted & finite_rows

    def column(self, f: int) -> tuple[np.ndarray, np.ndarray]:
        """(activations with 0 where not counted, counted mask) of feature f."""
        a = self.acts[:, f]
        ok = self.counted & np.isfinite(a)
        return np.where(ok, a, 0.0), ok

    def ranked_positions(self, f: int, sign: int) -> np.ndarray:
        """Flat positions with sign*act > 0, by sign*act descending, then position."""
        a, ok = self.column(f)
        idx = np.nonzero(ok & (sign * a > 0))[0]
        return idx[np.lexsort((idx, -sign * a[idx]))]


def near_bounds(values: np.ndarray, bounds: np.ndarray, rel: float = 1e-5) -> int:
    """How many values lie so close to a bin bound that float noise between the engine's and
    this reference's activations (different batch shapes) could move them across it."""
    gap = np.abs(values[:, None] - bounds[None, :]).min(1) if len(values) and len(bounds) else np.zeros(0)
    return int((gap <= rel * np.maximum(np.abs(values), 1e-30)).sum())


def check_example(ref: Reference, f: int, ex, cfg, seed: int) -> float:
    """Window, tokens, acts and hover presence of one example; returns its reference activation."""
    a, _ = ref.column(f)
    ctx = ref.ctx
    flat = ex.seq * ctx + ex.pos
    start = 0 if cfg.whole_sequence else max(0, ex.pos - cfg.context_before)
    end = ctx - 1 if cfg.whole_sequence else min(ctx - 1, ex.pos + cfg.context_after)
    assert ex.start == start and len(ex.token_ids) == end - start + 1, f"seed={seed} f={f} window"
    assert ex.token_ids == ref.tokens[ex.seq, start : end + 1].tolist(), f"seed={seed} f={f} tokens"
    shown = a[ex.seq * ctx + start : ex.seq * ctx + end + 1]
    assert all(close(x, y) for x, y in zip(ex.acts, shown)), f"seed={seed} f={f} acts {ex.acts} {shown}"
    for p, (act, hover) in enumerate(zip(ex.acts, ex.hovers)):
        wants = act != 0 and start + p < ctx - 1 and cfg.effects != "none"
        assert (hover is not None) == wants, f"seed={seed} f={f} hover presence at {start + p}"
    return float(a[flat])


def check_ranked(
    got,
    score: np.ndarray,
    valid: np.ndarray,
    n: int,
    what: str,
    extra: np.ndarray | None = None,
    atol: float = 1e-4,
    shown: np.ndarray | None = None,
) -> None:
    """got (Ranked) = top n valid scores (reported as ``shown``, default the score), ties tolerated."""
    shown = score if shown is None else shown
    cand = np.nonzero(valid & (score != 0))[0]
    ranked = cand[np.lexsort((cand, -score[cand]))]
    order = ranked[:n]
    assert len(got.ids) == len(order), f"{what}: {got.ids} vs {order.tolist()}"
    for i, (gid, gval) in enumerate(zip(got.ids, got.values)):
        assert valid[gid] and close(gval, shown[gid], atol), f"{what}: id {gid} value {gval} vs {shown[gid]}"
        assert close(abs(gval), abs(shown[order[i]]), atol), f"{what}: rank {i} {gval} vs {shown[order[i]]}"
        if extra is not None:
            assert close(got.extra[i], extra[gid], atol), f"{what}: extra of {gid} {got.extra[i]} vs {extra[gid]}"
    # ids must match exactly unless two scores within the top n + 1 (the cut included) nearly tie
    gaps = np.diff(score[ranked[: n + 1]]) if len(ranked) > 1 else np.array([-1.0])
    if np.all(np.abs(gaps) > 1e-4):
        assert got.ids == order.tolist(), f"{what}: ids {got.ids} vs {order.tolist()}"


def check_feature(ref: Reference, fd, cfg, seed: int) -> None:
    f, d = fd.feature, ref.d
    msg = f"seed={seed} {d.name} feature {f}"
    a, ok = ref.column(f)
    nz = a[ok & (a != 0)]
    n_pos = int((a[ok] > 0).sum())
    assert fd.n_tokens == int(ok.sum()), msg
    assert fd.n_nonfinite == int((ref.counted & ~np.isfinite(ref.acts[:, f])).sum()), msg
    assert fd.dead == (n_pos == 0), msg
    assert fd.n_active == n_pos, f"{msg} n_active {fd.n_active} {n_pos}"
    assert close(fd.density, n_pos / max(ok.sum(), 1)), f"{msg} density"
    max_ref = float(a[ok].max()) if ok.any() else 0.0
    assert close(fd.max_act, max_ref), f"{msg} max {fd.max_act} {max_ref}"
    assert close(fd.mean_nonzero_act, float(nz.mean()) if len(nz) else 0.0), f"{msg} mean"
    counts, edges = np.histogram(nz.astype(np.float32), cfg.histogram_bins)
    moved = np.abs(np.array(fd.act_histogram.counts) - counts).sum()
    assert moved <= 2 * near_bounds(nz, edges[1:-1]), f"{msg} histogram {fd.act_histogram.counts} {counts.tolist()}"
    assert all(close(x, y) for x, y in zip(fd.act_histogram.edges, edges)), f"{msg} edges"
    # top examples: the top_examples largest, distinct positions
    order = ref.ranked_positions(f, +1)[: cfg.top_examples]
    got = [check_example(ref, f, ex, cfg, seed) for ex in fd.top_examples]
    assert len(got) == len(order), f"{msg} n top"
    assert len({(e.seq, e.pos) for e in fd.top_examples}) == len(got), f"{msg} distinct"
    assert all(close(x, a[o]) for x, o in zip(got, order)), f"{msg} top values {got} {a[order]}"
    if (
        len(order)
        and np.all(np.abs(np.diff(a[order])) > 1e-5)
        and (
            len(ref.ranked_positions(f, +1)) <= len(order)
            or a[ref.ranked_positions(f, +1)[len(order)]] < a[order[-1]] - 1e-5
        )
    ):
        assert [e.seq * ref.ctx + e.pos for e in fd.top_examples] == order.tolist(), f"{msg} top positions"
    # intervals over (0, max]
    if fd.dead:
        assert fd.intervals == [] and fd.top_examples == [], msg
    else:
        assert len(fd.intervals) == cfg.n_intervals, msg
        for i, g in enumerate(fd.intervals):
            lo, hi = max_ref * i / cfg.n_intervals, max_ref * (i + 1) / cfg.n_intervals
            inside = ok & (a > lo) & (a <= hi)
            assert close(g.lower, lo) and close(g.upper, hi), f"{msg} interval {i} bounds"
            inner = [b for b, outer in ((lo, i == 0), (hi, i == cfg.n_intervals - 1)) if not outer]
            slack = near_bounds(a[ok], np.array(inner))
            assert abs(g.fraction * len(nz) - inside.sum()) <= slack + 1e-3 * inside.sum() + 1e-9, (
                f"{msg} interval {i} fraction"
            )
            assert len(g.examples) == min(cfg.examples_per_interval, int(inside.sum())), f"{msg} interval {i} n"
            assert len({(e.seq, e.pos) for e in g.examples}) == len(g.examples), msg
            for ex in g.examples:
                act = check_example(ref, f, ex, cfg, seed)
                assert act > 0 and lo - 1e-6 < act <= hi + 1e-6, f"{msg} interval {i} example {act}"
    # negative group
    if d.can_be_negative:
        neg = ref.ranked_positions(f, -1)
        assert close(fd.negative.fraction, len(neg) / max(len(nz), 1)), f"{msg} negative fraction"
        assert close(fd.negative.lower, float(a[neg].min()) if len(neg) else 0.0) and fd.negative.upper == 0.0, msg
        got = [check_example(ref, f, ex, cfg, seed) for ex in fd.negative.examples]
        want = a[neg[: cfg.negative_examples]]
        assert len(got) == len(want) and all(close(x, y) for x, y in zip(got, want)), f"{msg} negative examples"
    else:
        assert fd.negative is None, msg
    # top tokens: most frequent at the top 1% (at least top_examples) positions
    ranked = ref.ranked_positions(f, +1)
    m = min(len(ranked), max(cfg.top_examples, math.ceil(len(ranked) / 100)))
    if m == len(ranked) or a[ranked[m]] < a[ranked[m - 1]] - 1e-5:
        ids, counts = np.unique(ref.tokens.reshape(-1)[ranked[:m]], return_counts=True)
        keep = np.lexsort((ids, -counts))[: cfg.n_top_tokens]
        assert fd.top_tokens.token_ids == ids[keep].tolist(), f"{msg} top tokens"
        assert fd.top_tokens.values == counts[keep].astype(float).tolist(), msg
    check_related(ref, fd, cfg, msg)


def check_related(ref: Reference, fd, cfg, msg: str) -> None:
    f, d = fd.feature, ref.d
    dec = d.decoder().detach().double().numpy()
    row = dec[f]
    mag = np.abs(row)
    check_ranked(
        fd.neuron_alignment,
        mag,
        np.ones(len(row), bool),
        cfg.n_related,
        f"{msg} alignment",
        extra=mag / mag.sum(),
        atol=1e-6,
        shown=row,
    )
    unit = dec / np.maximum(np.linalg.norm(dec, axis=1, keepdims=True), 1e-300)
    cos = unit @ unit[f]
    others = np.arange(len(dec)) != f
    check_ranked(
        fd.decoder_neighbours,
        cos,
        others & (np.linalg.norm(dec, axis=1) > 0),
        cfg.n_neighbours,
        f"{msg} neighbours",
        atol=1e-6,
    )
    x = ref.acts[ref.clean][:, f]
    if np.ptp(x) == 0:
        assert fd.correlated_neurons.ids == [] and fd.correlated_features.ids == [], msg
        return
    h = ref.hook[ref.clean]
    with np.errstate(invalid="ignore", divide="ignore"):
        r_h = np.corrcoef(np.column_stack([x, h]), rowvar=False)[0, 1:]
        all_acts = ref.acts[ref.clean]
        r_f = np.corrcoef(np.column_stack([x, all_acts]), rowvar=False)[0, 1:]
    cos_h = (x @ h) / np.maximum(np.linalg.norm(x) * np.linalg.norm(h, axis=0), 1e-300)
    self_dim = np.arange(h.shape[1]) != f if d.kind == "neurons" else np.ones(h.shape[1], bool)
    check_ranked(
        fd.correlated_neurons,
        np.nan_to_num(r_h),
        np.isfinite(r_h) & self_dim,
        cfg.n_related,
        f"{msg} correlated neurons",
        extra=cos_h,
    )
    check_ranked(
        fd.correlated_features,
        np.nan_to_num(r_f),
        np.isfinite(r_f) & others,
        cfg.n_related,
        f"{msg} correlated features",
    )


def norm_parts(model) -> tuple[np.ndarray, np.ndarray, float]:
    w = model.ln_final.w.detach().double().numpy()
    b = model.ln_final.b.detach().double().numpy()
    return w, b, model.cfg.eps


def log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def check_logits(ref: Reference, fd, cfg, msg: str) -> None:
    """u = (mean-centred r * ln_final.w) @ W_U, explicit matmul in float64."""
    model = ref.model
    r = ref.d.residual_directions()[fd.feature].detach().double().numpy()
    w, _, _ = norm_parts(model)
    u = ((r - r.mean()) * w) @ model.W_U.detach().double().numpy()
    top = np.argsort(-u, kind="stable")[: cfg.logit_top]
    bottom = np.argsort(u, kind="stable")[: cfg.logit_top]
    assert all(close(v, u[i]) for v, i in zip(fd.logit_top.values, top)), f"{msg} logit top"
    assert all(close(u[i], v) for v, i in zip(fd.logit_top.values, fd.logit_top.token_ids)), f"{msg} logit ids"
    assert all(close(v, u[i]) for v, i in zip(fd.logit_bottom.values, bottom)), f"{msg} logit bottom"
    counts, edges = np.histogram(u, cfg.logit_histogram_bins)
    assert sum(fd.logit_histogram.counts) == len(u), msg
    assert np.abs(np.array(fd.logit_histogram.counts) - counts).sum() <= 2, f"{msg} logit histogram"
    assert all(close(x, y, 1e-5) for x, y in zip(fd.logit_histogram.edges, edges)), f"{msg} logit edges"


def shown(fd):
    """(example, index in window) of every shown token, over all groups."""
    groups = [fd.top_examples] + [g.examples for g in fd.intervals] + ([fd.negative.examples] if fd.negative else [])
    for examples in groups:
        for ex in examples:
            for i in range(len(ex.token_ids)):
                yield ex, i


def check_hover(
    hover,
    delta: np.ndarray,
    next_tok: int,
    k: int,
    msg: str,
    atol: float | None = None,
    basis: TokenValues | None = None,
) -> None:
    """Values to 4 significant digits, and within ``atol`` (default: 1e-5 of the largest change,
    what float32 direct effects keep; a weak feature's whole table can be ~1e-4). A direct hover's
    listed tokens are those its tooltip shows: derived from the feature's ``basis``."""
    atol = 1e-5 * np.abs(delta).max() + 1e-12 if atol is None else atol
    if isinstance(hover, DirectHover):
        assert basis is not None, msg
        top_tv, bottom_tv = listed_changes(hover, basis)
        hover = SimpleNamespace(loss_effect=hover.loss_effect, top=top_tv, bottom=bottom_tv)
    assert close(hover.loss_effect, -delta[next_tok], atol), f"{msg} loss {hover.loss_effect} {-delta[next_tok]}"
    top, bottom = np.sort(delta)[::-1][:k], np.sort(delta)[:k]
    assert all(close(x, y, atol) for x, y in zip(hover.top.values, top)), f"{msg} top {hover.top.values} {top}"
    assert all(close(x, y, atol) for x, y in zip(hover.bottom.values, bottom)), f"{msg} bottom"
    assert all(close(delta[i], v, atol) for i, v in zip(hover.top.token_ids, hover.top.values)), f"{msg} top ids"
    assert all(close(delta[i], v, atol) for i, v in zip(hover.bottom.token_ids, hover.bottom.values)), msg


def check_direct_hovers(ref: Reference, fd, cfg, msg: str) -> int:
    """Explicit re-computation per position in float64: final residual minus a*r, final
    LayerNorm with its clean scale, unembedding; log-prob changes against the clean logits
    recomputed the same way (the model's float32 logits are off by ~1e-6, as large as a weak
    feature's effect)."""
    model = ref.model
    w, b, eps = norm_parts(model)
    W_U, b_U = model.W_U.detach().double().numpy(), model.b_U.detach().double().numpy()
    r = ref.d.residual_directions()[fd.feature].detach().double().numpy()
    checked = 0
    for ex, i in shown(fd):
        flat = ex.seq * ref.ctx + ex.start + i
        act = ref.column(fd.feature)[0][flat]
        if ex.hovers[i] is None:
            continue
        x = ref.final[flat]
        xc = x - x.mean()
        scale = np.sqrt((xc**2).mean() + eps)
        logits = [((y - y.mean()) / scale * w + b) @ W_U + b_U for y in (x - act * r, x)]  # removed, clean
        if (cap := model.cfg.output_logits_soft_cap or 0) > 0:
            logits = [cap * np.tanh(z / cap) for z in logits]
        delta = log_softmax(logits[0]) - log_softmax(logits[1])
        check_hover(
            ex.hovers[i], delta, int(ref.tokens.reshape(-1)[flat + 1]), cfg.hover_top, msg, basis=fd.hover_basis
        )
        check_direct_parameters(
            ex.hovers[i],
            fd.hover_basis,
            act / scale,
            delta,
            (model.cfg.output_logits_soft_cap or 0) > 0,
            f"{msg} ({ex.seq},{ex.start + i})",
        )
        checked += 1
    return checked


def check_direct_parameters(hover, basis, coef: float, delta: np.ndarray, capped: bool, msg: str) -> None:
    """What pages compute tooltips from: every log-prob change = -coef * u[t] - shift, with u at
    the basis tokens (the k lowest, then the k highest logit effects); none under a soft-cap.
    (The hover's listed tokens are derived from the basis on read; ``check_hover`` checks them
    against the brute-force top and bottom changes.)"""
    if capped:
        assert isinstance(hover, ListedHover) and basis.token_ids == [], msg
        return
    assert isinstance(hover, DirectHover), msg
    assert close(hover.coef, coef, 1e-6) and abs(hover.coef - coef) <= 1e-5 * abs(coef) + 1e-9, f"{msg} coef"
    ids, u = np.array(basis.token_ids), np.array(basis.values)
    rebuilt = -hover.coef * u - hover.shift
    largest = np.abs(delta[ids]).max()  # float32 work keeps ~1e-6 of the largest change: allow 1e-5
    assert np.abs(rebuilt - delta[ids]).max() <= 1e-5 * largest + 1e-12, f"{msg} rebuilt {rebuilt} {delta[ids]}"


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("architecture", ["standard", "jumprelu", "topk"])
def test_matches_reference(tmp_path, seed, architecture):
    src = project(tmp_path, seed, architecture)
    check_build(src, tmp_path, seed)


@pytest.mark.parametrize("seed", SEEDS)
def test_token_and_feature_shards_match_reference(tmp_path, seed):
    """The sharded decomposition (3 token shards of whole model batches, 3 feature shards) is
    checked against the same whole-data references as one shard."""
    features = {"feature_batch_size": 16, "token_batch_size": 4}
    extra = {"features": features, "executor": {"token_shards": 3, "feature_shards": 3}}
    src = load_sources(load_config(write_project(tmp_path, seed=seed, n_seq=24, extra=extra)))
    assert src.config.executor.token_shards == 3
    check_build(src, tmp_path, seed)


def check_build(src, tmp_path: Path, seed: int) -> None:
    manifest, feats = build(src, tmp_path)
    cfg = src.config.features
    assert manifest["stats"]["model_passes"] == 1
    assert manifest["complete"] is True
    hovers = 0
    for i, d in enumerate(src.dictionaries):
        ref = Reference(src, d)
        assert sorted(feats[i]) == list(d.feature_ids)
        for fd in feats[i].values():
            check_feature(ref, fd, cfg, seed)
            check_logits(ref, fd, cfg, f"seed={seed} {d.name} {fd.feature}")
            hovers += check_direct_hovers(ref, fd, cfg, f"seed={seed} {d.name} {fd.feature}")
    assert hovers > 100, f"seed={seed}: only {hovers} hovers checked"
    table = read_token_table(tmp_path / "cache")
    used = {t for i in feats for fd in feats[i].values() for ex, _ in shown(fd) for t in ex.token_ids}
    assert used <= set(table), f"seed={seed}: tokens.json misses {used - set(table)}"
    assert table == dict(zip(sorted(table), src.token_texts(sorted(table))))


@pytest.mark.parametrize("seed", SEEDS)
def test_windows_whole_sequence_and_dead_features(tmp_path, seed):
    src = project(tmp_path, seed, whole_sequence=True, effects="none", top_examples=3)
    sae = src.dictionaries[0].sae
    dead = random.Random(seed).sample(range(sae.cfg.d_sae), 5)
    with torch.no_grad():
        sae.b_enc[dead] = -1e4
    _, feats = build(src, tmp_path)
    ref = Reference(src, src.dictionaries[0])
    for f in dead:
        fd = feats[0][f]
        assert fd.dead and fd.density == 0 and fd.max_act == 0 and fd.mean_nonzero_act == 0
        assert fd.top_examples == [] and fd.intervals == [] and fd.top_tokens.token_ids == []
        assert sum(fd.act_histogram.counts) == 0 and len(fd.act_histogram.edges) == 41
        assert fd.correlated_features.ids == [] and fd.correlated_neurons.ids == []
    for fd in feats[0].values():
        check_feature(ref, fd, src.config.features, seed)
        assert not set(fd.correlated_features.ids) & set(dead), f"seed={seed}: dead feature correlated"
        for ex, i in shown(fd):
            assert ex.start == 0 and len(ex.token_ids) == ref.ctx and ex.hovers[i] is None


class Injected:
    """An SAE dictionary whose encode yields NaN in one feature and +inf in another
    wherever the first hook dimension is large (a rule on the input, so the
    reference and the engine agree on where)."""

    def __init__(self, d, threshold: float, nan_feature: int, inf_feature: int):
        self._d, self.threshold = d, threshold
        self.nan_feature, self.inf_feature = nan_feature, inf_feature

    def __getattr__(self, name):
        return getattr(self._d, name)

    def encode(self, x, out=None):
        acts = self._d.encode(x, out).clone()
        hit = x[:, 0] > self.threshold
        acts[hit, self.nan_feature] = float("nan")
        acts[hit, self.inf_feature] = float("inf")
        return acts


@pytest.mark.parametrize("seed", SEEDS)
def test_nonfinite_activations_counted_and_excluded(tmp_path, seed):
    src = project(tmp_path, seed)
    d = src.dictionaries[0]
    probe = Reference(src, d)
    x0 = np.sort(probe.hook[probe.counted, 0])
    threshold = float(x0[int(len(x0) * 0.8)] + x0[int(len(x0) * 0.8) + 1]) / 2
    src.dictionaries[0] = Injected(d, threshold, 3, 5)
    manifest, feats = build(src, tmp_path)
    ref = Reference(src, src.dictionaries[0])
    hit = int((ref.counted & (ref.hook[:, 0] > threshold)).sum())
    assert hit > 10, f"seed={seed}"
    assert feats[0][3].n_nonfinite == hit and feats[0][5].n_nonfinite == hit, f"seed={seed}"
    assert feats[0][3].n_tokens == int(ref.counted.sum()) - hit
    assert manifest["stats"]["n_nonfinite"] == 2 * hit
    assert ref.clean.sum() == ref.counted.sum() - hit
    for fd in feats[0].values():
        check_feature(ref, fd, src.config.features, seed)


def float64_copy(model):
    """The model with float64 weights, for references whose own rounding stays far below the
    engine's (float32 log-probs are up to ~1e-5 off float64 ones here)."""
    return copy.deepcopy(model).to(torch.float64, print_details=False)


def rerun_log_probs(model, hook_name: str, tokens: torch.Tensor, removed: torch.Tensor) -> np.ndarray:
    """[n, ctx, V] log-probs of n full forwards of one sequence ``tokens`` [ctx], forward i with
    ``removed[i]`` ([n, ctx, d_in]) subtracted at the hook (run_with_hooks, from the tokens)."""

    def hook(act, hook):
        return act - removed.view(act.shape).to(act.dtype)

    with torch.no_grad():
        logits = model.run_with_hooks(tokens.expand(len(removed), -1), fwd_hooks=[(hook_name, hook)])
    return torch.log_softmax(logits.double(), -1).numpy()


def removal_at(act: np.ndarray, positions: list[int], direction: torch.Tensor) -> torch.Tensor:
    """[n, ctx, d_in] float64: copy i holds act[p] * direction at p = positions[i] only."""
    removed = torch.zeros(len(positions), len(act), len(direction), dtype=torch.float64)
    for i, p in enumerate(positions):
        removed[i, p] = float(act[p]) * direction.double()
    return removed


EXACT_FLOOR = 1e-5  # float32 re-runs' log-prob changes were up to ~3e-6 off float64 ones, whatever their size


def exact_tolerance(delta: np.ndarray) -> float:
    """What a float32 re-run keeps against a float64 one: 1e-5 of the largest change, plus
    EXACT_FLOOR, below which float32 log-probs cannot resolve a change."""
    return 1e-5 * float(np.abs(delta).max()) + EXACT_FLOOR


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("post_norm", [False, True], ids=["layernorm", "post-norm"])
def test_exact_effects_match_a_single_position_rerun(tmp_path, seed, post_norm):
    """Every hover of effects: exact == full forwards of its sequence through a float64 copy
    of the model (run_with_hooks, from the tokens) with a*decoder[f] subtracted at the hook
    at that one position, against the clean float64 forward; SAE and MLP-neuron dictionaries,
    also through Gemma-style post-norms."""
    src = project(
        tmp_path, seed, post_norm=post_norm, effects="exact", top_examples=3, n_intervals=2, examples_per_interval=1
    )
    rng = random.Random(seed)
    for d in src.dictionaries:
        d.feature_ids = sorted(rng.sample(list(d.feature_ids), 6))
    _, feats = build(src, tmp_path)
    notes = [s.norm_note for s in dictionary_summaries(read_manifest(tmp_path / "cache"))]
    assert all(
        note.endswith(
            "hovers: the model re-run with the feature removed at this position only (SAE error "
            "kept, final norm recomputed)"
        )
        for note in notes
    ), notes
    model64, k = float64_copy(src.model), src.config.features.hover_top
    checked = 0
    for i, d in enumerate(src.dictionaries):
        ref = Reference(src, d)
        dec = d.decoder().detach()
        for fd in feats[i].values():
            a, _ = ref.column(fd.feature)
            hovers: dict[int, dict[int, list]] = {}  # seq -> position -> its hovers (one per window showing it)
            for ex, p in shown(fd):
                if ex.hovers[p] is not None:
                    hovers.setdefault(ex.seq, {}).setdefault(ex.start + p, []).append(ex.hovers[p])
            for seq, at in hovers.items():
                positions = sorted(at)
                row = a[seq * ref.ctx : (seq + 1) * ref.ctx]
                removed = torch.cat(
                    [torch.zeros(1, ref.ctx, d.d_in, dtype=torch.float64), removal_at(row, positions, dec[fd.feature])]
                )
                lp = rerun_log_probs(model64, d.hook_name, src.data.tokens[seq], removed)  # [1 + n, ctx, V]
                for j, pos in enumerate(positions):
                    delta = lp[1 + j, pos] - lp[0, pos]
                    for hover in at[pos]:
                        check_hover(
                            hover,
                            delta,
                            int(ref.tokens[seq, pos + 1]),
                            k,
                            f"seed={seed} {d.name} {fd.feature} ({seq},{pos})",
                            atol=exact_tolerance(delta),
                        )
                        checked += 1
    assert checked > 100, f"seed={seed}: only {checked}"


def table_hover(table, h: int) -> SimpleNamespace:
    """Row h of a HoverTable, shaped as a cached hover for ``check_hover``."""
    lists = {
        side: SimpleNamespace(
            token_ids=getattr(table, f"{side}_ids")[h].tolist(), values=getattr(table, f"{side}_vals")[h].tolist()
        )
        for side in ("top", "bottom")
    }
    return SimpleNamespace(loss_effect=float(table.loss[h]), **lists)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("begin", ["captured", "tokens"])
def test_exact_hovers_remove_the_feature_at_one_position_only(tmp_path, seed, begin):
    """exact_hovers on its own, for SAE features active at 3+ positions of a sequence, every
    active position hovered, the hovers in random order and a random small batch_size (many
    passes of copies cut to different lengths), re-run from the captured residual or from the
    tokens: each hover == the float64 single-position re-run, and in a good share of the
    hovers after a sequence's first active position it differs from removing the feature at
    every active position (the former convention, which folds the removal at earlier
    positions in) by far more than the tolerance; at the first active position the two agree
    (a causal model: later removals do not reach it)."""
    from sitegen.compute.effects import exact_hovers

    src = project(tmp_path, seed)
    model, d, tokens = src.model, src.dictionaries[0], src.data.tokens
    n_seq, ctx = tokens.shape
    assert d.hook_name == "blocks.1.hook_resid_pre"
    final_hook = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[d.hook_name, final_hook])
        acts = d.encode(cache[d.hook_name].reshape(n_seq * ctx, -1)).double().numpy()  # [n_tok, d_sae]
    rng = np.random.default_rng(seed)
    active = acts.reshape(n_seq, ctx, -1)[:, : ctx - 1] > 0  # [n_seq, ctx - 1, d_sae] hoverable
    pairs = np.argwhere(active.sum(1) >= 3)  # (seq, feature)
    pairs = pairs[rng.choice(len(pairs), min(len(pairs), 10), replace=False)]
    features = np.unique(pairs[:, 1])
    hov = np.array(
        [
            (np.searchsorted(features, f), s * ctx + p)  # (row of ``features``, flat position)
            for s, f in pairs
            for p in np.nonzero(active[s, :, f])[0]
        ]
    )
    hov = hov[rng.permutation(len(hov))]
    rows, flat = torch.tensor(hov[:, 0]), torch.tensor(hov[:, 1])
    decoder = d.decoder().detach()  # [d_sae, d_in]
    removed = torch.tensor(acts[hov[:, 1], features[hov[:, 0]]], dtype=torch.float32)  # [h] as the engine holds them
    k = 5
    table = exact_hovers(
        model,
        hook_name=d.hook_name,
        start=cache[d.hook_name] if begin == "captured" else None,
        tokens=tokens,
        final=cache[final_hook].reshape(n_seq * ctx, -1),
        decoder=decoder[features],
        rows=rows,
        flat=flat,
        acts=removed,
        next_tok=tokens.reshape(-1)[flat + 1],
        k=k,
        batch_size=int(rng.integers(1, 4)),
        release=lambda: None,
    )
    model64 = float64_copy(model)
    first_agree, later, differ = 0, 0, 0
    for s, f in pairs:
        row = acts[s * ctx : (s + 1) * ctx, f]
        everywhere = torch.tensor(row)[:, None] * decoder[f].double()  # [ctx, d_in] the former removal
        positions = np.nonzero(active[s, :, f])[0].tolist()
        lp = rerun_log_probs(
            model64,
            d.hook_name,
            tokens[s],
            torch.cat(
                [
                    torch.zeros(1, ctx, d.d_in, dtype=torch.float64),
                    everywhere[None],
                    removal_at(row, positions, decoder[f]),
                ]
            ),
        )
        for j, p in enumerate(positions):
            h = int(np.nonzero((hov[:, 1] == s * ctx + p) & (features[hov[:, 0]] == f))[0][0])
            single, former = lp[2 + j, p] - lp[0, p], lp[1, p] - lp[0, p]
            msg = f"seed={seed} feature {f} ({s},{p})"
            check_hover(table_hover(table, h), single, int(tokens[s, p + 1]), k, msg, atol=exact_tolerance(single))
            gap = np.abs(single - former).max()
            if j == 0:
                assert gap <= exact_tolerance(single), f"{msg}: removals after the first active position reach it"
                first_agree += 1
            else:
                later += 1
                differ += bool(gap > 100 * exact_tolerance(single))
    assert first_agree == len(pairs) and later >= 10, f"seed={seed}: {len(pairs)} pairs, {later} later hovers"
    assert differ >= later / 2, f"seed={seed}: only {differ} of {later} single-position hovers differ from the former"


@pytest.mark.parametrize("seed", SEEDS)
def test_direct_effects_with_a_logit_softcap(tmp_path, seed):
    src = project(tmp_path, seed, top_examples=3, n_intervals=2, examples_per_interval=2)
    src.model.cfg.output_logits_soft_cap = 1.5  # Gemma-2 style: the log-prob ranking varies by position
    _, feats = build(src, tmp_path)
    checked = 0
    for i, d in enumerate(src.dictionaries):
        ref = Reference(src, d)
        for fd in feats[i].values():
            checked += check_direct_hovers(ref, fd, src.config.features, f"seed={seed} {d.name} {fd.feature}")
    assert checked > 100, f"seed={seed}: only {checked}"


def check_post_norm_hovers(ref: Reference, fd, r: np.ndarray, s_post: np.ndarray, msg: str) -> int:
    """Direct hovers of a feature whose residual direction ``r`` passes a post-norm with clean
    scales ``s_post`` [n_tok], on an RMSNorm model: final residual minus act * r / s_post, the
    final norm's scale frozen, in float64 against the clean logits recomputed the same way."""
    model = ref.model
    eps, w_final = model.cfg.eps, model.ln_final.w.detach().double().numpy()
    W_U, b_U = model.W_U.detach().double().numpy(), model.b_U.detach().double().numpy()
    checked = 0
    for ex, i in shown(fd):
        if ex.hovers[i] is None:
            continue
        flat = ex.seq * ref.ctx + ex.start + i
        x, act = ref.final[flat], ref.column(fd.feature)[0][flat]
        scale = np.sqrt((x**2).mean() + eps)
        new, clean = ((y / scale * w_final) @ W_U + b_U for y in (x - act * r / s_post[flat], x))
        delta = log_softmax(new) - log_softmax(clean)
        where = f"{msg} ({ex.seq},{ex.start + i})"
        check_hover(
            ex.hovers[i],
            delta,
            int(ref.tokens.reshape(-1)[flat + 1]),
            ref.src.config.features.hover_top,
            where,
            basis=fd.hover_basis,
        )
        check_direct_parameters(ex.hovers[i], fd.hover_basis, act / s_post[flat] / scale, delta, False, where)
        checked += 1
    return checked


@pytest.mark.parametrize("seed", SEEDS)
def test_direct_effects_through_a_post_norm(tmp_path, seed):
    """Gemma 2/3 style blocks (RMSNorm after the MLP, ln2_post): a neuron adds
    a * (W_out[i] * ln2_post.w) / s_post(p) to the residual stream, with the post-norm's clean
    scale s_post(p) recomputed here from the MLP's own output; the final RMSNorm's scale frozen."""
    src = project(tmp_path, seed, post_norm=True, top_examples=3, n_intervals=2, examples_per_interval=2)
    _, feats = build(src, tmp_path)
    model, d = src.model, src.dictionaries[1]
    assert d.kind == "neurons" and model.cfg.use_normalization_before_and_after
    ref = Reference(src, d)
    mlp, ln2_post = model.blocks[d.layer].mlp, model.blocks[d.layer].ln2_post
    W_out, b_out = mlp.W_out.detach().double().numpy(), mlp.b_out.detach().double().numpy()
    w_post, eps = ln2_post.w.detach().double().numpy(), model.cfg.eps
    w_final, W_U = model.ln_final.w.detach().double().numpy(), model.W_U.detach().double().numpy()
    out = ref.hook @ W_out + b_out  # [n_tok, d_model] the MLP's output before ln2_post
    s_post = np.sqrt((out**2).mean(1) + eps)
    checked = 0
    for fd in feats[1].values():
        r = W_out[fd.feature] * w_post
        u = (r * w_final) @ W_U
        assert all(close(v, u[i]) for v, i in zip(fd.logit_top.values, np.argsort(-u, kind="stable"))), fd.feature
        checked += check_post_norm_hovers(ref, fd, r, s_post, f"seed={seed} neuron {fd.feature}")
    assert checked > 50, f"seed={seed}: only {checked}"


@pytest.mark.parametrize("seed", SEEDS)
def test_attention_sae_direct_effects_through_a_post_norm(tmp_path, seed):
    """An SAE on ``attn.hook_z`` (as Gemma Scope's attention SAEs) of a Gemma-style model: its
    decoder rows reach the residual stream through W_O and ln1_post, whose clean scale is
    recomputed here from the attention output."""
    sae_dir = tmp_path / "attn_sae"
    tiny_sae(hook="blocks.0.attn.hook_z", d_in=32, seed=seed).save_model(sae_dir)
    path = write_project(
        tmp_path,
        seed=seed,
        post_norm=True,
        neurons=False,
        extra={
            "dictionaries": [{"name": "attn", "kind": "sae", "path": str(sae_dir)}],
            "features": {"top_examples": 3, "n_intervals": 2, "examples_per_interval": 2},
        },
    )
    src = load_sources(load_config(path))
    _, feats = build(src, tmp_path)
    model, d = src.model, src.dictionaries[0]
    ref = Reference(src, d)
    attn, ln1_post = model.blocks[0].attn, model.blocks[0].ln1_post
    W_O = attn.W_O.detach().double().numpy().reshape(-1, model.cfg.d_model)  # [n_heads * d_head, d_model]
    b_O, eps = attn.b_O.detach().double().numpy(), model.cfg.eps
    w_post = ln1_post.w.detach().double().numpy()
    s_post = np.sqrt(((ref.hook @ W_O + b_O) ** 2).mean(1) + eps)
    dec = d.decoder().detach().double().numpy()
    checked = 0
    for fd in feats[0].values():
        r = (dec[fd.feature] @ W_O) * w_post
        checked += check_post_norm_hovers(ref, fd, r, s_post, f"seed={seed} attn feature {fd.feature}")
    assert checked > 20, f"seed={seed}: only {checked}"


@pytest.mark.parametrize("seed", SEEDS)
def test_log_sum_exp_change_keeps_relative_precision(seed):
    """lse_change (float32) against LSE(lp - c u) - LSE(lp) in float64 for changes c*u from 1e-7
    to ~100 (past LARGE_CHANGE), over spread-out logits and over confident ones (one token holds
    almost all the probability) where the removal takes most of it away: within 1e-5 of the
    largest |c u|, and always finite."""
    from sitegen.compute.effects import LARGE_CHANGE, lse_change

    g = torch.Generator().manual_seed(seed)
    h, V = 80, 3000
    logits = torch.randn(h, V, generator=g, dtype=torch.float64) * 4
    confident = torch.arange(h) % 2 == 1
    logits[confident, 7] += 40  # p(token 7) ~ 1
    clean_lp = torch.log_softmax(logits, 1).float()
    u = torch.randn(h, V, generator=g)
    u[confident, 7] = 3.0  # the largest u: removing the feature lowers the confident token most
    coef = torch.logspace(-7, 1.5, h)[torch.randperm(h, generator=g)][:, None] / u.abs().amax(1, keepdim=True)
    x = (coef * u).double()
    assert 0 < int((x.abs().amax(1) > LARGE_CHANGE).sum()) < h
    rows = torch.arange(h)
    got = lse_change(clean_lp, clean_lp.exp(), rows, u, rows, coef, u.abs().amax(1)).double()
    want = torch.logsumexp(clean_lp.double() - x, 1) - torch.logsumexp(
        clean_lp.double(), 1
    )  # float32 lp sum to 1 +- 1e-7
    err = (got - want).abs() / x.abs().amax(1)
    assert bool(torch.isfinite(got).all()), f"seed={seed}"
    assert float(err.max()) < 1e-5, f"seed={seed} worst row {int(err.argmax())}: {float(err.max())}"


def test_summaries_and_notes(tmp_path):
    src = project(tmp_path, 0)
    build(src, tmp_path)
    sums = dictionary_summaries(read_manifest(tmp_path / "cache"))
    assert [s.name for s in sums] == ["sae", "neurons"]
    assert sums[1].feature_ids == list(range(16)) and sums[1].kind == "neurons"
    assert all(s.effects == "direct" and "mean-centred" in s.norm_note and "frozen" in s.norm_note for s in sums)


@pytest.mark.parametrize("seed", SEEDS)
def test_direct_hovers_against_float64_and_their_chunk_mates(seed):
    """direct_hovers over a logit table with many more rows than hovers (as the build's hover
    phase reads it), for random pairs sorted by position: each shift is the float64
    LSE(lp - c u) - LSE(lp), each loss c u[next] + shift; and every hover computed alone or
    with any subset of the others is bit-for-bit the same (a resumed build or another executor
    computes other chunk-mates)."""
    from sitegen.compute.effects import direct_hovers, frozen_scale, hover_basis, norm_convention

    g = torch.Generator().manual_seed(seed)
    model = tiny_model(seed % 7)
    norm = norm_convention(model)
    n_tok, n_rows, h = 40, 300, 60
    final = torch.randn(n_tok, model.cfg.d_model, generator=g) * 3
    u = torch.randn(n_rows, model.cfg.d_vocab, generator=g) * torch.logspace(-4, 1, n_rows)[:, None]
    basis = hover_basis(model, u, 5)
    assert basis is not None
    flat = torch.randint(0, n_tok - 1, (h,), generator=g).sort().values
    rows = torch.randint(0, n_rows, (h,), generator=g)
    acts = torch.rand(h, generator=g) * 4
    next_tok = torch.randint(0, model.cfg.d_vocab, (h,), generator=g)

    def hovers(keep: torch.Tensor):
        return direct_hovers(
            model,
            norm=norm,
            final=final,
            u=u,
            u_max=u.abs().amax(1),
            basis=basis[0],
            rows=rows[keep],
            flat=flat[keep],
            acts=acts[keep],
            next_tok=next_tok[keep],
            k=5,
            release=lambda: None,
        )

    every = hovers(torch.arange(h))
    with torch.no_grad():
        clean = torch.log_softmax(model.unembed(model.ln_final(final[flat][:, None]))[:, 0].double(), 1)
    c = acts.double() / frozen_scale(norm, final[flat], model.cfg.eps).double()
    want = torch.logsumexp(clean - c[:, None] * u[rows].double(), 1) - torch.logsumexp(clean, 1)
    scale = 1e-5 * (1 + (c[:, None] * u[rows].double()).abs().amax(1))
    assert bool(((every.shift.double() - want).abs() < scale).all()), f"seed={seed}"
    loss = c * u[rows, next_tok].double() + want
    assert bool(((every.loss.double() - loss).abs() < scale).all()), f"seed={seed}"
    for _ in range(3):
        keep = torch.randperm(h, generator=g)[: int(torch.randint(1, h, (1,), generator=g))].sort().values
        part = hovers(keep)
        for field in ("loss", "shift", "coef", "top_vals", "bottom_vals", "top_ids"):
            assert torch.equal(getattr(part, field), getattr(every, field)[keep]), f"seed={seed} {field}"
