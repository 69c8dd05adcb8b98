"""Dictionaries of features over one hook: an SAE (any SAELens architecture) or
the model's own MLP neurons (an identity dictionary over ``blocks.L.mlp.hook_post``).

The engine sees only the ``Dictionary`` interface below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from transformer_lens import HookedTransformer
from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

from sitegen.config import Config, DictionaryConfig, feature_ids
from sitegen.errors import SitegenError
from sitegen.hooks import ATTN_Z, EMBED_HOOKS, MLP_POST, block_hook, hook_layer, hook_point, is_resid_hook


class Dictionary(Protocol):
    name: str
    kind: str  # "sae" | "neurons"
    hook_name: str
    d_in: int
    d_sae: int
    can_be_negative: bool  # activations may be < 0 (MLP neurons)
    needs_full_encode: bool  # a feature subset cannot be encoded alone (TopK-style)
    feature_ids: list[int]  # the features to build

    def encode(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """[n, d_in] hook activations -> [n, d_sae] float32 feature activations, written into
        ``out`` ([n, d_sae] float32) where the dictionary can (check the returned tensor)."""

    def encode_subset(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """[n, d_in] -> [n, len(ids)]; equal to encode(x)[:, ids]."""

    def decoder(self) -> torch.Tensor:
        """[d_sae, d_in]: each feature's direction in hook space."""

    def residual_directions(self) -> torch.Tensor | None:
        """[d_sae, d_model]: what one unit of each feature writes into the residual
        stream, or None where the hook is not linearly tied to it."""


def post_norm(model: HookedTransformer, hook_name: str) -> str | None:
    """The norm between the sub-layer that ``hook_name`` feeds and the residual stream (Gemma
    2/3's ``ln1_post``/``ln2_post``, OLMo-2-style post-norm ``ln1``/``ln2``), as a module
    name whose ``hook_scale`` the effects freeze; None where the sub-layer output is added as is."""
    layer, point = hook_layer(hook_name), hook_point(hook_name)
    if layer is None or point not in (MLP_POST, ATTN_Z):
        return None
    name = block_hook(layer, "ln2" if point == MLP_POST else "ln1")
    if model.cfg.use_normalization_before_and_after:
        name += "_post"
    elif model.cfg.original_architecture not in POST_NORM_ARCHITECTURES:
        return None
    return name if hasattr(model.get_submodule(name), "hook_scale") else None


def through_post_norm(model: HookedTransformer, hook_name: str, w: torch.Tensor) -> torch.Tensor:
    """[n, d_model] sub-layer output directions as the residual stream receives them with the
    post-norm's scale frozen: mean-centred for a LayerNorm, times its weight (identity without one)."""
    name = post_norm(model, hook_name)
    if name is None:
        return w
    norm = model.get_submodule(name)
    if type(norm).__name__.startswith("LayerNorm"):
        w = w - w.mean(-1, keepdim=True)
    weight = getattr(norm, "w", None)
    return w if weight is None else w * weight.detach().float()


def to_residual(model: HookedTransformer, hook_name: str, w: torch.Tensor) -> torch.Tensor | None:
    """Map [n, d_in] directions at ``hook_name`` into the residual stream (per unit of the hook,
    with any post-norm's scale frozen: the engine divides activations by it per position)."""
    if is_resid_hook(hook_name):
        return w
    layer, point = hook_layer(hook_name), hook_point(hook_name)
    if layer is not None and point == MLP_POST:
        return through_post_norm(model, hook_name, w @ model.blocks[layer].mlp.W_out)
    if layer is not None and point == ATTN_Z:
        w_o = model.blocks[layer].attn.W_O  # [n_heads, d_head, d_model]
        return through_post_norm(model, hook_name, w.reshape(w.shape[0], *w_o.shape[:2]).flatten(1) @ w_o.flatten(0, 1))
    return None


