"""Prompt pages: the transformer-debugger's node table for one prompt, precomputed.

One forward and backward pass per prompt gives every node's activation x gradient of the metric
(the final norm's scale detached, SAE latents through a splice that keeps the SAE's error term,
so the output is unchanged), write norm and direct effect; one batched re-run gives the true
zero-ablations of the top nodes; one more backward per traced node gives its upstream nodes.

Nodes are the built features of the site: SAE latents and MLP neurons at each token, attention
heads at each (query, key) pair. A node's write is what it adds to the residual stream, through
a post-sublayer norm (Gemma's ``ln*_post``) with that norm's clean scale frozen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from sitegen.cache.feature_data import TokenValues
from sitegen.cache.files import PROMPTS_FILE, read_prompts, write_prompts
from sitegen.cache.prompt_data import Ablation, PromptData, PromptNode, Trace, Upstream
from sitegen.compute.rounding import rounded
from sitegen.config import AttributionConfig
from sitegen.hooks import MLP_POST, block_hook
from sitegen.sources import Sources
from sitegen.sources.dictionaries import SAEDictionary, post_norm, through_post_norm
from sitegen.sources.prompts import Prompt

N_PREDICTIONS = 10  # top predictions at the metric's position
N_NEXT = 3  # top predictions per token of the strip


class Graph:
    """Hooks for one forward pass with gradients: an SAE splice per SAE dictionary, retained
    tensors for neurons, patterns, values and sub-layer outputs, the final norm's scale detached.
    ``ablate`` (copy index -> list of (kind, ...)) zero-ablates nodes in a batched re-run."""

    def __init__(self, src: Sources, n_tokens: int) -> None:
        self.src, self.model, self.n_tokens = src, src.model, n_tokens
        self.saved: dict[str, torch.Tensor] = {}
        self.latents: dict[int, torch.Tensor] = {}  # per SAE dictionary, [copies, pos, d_sae] leaves
        self.encoded: dict[int, torch.Tensor] = {}  # the same values as encoded from x (in the graph)
        self.ablate: dict[int, list[tuple]] = {}

    def hooks(self) -> list[tuple[str | Callable, Callable]]:
        model = self.model
        out: list[tuple[str | Callable, Callable]] = [("hook_embed", self.leaf)]
        if model.cfg.positional_embedding_type == "standard":
            out.append(("hook_pos_embed", self.leaf))
        for i, d in enumerate(self.src.dictionaries):
            if isinstance(d, SAEDictionary):
                out.append((d.hook_name, self.splice(i, d)))
            else:
                out.append((d.hook_name, self.keep))
        layers = sorted({layer for h in self.src.heads for layer in h.layers})
        for layer in layers:
            out += [(block_hook(layer, "attn.hook_pattern"), self.keep), (block_hook(layer, "attn.hook_v"), self.keep)]
        for layer in range(model.cfg.n_layers):
            out += [(block_hook(layer, "hook_attn_out"), self.keep), (block_hook(layer, "hook_mlp_out"), self.keep)]
            for name in (
                post_norm(model, block_hook(layer, "attn.hook_z")),
                post_norm(model, block_hook(layer, MLP_POST)),
            ):
                if name:
                    out.append((f"{name}.hook_scale", self.keep_detached))
        out.append((block_hook(model.cfg.n_layers - 1, "hook_resid_post"), self.keep))
        if model.cfg.normalization_type is not None:
            out.append(("ln_final.hook_scale", self.detach))
        return out

    def leaf(self, x: torch.Tensor, hook) -> torch.Tensor:
        return x.detach().requires_grad_(True) if torch.is_grad_enabled() else x

    def keep(self, x: torch.Tensor, hook) -> torch.Tensor:
        for copy, nodes in self.ablate.items():
            for kind, name, index in nodes:
                if kind == "zero" and name == hook.name:
                    x = x.clone()
                    x[tuple([copy, *index])] = 0.0
        self.saved[hook.name] = x
        return x

    def keep_detached(self, x: torch.Tensor, hook) -> torch.Tensor:
        self.saved[hook.name] = x.detach()
        return x

    def detach(self, x: torch.Tensor, hook) -> torch.Tensor:
        return x.detach()

    def splice(self, i: int, d: SAEDictionary) -> Callable:
        def hook(x: torch.Tensor, hook) -> torch.Tensor:
            sae = d.sae
            flat = x.reshape(*x.shape[:2], -1)
            lat = sae.encode(flat.to(sae.dtype))  # depends on x: its upstream is traced through it
            # the latents as their own leaf: the output is x exactly (the error term kept, and held
            # fixed when a latent moves), upstream gradients pass x through unchanged
            leaf = lat.detach().requires_grad_(torch.is_grad_enabled())
            self.latents[i], self.encoded[i] = leaf, lat
            recon = sae.decode(leaf)
            out = flat + (recon - recon.detach()).to(flat.dtype)
            for copy, nodes in self.ablate.items():
                for kind, j, index in nodes:
                    if kind == "latent" and j == i:
                        pos, f = index
                        cut = leaf[copy : copy + 1].clone()
                        cut[0, pos, f] = 0.0
                        delta = (sae.decode(cut) - sae.decode(leaf[copy : copy + 1])).to(flat.dtype)
                        out = out.clone()
                        out[copy : copy + 1] += delta
            return out.reshape(x.shape)

        return hook


@dataclass
class Nodes:
    """Every node of the prompt, flat ([n] each), and the graph tensors their activations are read from."""

    dictionary: torch.Tensor  # site dictionary index
    feature: torch.Tensor
    position: torch.Tensor
    key: torch.Tensor  # -1 but for head pairs
    act: torch.Tensor  # detached activations
    units: torch.Tensor  # [n, d_model] the residual write per unit of activation (post-norm scale frozen)
    sources: list[tuple[torch.Tensor, torch.Tensor]]  # (graph tensor, flat index of its nodes in it)
    targets: list[torch.Tensor]  # per source, the tensor a traced node's activation is read from

    def of(self, grads: list[torch.Tensor | None]) -> torch.Tensor:
        """[n] the gradients ``grads`` (one per source tensor; None: zero) at the nodes."""
        parts = [
            torch.zeros(index.numel()) if g is None else g.detach().reshape(-1)[index].float()
            for (_, index), g in zip(self.sources, grads)
        ]
        return torch.cat(parts) if parts else torch.zeros(0)

    def scalar(self, n: int) -> torch.Tensor:
        """Node ``n``'s activation as a differentiable scalar of the graph."""
        total = 0
        for (_, index), tensor in zip(self.sources, self.targets):
            if n < total + index.numel():
                return tensor.reshape(-1)[index[n - total]].float()
            total += index.numel()
        raise IndexError(n)


