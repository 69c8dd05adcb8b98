"""The manifest's torch-free half: what config a cache was built from, and whether it still
matches one (``sitegen render`` checks this without loading any model).

The config is hashed key by key (``config_keys``: one digest per dotted key of the sections
the feature data depends on, not ``site``/``out``/``cache``), so a stale cache can say
exactly which keys changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from sitegen import __version__
from sitegen.cache.feature_data import FORMAT_VERSION, DictionarySummary
from sitegen.cache.files import PROMPTS_FILE, SEQUENCES_FILE, STRINGS_FILE, read_json
from sitegen.config import Config
from sitegen.errors import SitegenError
from sitegen.report import log


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def config_keys(cfg: Config) -> dict[str, str]:
    """Digest of each config key the cache depends on: ``<section>.<key>`` of the features,
    heads, records, dataset, model and attribution sections, ``dictionaries[i].<key>``,
    ``prompts[i].<key>``, the numbers of dictionaries and prompts, ``seed`` and
    ``executor.token_shards`` (not the executor's kind, address, resources or storage)."""
    keys = {
        "seed": _digest(cfg.seed),
        "dictionaries": _digest(len(cfg.dictionaries)),
        "prompts": _digest(len(cfg.prompts)),
        "executor.token_shards": _digest(cfg.executor.token_shards),  # the order of the float64 sums
    }
    sections: list[tuple[str, Any]] = [
        ("features", cfg.features),
        ("heads", cfg.heads),
        ("records", cfg.records),
        ("dataset", cfg.dataset),
        ("model", cfg.model),
    ]
    sections += [("attribution", cfg.attribution)]
    sections += [(f"dictionaries[{i}]", d) for i, d in enumerate(cfg.dictionaries)]
    sections += [(f"prompts[{i}]", p) for i, p in enumerate(cfg.prompts)]
    for prefix, section in sections:
        keys.update({f"{prefix}.{k}": _digest(v) for k, v in dataclasses.asdict(section).items()})
    return keys


def config_hash(cfg: Config) -> str:
    return _digest(config_keys(cfg))


def changed_keys(old: dict, new: dict) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def stale_reason(old: dict, head: dict) -> str | None:
    """Why a cache with manifest ``old`` cannot be reused for ``head`` (None: it can)."""
    if old.get("format") != head["format"]:
        return f"cache format {old.get('format')} != {head['format']}"
    old_version = old.get("provenance", {}).get("sitegen_version")
    if old_version != __version__:
        return f"built by sitegen {old_version}, this is {__version__}"
    changed = changed_keys(old.get("fingerprints", {}), head["fingerprints"])
    if changed:
        return "changed input: " + ", ".join(changed)
    if old.get("config_hash") != head["config_hash"]:
        return "changed config: " + ", ".join(changed_keys(old.get("config_keys", {}), head["config_keys"]))
    return None


def make_head(
    cfg: Config,
    *,
    fingerprints: dict[str, str],
    summaries: list[DictionarySummary],
    n_batches: list[int],
    provenance: dict,
) -> dict:
    """Everything in the manifest but ``complete`` and ``stats``."""
    return {
        "format": FORMAT_VERSION,
        "config_hash": config_hash(cfg),
        "config_keys": config_keys(cfg),
        "fingerprints": dict(fingerprints),
        "dictionaries": [dataclasses.asdict(s) for s in summaries],
        "batches": {str(i): n for i, n in enumerate(n_batches)},
        "provenance": provenance,
    }


def clear_cache(cache_dir: Path) -> None:
    shutil.rmtree(cache_dir / "features", ignore_errors=True)
    for name in ("tokens.json", "manifest.json", PROMPTS_FILE, SEQUENCES_FILE, STRINGS_FILE):
        (cache_dir / name).unlink(missing_ok=True)


def remove_partial_files(cache_dir: Path) -> None:
    """Temp files of writes a killed build did not finish."""
    for tmp in cache_dir.rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def drop_if_stale(cache_dir: Path, head: dict) -> None:
    """Empty the cache when its manifest cannot be reused for ``head`` (saying why)."""
    path = cache_dir / "manifest.json"
    if not path.is_file():
        return
    try:
        old = read_json(path)
    except SitegenError:
        old = None
    reason = "unreadable manifest" if not isinstance(old, dict) else stale_reason(old, head)
    if reason:
        log.info(f"feature cache in {cache_dir.name}/ is stale ({reason}); recomputing")
        clear_cache(cache_dir)


def read_manifest(cache: Path) -> dict:
    path = cache / "manifest.json"
    if not path.is_file():
        raise SitegenError(f"{path}: no feature cache here; run 'sitegen build' first")
    manifest = read_json(path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise SitegenError(f"{path}: cache format {found} != {FORMAT_VERSION}; rebuild")
    return manifest


# keys that change how a build runs, never what it computes (the cache is identical at any value)
RENDER_IGNORES = ("features.activation_cache_mb", "features.feature_batch_size")


def renderable_manifest(cache: Path, cfg: Config) -> dict:
    """The manifest of a complete cache built from ``cfg`` (up to ``RENDER_IGNORES``); a one-line
    SitegenError naming the changed keys where the config has changed since (``sitegen render``
    never shows stale data)."""
    manifest = read_manifest(cache)
    if not manifest.get("complete"):
        raise SitegenError(f"{cache}: the feature cache is incomplete; run 'sitegen build' to finish it")
    changed = [k for k in changed_keys(manifest.get("config_keys", {}), config_keys(cfg)) if k not in RENDER_IGNORES]
    if changed:
        raise SitegenError(
            f"{cache}: built from another config (changed: {', '.join(changed)}); run 'sitegen build' to update it"
        )
    return manifest
