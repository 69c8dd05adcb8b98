"""The config's prompts, tokenised and checked: target and distractor one token each, the
prompt within the model's context, the position inside the prompt."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sitegen.config import Config
from sitegen.errors import SitegenError


@dataclass
class Prompt:
    index: int
    slug: str  # prompts/<slug>.html
    text: str
    token_ids: list[int]  # with BOS when the dataset prepends it
    position: int  # >= 0
    target: int
    distractor: int | None


def slug_of(index: int, text: str) -> str:
    words = re.findall(r"[a-z0-9]+", text.lower())[:5]
    return "-".join([str(index), *words])[:48].rstrip("-")


def one_token(tokenizer, text: str, where: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise SitegenError(f"{where}: {text!r} is {len(ids)} tokens, not one ({ids[:8]}); give one token's text")
    return int(ids[0])


def load_prompts(cfg: Config, tokenizer, bos_id: int | None, n_ctx: int) -> list[Prompt]:
    out = []
    for i, pc in enumerate(cfg.prompts):
        where = f"{cfg.path.name}.prompts[{i}]"
        if tokenizer is None:
            raise SitegenError(f"{where}: prompts need a tokenizer, and the model has none")
        ids = [int(t) for t in tokenizer(pc.text, add_special_tokens=False)["input_ids"]]
        if cfg.dataset.prepend_bos and bos_id is not None:
            ids = [int(bos_id), *ids]
        if not ids:
            raise SitegenError(f"{where}.text: the prompt has no tokens")
        if len(ids) > n_ctx:
            raise SitegenError(f"{where}.text: {len(ids)} tokens, longer than the model's context of {n_ctx}")
        position = len(ids) - 1 if pc.position is None else pc.position
        if position < 0:
            position += len(ids)
        if not 0 <= position < len(ids):
            raise SitegenError(f"{where}.position: {pc.position} is outside the prompt's {len(ids)} tokens")
        target = one_token(tokenizer, pc.target, f"{where}.target")
        distractor = None if pc.distractor is None else one_token(tokenizer, pc.distractor, f"{where}.distractor")
        if distractor == target:
            raise SitegenError(f"{where}.distractor: the same token as the target")
        out.append(Prompt(i, slug_of(i, pc.text), pc.text, ids, position, target, distractor))
    return out
