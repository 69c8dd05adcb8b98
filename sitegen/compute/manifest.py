"""The cache manifest: what the cache was built from, and whether it still matches.

Nothing time- or machine-dependent goes into it (no timestamps, no absolute
paths, no timings), so an interrupted and resumed build writes the same bytes
as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from sitegen import __version__
from sitegen.compute.feature_data import FORMAT_VERSION, DictionarySummary
from sitegen.config import Config
from sitegen.sources import Sources


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def config_sections(cfg: Config) -> dict[str, str]:
    """Hash of each config section the feature data depends on (not site/out)."""
    return {
        "features": _digest(dataclasses.asdict(cfg.features)),
        "dataset": _digest(dataclasses.asdict(cfg.dataset)),
        "model": _digest(dataclasses.asdict(cfg.model)),
        "dictionaries": _digest([dataclasses.asdict(d) for d in cfg.dictionaries]),
        "seed": _digest(cfg.seed),
    }


def config_hash(cfg: Config) -> str:
    return _digest(config_sections(cfg))


def _portable(path: str) -> str:
    """A config path as written, or only its name when absolute."""
    return Path(path).name if Path(path).expanduser().is_absolute() else path


def provenance(src: Sources) -> dict:
    cfg, data = src.config, src.data
    n_seq, ctx = data.tokens.shape
    ds = {"hf_name": cfg.dataset.hf_name} if cfg.dataset.hf_name else {
        "paths": [_portable(p) for p in cfg.dataset.paths]}
    ds.update({"context_length": ctx, "n_sequences": n_seq, "n_tokens": n_seq * ctx,
               "n_documents": data.n_documents})
    return {
        "model": _portable(cfg.model.name),
        "n_layers": src.model.cfg.n_layers,
        "d_model": src.model.cfg.d_model,
        "dataset": ds,
        "sitegen_version": __version__,
    }


def manifest_head(src: Sources, summaries: list[DictionarySummary], n_batches: list[int]) -> dict:
    """Everything in the manifest but ``complete`` and ``stats``."""
    return {
        "format": FORMAT_VERSION,
        "config_hash": config_hash(src.config),
        "config_sections": config_sections(src.config),
        "fingerprints": dict(src.fingerprints),
        "dictionaries": [dataclasses.asdict(s) for s in summaries],
        "batches": {str(i): n for i, n in enumerate(n_batches)},
        "provenance": provenance(src),
    }


def stale_reason(old: dict, head: dict) -> str | None:
    """Why a cache with manifest ``old`` cannot be reused for ``head`` (None: it can)."""
    if old.get("format") != head["format"]:
        return f"cache format {old.get('format')} != {head['format']}"
    old_version = old.get("provenance", {}).get("sitegen_version")
    if old_version != __version__:
        return f"built by sitegen {old_version}, this is {__version__}"
    old_fp, new_fp = old.get("fingerprints", {}), head["fingerprints"]
    changed = sorted(k for k in set(old_fp) | set(new_fp) if old_fp.get(k) != new_fp.get(k))
    if changed:
        return "changed input: " + ", ".join(changed)
    if old.get("config_hash") != head["config_hash"]:
        old_sec = old.get("config_sections", {})
        sections = [k for k, v in head["config_sections"].items() if old_sec.get(k) != v]
        return "changed config: " + ", ".join(sections or ["(unknown)"])
    return None