def post_scale(src: Sources, graph: Graph, hook_name: str) -> torch.Tensor:
    """[pos] the clean scale of the norm between ``hook_name``'s sub-layer and the residual stream (1 without one)."""
    name = post_norm(src.model, hook_name)
    if name is None:
        return torch.ones(graph.n_tokens)
    return graph.saved[f"{name}.hook_scale"][0].reshape(-1).float()


def nodes_of(src: Sources, graph: Graph, position: int) -> Nodes:
    """The built features' nodes at positions <= ``position`` (SAE latents where active; heads at
    every pair key <= query)."""
    model = src.model
    d_model = model.cfg.d_model
    cols: dict[str, list[torch.Tensor]] = {k: [] for k in ("dictionary", "feature", "position", "key", "act", "units")}
    sources: list[tuple[torch.Tensor, torch.Tensor]] = []
    targets: list[torch.Tensor] = []

    def add(index: int, tensor: torch.Tensor, flat: torch.Tensor, target: torch.Tensor, **values: torch.Tensor) -> None:
        cols["dictionary"].append(torch.full((flat.numel(),), index))
        for k, v in values.items():
            cols[k].append(v)
        sources.append((tensor, flat))
        targets.append(target)

    n_q = position + 1
    with torch.no_grad():
        for i, d in enumerate(src.dictionaries):
            sae = isinstance(d, SAEDictionary)
            tensor = graph.latents[i] if sae else graph.saved[d.hook_name]
            values = tensor.detach()[0].reshape(tensor.shape[1], -1).float()  # [pos, d_sae]
            ids = torch.tensor(d.feature_ids)
            pos, col = (values[:n_q, ids] != 0).nonzero(as_tuple=True)
            act = values[pos, ids[col]]
            dirs = d.residual_directions()
            scale = post_scale(src, graph, d.hook_name)
            units = (
                torch.zeros(len(pos), d_model) if dirs is None else dirs.detach().float()[ids[col]] / scale[pos, None]
            )
            add(
                i,
                tensor,
                pos * values.shape[1] + ids[col],
                graph.encoded[i] if sae else tensor,
                feature=ids[col],
                position=pos,
                key=torch.full_like(pos, -1),
                act=act,
                units=units,
            )
        for j, h in enumerate(src.heads):
            for layer, heads in h.heads_by_layer().items():
                pattern = graph.saved[block_hook(layer, "attn.hook_pattern")]  # [1, head, q, k]
                v = graph.saved[block_hook(layer, "attn.hook_v")].detach()[0].float()  # [k, kv head, d_head]
                hi = torch.tensor(heads)
                w_o = model.blocks[layer].attn.W_O.detach().float()[hi]  # [head, d_head, d_model]
                writes = h.head_writes(v[:n_q], w_o, heads)  # [head, key, d_model]
                hook = block_hook(layer, "attn.hook_z")
                writes = through_post_norm(model, hook, writes)
                scale = post_scale(src, graph, hook)
                hh, q, k = torch.ones(len(heads), n_q, n_q, dtype=torch.bool).tril().nonzero(as_tuple=True)
                ctx = pattern.shape[-1]
                add(
                    len(src.dictionaries) + j,
                    pattern,
                    (hi[hh] * ctx + q) * ctx + k,
                    pattern,
                    feature=torch.tensor([h.layers.index(layer) * h.n_heads + x for x in heads])[hh],
                    position=q,
                    key=k,
                    act=pattern.detach()[0].float()[hi[hh], q, k],
                    units=writes[hh, k] / scale[q, None],
                )
    cat = {k: torch.cat(v) if v else torch.zeros(0) for k, v in cols.items()}
    units = torch.cat(cols["units"]) if cols["units"] else torch.zeros(0, d_model)
    return Nodes(
        cat["dictionary"].long(),
        cat["feature"].long(),
        cat["position"].long(),
        cat["key"].long(),
        cat["act"].float(),
        units,
        sources,
        targets,
    )


