"""The cache manifest's head: what the cache was built from (config keys, input
fingerprints, provenance); ``cache.manifest`` says whether it still matches.

Nothing time- or machine-dependent goes into it (no timestamps, no absolute
paths, no timings), so an interrupted and resumed build writes the same bytes
as an uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path

from sitegen import __version__
from sitegen.cache.feature_data import DictionarySummary
from sitegen.cache.manifest import make_head
from sitegen.sources import Sources


def _portable(path: str) -> str:
    """A config path as written, or only its name when absolute."""
    return Path(path).name if Path(path).expanduser().is_absolute() else path


def provenance(src: Sources) -> dict:
    cfg, data = src.config, src.data
    n_seq, ctx = data.tokens.shape
    ds: dict[str, object] = (
        {"hf_name": cfg.dataset.hf_name}
        if cfg.dataset.hf_name
        else {"paths": [_portable(p) for p in cfg.dataset.paths]}
    )
    ds.update({"context_length": ctx, "n_sequences": n_seq, "n_tokens": n_seq * ctx, "n_documents": data.n_documents})
    return {
        "model": _portable(cfg.model.name),
        "n_layers": src.model.cfg.n_layers,
        "d_model": src.model.cfg.d_model,
        "dataset": ds,
        "sitegen_version": __version__,
    }


def manifest_head(src: Sources, summaries: list[DictionarySummary], n_batches: list[int]) -> dict:
    """Everything in the manifest but ``complete`` and ``stats``."""
    return make_head(
        src.config, fingerprints=src.fingerprints, summaries=summaries, n_batches=n_batches, provenance=provenance(src)
    )