@dataclass
class SAEDictionary:
    name: str
    sae: Any  # sae_lens.SAE (sae_lens is untyped)
    model: HookedTransformer
    feature_ids: list[int]
    kind: str = "sae"

    def __post_init__(self) -> None:
        self.hook_name = self.sae.cfg.metadata.hook_name
        self.d_in = int(self.sae.cfg.d_in)
        self.d_sae = int(self.sae.cfg.d_sae)
        self.architecture = self.sae.cfg.architecture()
        self.can_be_negative = False
        # Subset and in-place encoding reproduce SAELens' encode() for these only (op for op);
        # others run the library's full encode.
        simple = self.architecture in ("standard", "jumprelu") and isinstance(self.sae.activation_fn, torch.nn.ReLU)
        plain = (
            getattr(self.sae.cfg, "normalize_activations", "none") == "none"
            and getattr(self.sae.cfg, "reshape_activations", "none") == "none"
        )
        self.needs_full_encode = not (simple and plain)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        sae = self.sae
        if out is None or self.needs_full_encode or sae.dtype != torch.float32:
            return sae.encode(x.to(sae.dtype)).float()
        # into a reused buffer: no fresh [n, d_sae] allocation (and its page faults) per chunk
        pre = torch.mm(self.sae_input(x), sae.W_enc, out=out).add_(sae.b_enc)
        if self.architecture == "jumprelu":
            above = pre > sae.threshold
            return pre.relu_().mul_(above)
        return pre.relu_()

    def sae_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.sae.dtype)
        return x - self.sae.b_dec if self.sae.cfg.apply_b_dec_to_input else x

    @torch.no_grad()
    def encode_subset(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if self.needs_full_encode:
            return self.encode(x)[:, ids]
        sae = self.sae
        pre = self.sae_input(x) @ sae.W_enc[:, ids] + sae.b_enc[ids]
        if self.architecture == "jumprelu":
            return (torch.relu(pre) * (pre > sae.threshold[ids])).float()
        return torch.relu(pre).float()

    @torch.no_grad()
    def decoder(self) -> torch.Tensor:
        return self.sae.W_dec.float()

    @torch.no_grad()
    def residual_directions(self) -> torch.Tensor | None:
        return to_residual(self.model, self.hook_name, self.decoder())


@dataclass
class NeuronDictionary:
    """The MLP neurons of one layer, each its own feature (identity dictionary)."""

    name: str
    model: HookedTransformer
    layer: int
    feature_ids: list[int]
    kind: str = "neurons"
    can_be_negative: bool = True
    needs_full_encode: bool = False

    def __post_init__(self) -> None:
        assert self.model.cfg.d_mlp is not None, "load_dictionary checks the model has MLPs"
        self.hook_name = block_hook(self.layer, MLP_POST)
        self.d_in = self.d_sae = int(self.model.cfg.d_mlp)

    def encode(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return x.float()

    def encode_subset(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return x[:, ids].float()

    def decoder(self) -> torch.Tensor:
        return torch.eye(self.d_in)

    @torch.no_grad()
    def residual_directions(self) -> torch.Tensor:
        return through_post_norm(self.model, self.hook_name, self.model.blocks[self.layer].mlp.W_out.float())


def hook_width(model: HookedTransformer, hook_name: str) -> int | None:
    """Width of a hook's last dimension (None if the model lacks the hook)."""
    if hook_name not in model.hook_dict:
        return None
    cfg = model.cfg
    point = hook_point(hook_name)
    if point == ATTN_Z:
        return cfg.n_heads * cfg.d_head
    if point in (MLP_POST, "mlp.hook_pre"):
        return cfg.d_mlp
    return cfg.d_model


def load_dictionary(model: HookedTransformer, dc: DictionaryConfig, cfg: Config, where: str) -> Dictionary:
    if dc.kind == "neurons":
        if dc.layer is None or not 0 <= dc.layer < model.cfg.n_layers:
            raise SitegenError(f"{where}.layer: {dc.layer} is outside 0..{model.cfg.n_layers - 1}")
        if model.cfg.d_mlp is None:
            raise SitegenError(f"{where}.kind: 'neurons' needs MLP layers, and the model has none")
        ids = feature_ids(dc.features, model.cfg.d_mlp, where)
        return NeuronDictionary(dc.name, model, dc.layer, ids)
    from sae_lens import SAE

    device = str(model.cfg.device)
    try:
        if dc.path:
            sae = SAE.load_from_disk(str(cfg.resolve(dc.path)), device=device, dtype="float32")
        else:
            sae = SAE.from_pretrained(dc.release, dc.id, device=device, dtype="float32")
    except Exception as err:  # sae_lens raises many types; report one line
        src = cfg.resolve(dc.path) if dc.path else f"{dc.release}/{dc.id}"
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SitegenError(f"{where}: could not load SAE from {src}: {msg}") from None
    hook = sae.cfg.metadata.hook_name
    if cfg.features.effects == "exact" and hook_layer(hook) is None and hook not in EMBED_HOOKS:
        raise SitegenError(
            f"{where}: features.effects 'exact' re-runs the blocks from the SAE's hook, and '{hook}' is after "
            "them; use effects 'direct' or 'none'"
        )
    width = hook_width(model, hook)
    if width is None:
        raise SitegenError(f"{where}: SAE hook '{hook}' is not a hook of the model")
    if width != sae.cfg.d_in:
        raise SitegenError(f"{where}: SAE d_in {sae.cfg.d_in} != width {width} of hook '{hook}'")
    sae.eval()
    return SAEDictionary(dc.name, sae, model, feature_ids(dc.features, sae.cfg.d_sae, where))