def metric_of(logits: torch.Tensor, p: Prompt) -> torch.Tensor:
    """[copies] the prompt's metric from logits [copies, pos, vocab]."""
    at = logits[:, p.position].float()
    if p.distractor is not None:
        return at[:, p.target] - at[:, p.distractor]
    return -torch.log_softmax(at, dim=-1)[:, p.target]


def top_of(probs: torch.Tensor, k: int) -> TokenValues:
    """The k most likely tokens of probs [vocab] (ties: lower id)."""
    order = probs.sort(descending=True, stable=True).indices[:k]
    return TokenValues(order.tolist(), rounded(probs[order]))


def prompt_data(src: Sources, p: Prompt, ac: AttributionConfig) -> PromptData:
    model = src.model
    device = model.cfg.device
    tokens = torch.tensor([p.token_ids], device=device)
    graph = Graph(src, len(p.token_ids))
    with torch.enable_grad(), model.hooks(fwd_hooks=graph.hooks()):
        logits = model(tokens)
        metric = metric_of(logits, p)[0]
        nodes = nodes_of(src, graph, p.position)
        resid = graph.saved[block_hook(model.cfg.n_layers - 1, "hook_resid_post")]
        layer_out = [
            graph.saved[block_hook(layer, point)]
            for layer in range(model.cfg.n_layers)
            for point in ("hook_attn_out", "hook_mlp_out")
        ]
        inputs = [t for t, _ in nodes.sources]
        grads = torch.autograd.grad(metric, [*inputs, resid, *layer_out], retain_graph=True, allow_unused=True)
        act_grad = nodes.act * nodes.of(list(grads[: len(inputs)]))
        final = torch.zeros_like(resid[0]) if grads[len(inputs)] is None else grads[len(inputs)][0].float()
        direct = nodes.act * (nodes.units * final[nodes.position]).sum(-1)
        write_norm = (nodes.act[:, None] * nodes.units).norm(dim=-1)
        layer_attr = torch.stack(
            [
                torch.zeros(len(p.token_ids)) if g is None else (t[0].float() * g[0].float()).sum(-1)
                for t, g in zip(layer_out, grads[len(inputs) + 1 :])
            ],
            dim=-1,
        ).reshape(len(p.token_ids), model.cfg.n_layers, 2)
        kept = kept_rows(act_grad, direct, write_norm, nodes.act, ac.nodes)
        traced = kept[: ac.traced]
        traces = []
        if len(traced):  # one batched backward for all traced nodes
            outputs = torch.stack([nodes.scalar(n) for n in traced.tolist()])
            eye = torch.eye(len(traced), dtype=outputs.dtype, device=outputs.device)
            ups = torch.autograd.grad(
                outputs, inputs, grad_outputs=eye, is_grads_batched=True, retain_graph=True, allow_unused=True
            )
            for row, n in enumerate(traced.tolist()):
                value = nodes.act * nodes.of([None if g is None else g[row] for g in ups])
                value[n] = 0.0
                order = value.abs().sort(descending=True, stable=True).indices[: ac.upstream]
                order = order[value[order] != 0]
                traces.append((n, order, value[order]))
    probs = torch.softmax(logits.detach()[0].float(), dim=-1)
    ablated = kept[: min(ac.ablations, len(kept))]
    changes = ablation_changes(src, p, nodes, ablated)
    values = {
        k: rounded(t.detach())
        for k, t in (("act", nodes.act), ("act_grad", act_grad), ("write_norm", write_norm), ("direct", direct))
    }

    def node(n: int) -> PromptNode:
        return PromptNode(
            dictionary=int(nodes.dictionary[n]),
            feature=int(nodes.feature[n]),
            position=int(nodes.position[n]),
            key=int(nodes.key[n]),
            activation=values["act"][n],
            act_grad=values["act_grad"][n],
            write_norm=values["write_norm"][n],
            direct=values["direct"][n],
        )

    row_of = {n: r for r, n in enumerate(kept.tolist())}
    estimates = rounded(-act_grad[ablated].detach())
    return PromptData(
        index=p.index,
        slug=p.slug,
        text=p.text,
        token_ids=p.token_ids,
        position=p.position,
        target=p.target,
        distractor=p.distractor,
        metric_kind="neg_log_prob" if p.distractor is None else "logit_diff",
        metric=float(rounded(metric.detach().reshape(1))[0]),
        top_predictions=top_of(probs[p.position], N_PREDICTIONS),
        next_tokens=[top_of(probs[t], N_NEXT) for t in range(len(p.token_ids))],
        layer_attribution=rounded(layer_attr.detach()),
        nodes=[node(n) for n in kept.tolist()],
        ablations=[Ablation(row_of[n], c, e) for n, c, e in zip(ablated.tolist(), rounded(changes), estimates)],
        traces=[
            Trace(row_of[n], [Upstream(node(u), v) for u, v in zip(order.tolist(), rounded(value.detach()))])
            for n, order, value in traces
        ],
    )


