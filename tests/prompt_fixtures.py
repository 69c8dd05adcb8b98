"""Synthetic but valid prompt data (``cache/prompt_data.py``) for the renderer's tests.

The site (``write_prompt_cache``): dictionaries 0 ``sae`` (layer 1, features 0, 1, 2, 5 built),
1 ``mlp`` (neurons of layer 2), 2 ``heads`` (4 heads of layer 1), 3 ``multi`` (2 heads each of
layers 1 and 2), written by ``head_fixtures.write_head_cache``, then ``prompts.json``.

Each prompt's text mixes ``fixtures.HOSTILE`` and ``site_fixtures.PAYLOADS`` with words, and so
do its tokens (the token table's hostile ids). Its nodes are SAE latents and neurons at a token
and head pairs (query >= key), ranked by |act_grad| (values at 4 significant digits), the first
ones chosen so that the top 20 hold: a layer-2 head pair, a neuron, the same SAE feature at two
positions, and a feature without a page (SAE feature 3: every link to it must be left out).
Ablations' true changes mostly follow their linear estimate -act_grad, with some of the other
sign; traces go one step upstream (earlier layers, same or earlier tokens), one with no upstream
node at all.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
from fixtures import HOSTILE
from head_fixtures import FEATURES, HOSTILE_IDS, HeadSpec, write_head_cache
from site_fixtures import PAYLOADS, DictSpec, round_sig

from sitegen.cache.feature_data import TokenValues
from sitegen.cache.files import write_prompts
from sitegen.cache.prompt_data import Ablation, PromptData, PromptNode, Trace, Upstream

FEATURE_SPECS = [
    *FEATURES,  # 0: sae, layer 1, features 0, 1, 2, 5 of 64
    DictSpec(
        name="mlp", kind="neurons", hook_name="blocks.2.mlp.hook_post", d_in=64, d_sae=256, feature_ids=tuple(range(12))
    ),
]
HEAD_SPECS = [
    HeadSpec(),  # 2: heads, layer 1, 4 heads
    HeadSpec(name="multi", layers=(1, 2), n_heads=2, n_kv_heads=2, zero_write=None, rank_by="pattern"),  # 3
]
UNBUILT = (0, 3)  # (dictionary, feature) of a node whose feature has no page
N_LAYERS = 4
HOSTILE_TEXT = f"The capital of France is {HOSTILE[0]} {PAYLOADS[0]}{PAYLOADS[1]} {HOSTILE[1]} {{{{ 7*7 }}}}"


def slug(index: int, text: str) -> str:
    """As ``sources.prompts.slug_of``."""
    words = re.findall(r"[a-z0-9]+", text.lower())[:5]
    return "-".join([str(index), *words])[:48].rstrip("-")


@dataclasses.dataclass
class PromptSpec:
    text: str
    n_tokens: int
    n_nodes: int
    n_ablations: int
    n_traces: int
    distractor: bool = True
    n_upstream: int = 10


PROMPTS = [
    PromptSpec(HOSTILE_TEXT + " \u202eevil\u200b and\nParis", 24, 600, 20, 3),
    PromptSpec(f"{HOSTILE[2]} the Eiffel tower is in", 8, 60, 5, 1, distractor=False),
    PromptSpec(f"{PAYLOADS[0]}", 2, 4, 0, 0),
]

# (dictionary, layer of the dictionary or of each head id, built ids, kind)
LAYER = {0: 1, 1: 2}


def head_layer(d: int, feature: int) -> int:
    spec = HEAD_SPECS[d - 2]
    return spec.layers[feature // spec.n_heads]


def node_layer(d: int, feature: int) -> int:
    return LAYER[d] if d in LAYER else head_layer(d, feature)


class PromptMaker:
    def __init__(self, seed: int = 0, vocab: int = 4096):
        self.rng = np.random.default_rng(seed)
        self.vocab = vocab

    def r(self, x: float) -> float:
        return round_sig(float(x))

    def token_ids(self, n: int) -> list[int]:
        ids = [int(t) for t in self.rng.integers(0, 12, size=n)]  # common words
        ids[0] = 1
        hostile = list(HOSTILE_IDS)
        for p in range(1, n, 3):  # every third token hostile: HOSTILE then PAYLOADS
            ids[p] = hostile[(p // 3) % len(hostile)]
        if n > 4:
            ids[4] = hostile[-1]  # a payload
        return ids

    def predictions(self, k: int, first: int | None = None) -> TokenValues:
        ids = [int(t) for t in self.rng.permutation(60)[:k]]
        if first is not None:
            ids = [first, *[i for i in ids if i != first]][:k]
        probs = sorted((self.r(x) for x in self.rng.dirichlet(np.ones(k + 2))[:k]), reverse=True)
        return TokenValues(ids, probs)

    def random_key(self, n_pos: int, max_layer: int | None = None, max_pos: int | None = None) -> tuple:
        """(dictionary, feature, position, key) of a random node."""
        rng = self.rng
        while True:
            d = int(rng.choice(4, p=[0.15, 0.35, 0.3, 0.2]))
            if d == 0:
                f = int(rng.choice([0, 1, 2, 5, 3], p=[0.24, 0.24, 0.24, 0.24, 0.04]))
            elif d == 1:
                f = int(rng.integers(0, 12))
            else:
                f = int(rng.integers(0, 4))
            if max_layer is not None and node_layer(d, f) > max_layer:
                continue
            pos = int(rng.integers(0, (max_pos if max_pos is not None else n_pos - 1) + 1))
            key = int(rng.integers(0, pos + 1)) if d >= 2 else -1
            return d, f, pos, key

    def node(self, k: tuple, act_grad: float) -> PromptNode:
        d, f, pos, key = k
        rng = self.rng
        if d >= 2:
            act = rng.uniform(0, 1)
        elif d == 1:
            act = rng.normal(0.5, 1.0)  # GELU neurons can be negative
        else:
            act = rng.uniform(0.05, 12)
        return PromptNode(
            d, f, pos, key, self.r(act), act_grad, self.r(rng.uniform(0.01, 5)), self.r(rng.normal(0, abs(act_grad)))
        )

    def nodes(self, spec: PromptSpec) -> list[PromptNode]:
        n_pos = spec.n_tokens
        forced = [(3, 2, n_pos - 1, n_pos - 2), (1, 4, n_pos - 1, -1), (0, 1, 1, -1), (0, 5, 0, -1)]
        forced += [(0, 1, n_pos - 1, -1), UNBUILT + (n_pos - 1, -1)]
        keys = list(dict.fromkeys(forced if n_pos > 2 else [(0, 1, 1, -1), (2, 1, 1, 0)]))[: spec.n_nodes]
        seen = set(keys)
        while len(keys) < spec.n_nodes:
            k = self.random_key(n_pos)
            if k not in seen:
                seen.add(k)
                keys.append(k)
        mags = sorted((self.r(x) for x in self.rng.lognormal(-3, 1.2, size=len(keys))), reverse=True)
        signs = self.rng.choice([-1.0, 1.0], size=len(keys))
        return [self.node(k, float(s) * m) for k, m, s in zip(keys, mags, signs)]

    def ablations(self, nodes: list[PromptNode], n: int) -> list[Ablation]:
        out = []
        for i, node in enumerate(nodes[:n]):
            estimate = -node.act_grad
            change = estimate * self.rng.uniform(0.3, 1.6)
            if i % 4 == 3:  # the linear estimate fails: the other sign
                change = -change * 0.5
            out.append(Ablation(i, self.r(change), estimate))
        return out

    def traces(self, nodes: list[PromptNode], spec: PromptSpec) -> list[Trace]:
        out = []
        for i, node in enumerate(nodes[: spec.n_traces]):
            layer = node_layer(node.dictionary, node.feature)
            ups: list[Upstream] = []
            if layer > 1:  # nothing below layer 1 in this site: a traced layer-1 node has no upstream node
                keys: dict[tuple, None] = {UNBUILT + (0, -1): None}
                while len(keys) < spec.n_upstream:
                    keys[self.random_key(spec.n_tokens, max_layer=layer - 1, max_pos=node.position)] = None
                for k in keys:
                    up = self.node(k, self.r(self.rng.normal(0, 0.05)))
                    ups.append(Upstream(up, self.r(self.rng.normal(0, 0.2))))
                ups.sort(key=lambda u: -abs(u.act_grad))
            out.append(Trace(i, ups))
        return out

    def prompt(self, index: int, spec: PromptSpec) -> PromptData:
        n_pos = spec.n_tokens
        ids = self.token_ids(n_pos)
        target, distractor = 20, (21 if spec.distractor else None)
        nodes = self.nodes(spec)
        attribution = [
            [[self.r(x) for x in self.rng.normal(0, 0.3 * (p + 1) / n_pos, size=2)] for _ in range(N_LAYERS)]
            for p in range(n_pos)
        ]
        attribution[0] = [[0.0, 0.0] for _ in range(N_LAYERS)]  # BOS: nothing flows
        return PromptData(
            index=index,
            slug=slug(index, spec.text),
            text=spec.text,
            token_ids=ids,
            position=n_pos - 1,
            target=target,
            distractor=distractor,
            metric_kind="logit_diff" if spec.distractor else "neg_log_prob",
            metric=self.r(self.rng.normal(2, 1)),
            top_predictions=self.predictions(10, first=target),
            next_tokens=[self.predictions(3) for _ in range(n_pos)],
            layer_attribution=attribution,
            nodes=nodes,
            ablations=self.ablations(nodes, spec.n_ablations),
            traces=self.traces(nodes, spec),
        )


def make_prompts(seed: int = 0, specs: list[PromptSpec] | None = None) -> list[PromptData]:
    maker = PromptMaker(seed)
    return [maker.prompt(i, spec) for i, spec in enumerate(PROMPTS if specs is None else specs)]


def write_prompt_cache(cache: Path, *, seed: int = 0, specs: list[PromptSpec] | None = None) -> list[PromptData]:
    """A complete cache: the feature and head dictionaries above, then the prompts; returns them."""
    write_head_cache(cache, FEATURE_SPECS, HEAD_SPECS, seed=seed)
    prompts = make_prompts(seed, specs)
    write_prompts(cache, prompts)
    return prompts
