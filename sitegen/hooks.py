"""TransformerLens hook names, parsed in one place: ``blocks.L.<point>`` (a block's hook)
or a model-level hook (``hook_embed``, ``ln_final.hook_scale``, ...). Imports no torch."""

from __future__ import annotations

import re

BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.(.+)$")
# the residual-stream hooks of a block, and the sub-layer outputs added to it as they are
RESID_POINTS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out")
MLP_POST = "mlp.hook_post"  # the MLP neurons' activations
ATTN_Z = "attn.hook_z"  # the attention heads' outputs before W_O
EMBED_HOOKS = ("hook_embed", "hook_pos_embed", "hook_tokens")


def hook_layer(hook_name: str) -> int | None:
    """The block of ``blocks.L.<point>`` (None for a model-level hook)."""
    m = BLOCK_HOOK.match(hook_name)
    return int(m.group(1)) if m else None


def hook_point(hook_name: str) -> str:
    """The part after ``blocks.L.`` (the whole name for a model-level hook)."""
    m = BLOCK_HOOK.match(hook_name)
    return m.group(2) if m else hook_name


def block_hook(layer: int, point: str) -> str:
    return f"blocks.{layer}.{point}"


def is_resid_hook(hook_name: str) -> bool:
    """A hook on the residual stream, or a sub-layer output added to it unchanged."""
    return hook_layer(hook_name) is not None and hook_point(hook_name) in RESID_POINTS
