"""Stage 1 of the pipeline: load and check the model, the dictionaries and the dataset."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
from transformer_lens import HookedTransformer

from sitegen.config import Config
from sitegen.imports import RecordFolder, record_folders
from sitegen.report import log
from sitegen.sources.dataset import TokenData, load_tokens
from sitegen.sources.dictionaries import Dictionary, SAEDictionary, load_dictionary
from sitegen.sources.heads import HeadDictionary, load_heads
from sitegen.sources.model import load_model
from sitegen.sources.prompts import Prompt, load_prompts
from sitegen.sources.tokens import raw_token_texts, token_texts


@dataclass
class Sources:
    config: Config
    model: HookedTransformer
    dictionaries: list[Dictionary]  # SAEs and neurons, in config order
    data: TokenData
    heads: list[HeadDictionary] = field(default_factory=list)  # numbered after ``dictionaries``
    imports: list[RecordFolder] = field(default_factory=list)  # NeuronRecord folders, numbered after ``heads``
    prompts: list[Prompt] = field(default_factory=list)
    fingerprints: dict[str, str] = field(default_factory=dict)  # what the feature cache depends on

    def token_texts(self, ids: list[int]) -> list[str]:
        return token_texts(self.model.tokenizer, ids)

    def raw_token_texts(self, ids: list[int]) -> list[str]:
        return raw_token_texts(self.model.tokenizer, ids)


def tensor_digest(tensors: list[torch.Tensor]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for t in tensors:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_sources(cfg: Config) -> Sources:
    """Load everything the config names; raises SitegenError on bad input. Says what it does,
    and any notice about the dataset, through the ``sitegen`` logger."""
    log.info("[sitegen] loading model")
    model = load_model(cfg)
    log.info("[sitegen] loading dictionaries")
    dictionaries = [
        load_dictionary(model, dc, cfg, f"dictionaries[{i}]")
        for i, dc in enumerate(cfg.dictionaries)
        if dc.kind in ("sae", "neurons")
    ]
    heads = [
        load_heads(model, dc, f"dictionaries[{i}]")
        for i, dc in enumerate(cfg.dictionaries)
        if dc.kind == "attention_heads"
    ]
    log.info("[sitegen] tokenising dataset")
    tok = model.tokenizer
    bos = None if tok is None else tok.bos_token_id
    data = load_tokens(cfg, tok, bos, model.cfg.d_vocab)
    if data.notice:
        log.info(f"[sitegen] {data.notice}")
    prompts = load_prompts(cfg, tok, bos, model.cfg.n_ctx)
    fingerprints = {
        "model": tensor_digest(list(model.state_dict().values())),
        "dataset": tensor_digest([data.tokens, data.ignore]),
    }
    for d in dictionaries:
        weights = (
            list(d.sae.state_dict().values())
            if isinstance(d, SAEDictionary)
            else [t for t in [d.residual_directions()] if t is not None]
        )
        fingerprints[f"dictionary:{d.name}"] = tensor_digest(
            [torch.tensor(d.feature_ids), torch.tensor([d.d_in, d.d_sae]), *weights]
        )
    for h in heads:
        fingerprints[f"dictionary:{h.name}"] = tensor_digest([torch.tensor(h.feature_ids), torch.tensor(h.layers)])
    imports = record_folders(cfg)
    for f in imports:
        fingerprints[f"dictionary:{f.name}"] = f.fingerprint()
    return Sources(
        cfg, model, dictionaries, data, heads=heads, imports=imports, prompts=prompts, fingerprints=fingerprints
    )
