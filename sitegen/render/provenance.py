"""The about page's provenance: model, dictionaries, dataset and build, from the manifest."""

from __future__ import annotations

import json
from dataclasses import dataclass

from sitegen.cache.feature_data import DictionarySummary
from sitegen.cache.files import dictionary_summaries
from sitegen.cache.head_data import HEADS_KIND
from sitegen.cache.record_data import RECORDS_KIND
from sitegen.render.embed import number_text


@dataclass
class DictionaryListing:
    name: str
    kind: str
    hook_name: str
    d_sae: int
    n_built: int
    n_dead: int


@dataclass
class ProvenanceSection:
    title: str
    rows: list[tuple[str, str]]


def _value_text(value: object) -> str:
    if isinstance(value, list) and not any(isinstance(v, (dict, list)) for v in value):
        return ", ".join(_value_text(v) for v in value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    return number_text(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _rows(mapping: dict) -> list[tuple[str, str]]:
    return [(str(k), _value_text(v)) for k, v in sorted(mapping.items())]


def _dictionary_text(s: DictionarySummary, d: DictionaryListing) -> str:
    if s.kind == RECORDS_KIND:
        layers = ", ".join(map(str, s.layers))
        return f"NeuronRecords imported from files (layers {layers}), {d.n_built:,} built; no model, effects: none"
    if s.kind == HEADS_KIND:
        layers = ", ".join(map(str, s.layers))
        return (
            f"{s.kind} on {s.hook_name}: {s.d_sae:,} heads of d_head {s.d_in:,} (layers {layers}), {d.n_built:,} built"
        )
    return (
        f"{s.kind} on {s.hook_name}: {s.d_sae:,} × {s.d_in:,}, {d.n_built:,} built ({d.n_dead:,} dead); "
        f"effects: {s.effects}" + (f"; {s.norm_note}" if s.norm_note else "")
    )


def provenance_sections(manifest: dict, listings: list[DictionaryListing]) -> list[ProvenanceSection]:
    """What the about page shows: model, dictionaries, dataset, build statistics."""
    provenance = dict(manifest.get("provenance", {}))
    dataset = provenance.pop("dataset", {})
    version = provenance.pop("sitegen_version", None)
    dictionaries = [(s.name, _dictionary_text(s, d)) for s, d in zip(dictionary_summaries(manifest), listings)]
    build = [*_rows(manifest.get("stats", {})), ("config hash", str(manifest.get("config_hash", "")))]
    build += [(f"fingerprint: {k}", v) for k, v in _rows(manifest.get("fingerprints", {}))]
    if version is not None:
        build.insert(0, ("sitegen version", str(version)))
    dataset_rows = _rows(dataset) if isinstance(dataset, dict) else [("dataset", _value_text(dataset))]
    sections = [
        ProvenanceSection("Model", _rows(provenance)),
        ProvenanceSection("Dictionaries", dictionaries),
        ProvenanceSection("Dataset", dataset_rows),
        ProvenanceSection("Build", build),
    ]
    return [s for s in sections if s.rows]