def kept_rows(
    act_grad: torch.Tensor, direct: torch.Tensor, write_norm: torch.Tensor, act: torch.Tensor, n: int
) -> torch.Tensor:
    """The node table's rows: the top ``n`` by each of |act x grad|, |direct|, write norm and
    |activation|, ordered by |act x grad| descending (ties: earlier node)."""
    keep = torch.zeros(len(act), dtype=torch.bool)
    for score in (act_grad.abs(), direct.abs(), write_norm, act.abs()):
        keep[score.sort(descending=True, stable=True).indices[:n]] = True
    order = act_grad.detach().abs().sort(descending=True, stable=True).indices
    return order[keep[order]]


@torch.no_grad()
def ablation_changes(src: Sources, p: Prompt, nodes: Nodes, ablated: torch.Tensor) -> torch.Tensor:
    """[len(ablated)] the metric with each node zero-ablated at its position (a head: its pair)
    minus the clean metric, in one batched re-run (copy 0 clean, SAE error kept)."""
    if not len(ablated):
        return torch.zeros(0)
    model = src.model
    graph = Graph(src, len(p.token_ids))
    n_dicts = len(src.dictionaries)
    for copy, n in enumerate(ablated.tolist(), start=1):
        d, f, pos, key = (int(t[n]) for t in (nodes.dictionary, nodes.feature, nodes.position, nodes.key))
        if d >= n_dicts:
            hd = src.heads[d - n_dicts]
            layer, head = hd.head_of(f)
            graph.ablate[copy] = [("zero", block_hook(layer, "attn.hook_pattern"), (head, pos, key))]
        elif isinstance(src.dictionaries[d], SAEDictionary):
            graph.ablate[copy] = [("latent", d, (pos, f))]
        else:
            graph.ablate[copy] = [("zero", src.dictionaries[d].hook_name, (pos, f))]
    tokens = torch.tensor([p.token_ids] * (len(ablated) + 1), device=model.cfg.device)
    with model.hooks(fwd_hooks=graph.hooks()):
        metric = metric_of(model(tokens), p)
    return (metric[1:] - metric[0]).cpu()


def prompt_phase(src: Sources, cache_dir: Path, tokens: set[int], progress: bool) -> None:
    """Compute and write ``prompts.json`` (unless a matching earlier build left it); add the
    token ids its pages show to ``tokens``."""
    path = cache_dir / PROMPTS_FILE
    if path.is_file():
        prompts = read_prompts(cache_dir)
    else:
        bar = tqdm(src.prompts, desc="prompts", unit="prompt", disable=not progress)
        prompts = [prompt_data(src, p, src.config.attribution) for p in bar]
        write_prompts(cache_dir, prompts)
    for pd in prompts:
        tokens.update(pd.token_ids_used())
