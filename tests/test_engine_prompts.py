"""Prompt pages' numbers against brute force on tiny random models in float64 (fixed and fresh
seeds, printed): activation x gradient against central finite differences for SAE latents, MLP
neurons and attention-head pairs (the final norm's scale frozen); direct effects against the
metric's explicit change through the frozen final norm; ablations against explicit re-runs; the
SAE splice leaves the logits bit-identical; upstream tracing against finite differences."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import yaml
from fixtures import write_project

from sitegen.cache.prompt_data import PromptData, PromptNode
from sitegen.compute.prompts import Graph, prompt_data
from sitegen.config import load_config
from sitegen.sources import load_sources

SEEDS = [0, random.randrange(10**6)]
PROMPTS = [
    {"text": "w1 w2 w3 w4 w5 w6 w7", "target": "w7", "distractor": "w8"},
    {"text": "w3 w9 w3 w11 w3", "target": "w9", "position": -2},
]


def prompt_sources(tmp_path: Path, seed: int, *, post_norm: bool = False, float64: bool = True):
    path = write_project(tmp_path, seed=seed, n_kv_heads=2, post_norm=post_norm)
    cfg = yaml.safe_load(path.read_text())
    cfg["dictionaries"].append({"name": "heads", "kind": "attention_heads", "layers": "all"})
    cfg["prompts"] = PROMPTS
    cfg["attribution"] = {"traced": 12}
    path.write_text(yaml.safe_dump(cfg))
    src = load_sources(load_config(path))
    if float64:
        src.model.to(torch.float64)
        src.model.cfg.dtype = torch.float64
        for d in src.dictionaries:
            if hasattr(d, "sae"):
                d.sae.to(dtype=torch.float64)
    return src


def metric(src, p, logits: torch.Tensor) -> float:
    at = logits.detach()[0, p.position].double()
    if p.distractor is not None:
        return float(at[p.target] - at[p.distractor])
    return float(-torch.log_softmax(at, -1)[p.target])


def clean_cache(src, p):
    with torch.no_grad():
        return src.model.run_with_cache(torch.tensor([p.token_ids]))[1]


def perturbed(src, p, node: PromptNode, eps: float, scale: torch.Tensor, extra: list | None = None) -> torch.Tensor:
    """Logits with ``node``'s activation moved by ``eps`` (the final norm's scale frozen at ``scale``)."""
    model, n_dicts = src.model, len(src.dictionaries)

    def freeze(x, hook):
        return scale

    hooks = [("ln_final.hook_scale", freeze), *(extra or [])]
    if node.dictionary >= n_dicts:
        layer, head = src.heads[node.dictionary - n_dicts].head_of(node.feature)

        def bump_pattern(a, hook):
            a = a.clone()
            a[0, head, node.position, node.key] += eps
            return a

        hooks.append((f"blocks.{layer}.attn.hook_pattern", bump_pattern))
    else:
        d = src.dictionaries[node.dictionary]
        if hasattr(d, "sae"):

            def bump_latent(x, hook):
                lat = d.sae.encode(x)
                up = lat.clone()
                up[0, node.position, node.feature] += eps
                return x + d.sae.decode(up) - d.sae.decode(lat)

            hooks.append((d.hook_name, bump_latent))
        else:

            def bump_neuron(x, hook):
                x = x.clone()
                x[0, node.position, node.feature] += eps
                return x

            hooks.append((d.hook_name, bump_neuron))
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        return model(torch.tensor([p.token_ids]))


def fd_act_grad(src, p, node: PromptNode, scale: torch.Tensor) -> float:
    eps = 1e-5
    hi = metric(src, p, perturbed(src, p, node, eps, scale))
    lo = metric(src, p, perturbed(src, p, node, -eps, scale))
    return node.activation * (hi - lo) / (2 * eps)


def close(x: float, ref: float, rtol: float = 2e-3, atol: float = 1e-5) -> bool:
    return abs(x - ref) <= atol + rtol * abs(ref)


@pytest.mark.parametrize("seed", SEEDS)
def test_act_grad_direct_and_ablations_against_brute_force(tmp_path, seed):
    print("seed", seed)
    src = prompt_sources(tmp_path, seed)
    model = src.model
    for p in src.prompts:
        pd: PromptData = prompt_data(src, p, src.config.attribution)
        cache = clean_cache(src, p)
        scale = cache["ln_final.hook_scale"]
        assert close(pd.metric, metric(src, p, model(torch.tensor([p.token_ids])).detach()))
        kinds = {}
        for node in pd.nodes:
            kinds.setdefault(node.dictionary, []).append(node)
        assert set(kinds) == {0, 1, 2}, "latents, neurons and head pairs all in the table"
        for nodes in kinds.values():
            for node in nodes[:4]:
                assert node.position <= p.position
                assert close(node.act_grad, fd_act_grad(src, p, node, scale)), (seed, node)
        # direct effect: the metric's change through the frozen final norm, along the node's write
        resid = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"][0].double()
        w_u = model.W_U.double()

        def m_of(r: torch.Tensor, scale=scale, p=p, w_u=w_u) -> float:  # through the frozen final LayerNorm
            x = r - r.mean(-1, keepdim=True)
            logits = (x / scale[0].double()) * model.ln_final.w.double() + model.ln_final.b.double()
            return metric(src, p, (logits @ w_u + model.b_U.double())[None])

        for nodes in kinds.values():
            for node in nodes[:4]:
                write = write_of(src, cache, node)
                e = 1e-4
                up, down = resid.clone(), resid.clone()
                up[node.position] += e * write
                down[node.position] -= e * write
                ref = (m_of(up) - m_of(down)) / (2 * e)
                assert close(node.direct, ref), (seed, node, ref)
                assert close(node.write_norm, float(write.norm())), (seed, node)
        # ablations: an explicit re-run per node
        for ab in pd.ablations:
            node = pd.nodes[ab.node]
            assert ab.estimate == -node.act_grad
            logits = ablated_logits(src, p, node)
            ref = metric(src, p, logits) - metric(src, p, model(torch.tensor([p.token_ids])).detach())
            assert close(ab.change, ref, rtol=2e-3, atol=1e-4), (seed, node, ab, ref)
        assert len(pd.ablations) == min(20, len(pd.nodes))
        # upstream nodes: finite differences of the traced node's activation
        assert len(pd.traces) == min(12, len(pd.nodes))
        for trace in pd.traces:
            target = pd.nodes[trace.node]
            first_heads = target.dictionary == 2 and src.heads[0].head_of(target.feature)[0] == 0
            # layer-0 heads read only the embeddings: nothing of the site's dictionaries is upstream
            assert bool(trace.upstream) != first_heads, (seed, target)
        for trace in pd.traces:
            target = pd.nodes[trace.node]
            for up in trace.upstream[:3]:
                assert up.node.position <= target.position
                eps = 1e-5
                hi = node_activation(src, p, target, up.node, eps)
                lo = node_activation(src, p, target, up.node, -eps)
                assert close(up.act_grad, up.node.activation * (hi - lo) / (2 * eps)), (seed, target, up)


def write_of(src, cache, node: PromptNode) -> torch.Tensor:
    """What the node adds to the residual stream (LayerNorm model: no post-sublayer norm)."""
    model, n_dicts = src.model, len(src.dictionaries)
    if node.dictionary >= n_dicts:
        layer, head = src.heads[node.dictionary - n_dicts].head_of(node.feature)
        v = cache[f"blocks.{layer}.attn.hook_v"][0, node.key, head // 2].double()
        a = cache[f"blocks.{layer}.attn.hook_pattern"][0, head, node.position, node.key].double()
        return a * v @ model.blocks[layer].attn.W_O[head].double()
    d = src.dictionaries[node.dictionary]
    if hasattr(d, "sae"):
        return node.activation * d.sae.W_dec[node.feature].double()
    return node.activation * model.blocks[d.layer].mlp.W_out[node.feature].double()


def ablated_logits(src, p, node: PromptNode) -> torch.Tensor:
    model, n_dicts = src.model, len(src.dictionaries)
    if node.dictionary >= n_dicts:
        layer, head = src.heads[node.dictionary - n_dicts].head_of(node.feature)

        def zero(a, hook):
            a = a.clone()
            a[0, head, node.position, node.key] = 0
            return a

        hooks = [(f"blocks.{layer}.attn.hook_pattern", zero)]
    else:
        d = src.dictionaries[node.dictionary]
        if hasattr(d, "sae"):

            def remove(x, hook):
                lat = d.sae.encode(x)
                cut = lat.clone()
                cut[0, node.position, node.feature] = 0
                return x + d.sae.decode(cut) - d.sae.decode(lat)

            hooks = [(d.hook_name, remove)]
        else:

            def zero_neuron(x, hook):
                x = x.clone()
                x[0, node.position, node.feature] = 0
                return x

            hooks = [(d.hook_name, zero_neuron)]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        return model(torch.tensor([p.token_ids]))


def node_activation(src, p, target: PromptNode, moved: PromptNode, eps: float) -> float:
    """``target``'s activation with ``moved``'s activation moved by ``eps``."""
    seen = {}
    n_dicts = len(src.dictionaries)
    if target.dictionary >= n_dicts:
        layer, head = src.heads[target.dictionary - n_dicts].head_of(target.feature)
        name = f"blocks.{layer}.attn.hook_pattern"

        def read(a, hook):
            seen["a"] = float(a[0, head, target.position, target.key])

    else:
        d = src.dictionaries[target.dictionary]
        name = d.hook_name

        def read(x, hook):
            lat = d.sae.encode(x) if hasattr(d, "sae") else x
            seen["a"] = float(lat[0, target.position, target.feature])

    scale = clean_cache(src, p)["ln_final.hook_scale"]
    perturbed(src, p, moved, eps, scale, extra=[(name, read)])
    return seen["a"]


def test_the_sae_splice_leaves_the_logits_bit_identical(tmp_path):
    src = prompt_sources(tmp_path, 0, post_norm=True, float64=False)
    p = src.prompts[0]
    tokens = torch.tensor([p.token_ids])
    with torch.no_grad():
        clean = src.model(tokens)
        graph = Graph(src, len(p.token_ids))
        with src.model.hooks(fwd_hooks=graph.hooks()):
            spliced = src.model(tokens)
    assert torch.equal(clean, spliced)
    pd = prompt_data(src, p, src.config.attribution)  # the post-norm model runs end to end
    assert pd.nodes and all(abs(n.act_grad) >= abs(m.act_grad) for n, m in zip(pd.nodes, pd.nodes[1:]))


def check_top(got, probs: torch.Tensor, k: int, what: str) -> None:
    """``got`` (TokenValues) = the k most likely tokens of ``probs`` [vocab] (float64), most likely
    first, ties the lower id; exact ids unless two of the top k + 1 nearly tie."""
    p = probs.tolist()
    ranked = sorted(range(len(p)), key=lambda t: (-p[t], t))[: k + 1]
    assert len(got.token_ids) == k, what
    assert all(close(v, p[t], rtol=1e-3, atol=1e-7) for t, v in zip(got.token_ids, got.values)), (what, got)
    if all(p[a] - p[b] > 1e-6 for a, b in zip(ranked, ranked[1:])):
        assert got.token_ids == ranked[:k], (what, got.token_ids, ranked[:k])
    else:
        assert min(got.values) >= p[ranked[k - 1]] * (1 - 1e-3), (what, got)


@pytest.mark.parametrize("seed", SEEDS)
def test_layer_attribution_and_predictions_against_autograd_and_softmax(tmp_path, seed):
    """Per position and layer, attention/MLP output . d metric / d output: the outputs from
    run_with_cache, the gradient by torch.autograd through zero leaves added at each output (the
    final norm's scale frozen at its clean value), in float64; predictions: float64 softmax of the
    clean logits, top 10 at the metric's position and top 3 at every position."""
    print("seed", seed)
    src = prompt_sources(tmp_path, seed)
    model, n_layers = src.model, src.model.cfg.n_layers
    for p in src.prompts:
        pd: PromptData = prompt_data(src, p, src.config.attribution)
        tokens = torch.tensor([p.token_ids])
        with torch.no_grad():
            logits, cache = model.run_with_cache(tokens)
        names = [f"blocks.{layer}.{point}" for layer in range(n_layers) for point in ("hook_attn_out", "hook_mlp_out")]
        zeros = {n: torch.zeros_like(cache[n], requires_grad=True) for n in names}
        scale = cache["ln_final.hook_scale"]
        hooks = [(n, lambda x, hook, zeros=zeros: x + zeros[hook.name]) for n in names]
        with model.hooks(fwd_hooks=[*hooks, ("ln_final.hook_scale", lambda x, hook, scale=scale: scale)]):
            at = model(tokens)[0, p.position].double()
        m = at[p.target] - at[p.distractor] if p.distractor is not None else -torch.log_softmax(at, -1)[p.target]
        grads = torch.autograd.grad(m, [zeros[n] for n in names])
        ref = torch.stack([(cache[n][0] * g[0]).sum(-1) for n, g in zip(names, grads)], -1)  # [pos, layer * 2]
        ref = ref.reshape(len(p.token_ids), n_layers, 2)
        assert bool((ref[p.position + 1 :] == 0).all()) and bool((ref[: p.position + 1] != 0).any())
        got = torch.tensor(pd.layer_attribution, dtype=torch.float64)
        assert got.shape == ref.shape, (seed, got.shape)
        assert all(close(float(x), float(r)) for x, r in zip(got.reshape(-1), ref.reshape(-1))), (seed, got, ref)
        probs = torch.softmax(logits[0].double(), -1)
        check_top(pd.top_predictions, probs[p.position], 10, f"seed {seed} {p.slug} top predictions")
        assert len(pd.next_tokens) == len(p.token_ids), seed
        for t, tv in enumerate(pd.next_tokens):
            check_top(tv, probs[t], 3, f"seed {seed} {p.slug} next tokens at {t}")
