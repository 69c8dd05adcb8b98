"""Attention heads as a dictionary: ``kind: attention_heads`` over one layer or several.

A head's id is ``index of its layer in the dictionary's layers * n_heads + head``, so a
one-layer dictionary's ids are the head numbers. The engine reads ``blocks.L.attn.hook_pattern``
and ``blocks.L.attn.hook_v`` in the one model pass (``compute/heads.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer

from sitegen.cache.head_data import HEADS_KIND
from sitegen.config import DictionaryConfig, feature_ids
from sitegen.errors import SitegenError
from sitegen.hooks import block_hook


@dataclass
class HeadDictionary:
    name: str
    layers: list[int]  # in id order
    n_heads: int  # query heads per layer
    n_kv_heads: int  # key/value heads per layer (grouped-query attention: fewer than n_heads)
    d_head: int
    feature_ids: list[int]
    kind: str = HEADS_KIND

    @property
    def d_sae(self) -> int:
        return len(self.layers) * self.n_heads

    @property
    def hook_name(self) -> str:
        """The pattern hook, for the summary (several layers: ``blocks.{a,b}.attn.hook_pattern``)."""
        if len(self.layers) == 1:
            return block_hook(self.layers[0], "attn.hook_pattern")
        return "blocks.{" + ",".join(map(str, self.layers)) + "}.attn.hook_pattern"

    def head_of(self, feature: int) -> tuple[int, int]:
        """(layer, head) of an id."""
        return self.layers[feature // self.n_heads], feature % self.n_heads

    def kv_head(self, head: int) -> int:
        """The key/value head a query head reads (TransformerLens repeats each one in place)."""
        return head // (self.n_heads // self.n_kv_heads)

    def head_writes(self, v: torch.Tensor, w_o: torch.Tensor, heads: list[int]) -> torch.Tensor:
        """[..., head, key, d_model]: v_key @ W_O[head] for each of ``heads``, a grouped-query head
        reading its key/value head. ``v``: [..., key, kv heads (or heads), d_head] as ``attn.hook_v``
        gives it; ``w_o``: [len(heads), d_head, d_model], those heads' rows of W_O."""
        kv = [self.kv_head(h) if v.shape[-2] != self.n_heads else h for h in heads]
        return torch.einsum("...khd,hdm->...hkm", v[..., kv, :], w_o)

    def heads_by_layer(self) -> dict[int, list[int]]:
        """The built heads of each layer, ascending."""
        out: dict[int, list[int]] = {}
        for f in self.feature_ids:
            layer, head = self.head_of(f)
            out.setdefault(layer, []).append(head)
        return out


def load_heads(model: HookedTransformer, dc: DictionaryConfig, where: str) -> HeadDictionary:
    cfg = model.cfg
    n_layers = cfg.n_layers
    if dc.layer is not None:
        layers = [dc.layer]
    elif dc.layers == "all":
        layers = list(range(n_layers))
    else:
        assert isinstance(dc.layers, list), "config._check validates 'layers'"
        layers = list(dc.layers)
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        key = "layer" if dc.layer is not None else "layers"
        raise SitegenError(f"{where}.{key}: layer {bad[0]} is outside 0..{n_layers - 1}")
    if len(set(layers)) != len(layers):
        raise SitegenError(f"{where}.layers: layer {next(x for x in layers if layers.count(x) > 1)} is listed twice")
    kinds = {type(model.blocks[layer].attn).__name__ for layer in layers}
    if not kinds <= {"Attention", "GroupedQueryAttention"}:
        raise SitegenError(f"{where}.kind: attention of type {sorted(kinds)[0]} is not supported")
    n_kv = cfg.n_key_value_heads or cfg.n_heads
    if cfg.ungroup_grouped_query_attention:
        n_kv = cfg.n_heads
    ids = feature_ids(dc.features, len(layers) * cfg.n_heads, where)
    return HeadDictionary(dc.name, layers, cfg.n_heads, n_kv, cfg.d_head, ids)
