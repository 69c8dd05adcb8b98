"""Explanations of features, with their scores, from the files that explanation tools write
(``site.explanations`` in the config): every feature page lists its explanations best first,
the index shows and searches the best one.

An entry of ``site.explanations`` is a path (a file or a folder, relative to the config) or a
mapping ``{path, format, dictionary}``. Formats, detected from the file unless ``format:`` names
one:

- ``neuron-explainer``: openai/automated-interpretability's explanation JSONL, one
  ``NeuronSimulationResults`` a line (``neuron_id {layer_index, neuron_index}``,
  ``scored_explanations [{explanation, scored_simulation {ev_correlation_score}}]``, each object
  possibly tagged with its ``dataclass_name``); a folder of them (``<layer>/<neuron>.jsonl``) too.
  The score is ``ev_correlation_score`` (the correlation of the simulator's expected activations
  with the true ones over all scored sequences; none where it is null). ``(layer, neuron)`` maps
  to the entry's ``dictionary:``, else to the one site dictionary (neurons or an SAE) of that layer.
- ``neuronpedia``: Neuronpedia's explanation export (a JSON array, or JSON lines as in its
  ``explanations/batch-N.jsonl.gz`` exports): ``{modelId, layer, index, description,
  explanationModelName, typeName, scores: [{value, explanationScoreTypeName,
  explanationScoreModelName}]}``; without ``scores``, the legacy ``scoreV2`` (or a non-zero
  ``scoreV1``: 0 is its default, "not scored"). ``layer`` is Neuronpedia's source id
  (``6-res-jb``): a site dictionary of that name, else the entry's ``dictionary:``.
- ``delphi``: a delphi run folder (EleutherAI/delphi): ``explanations/<module>_latent<N>.txt``
  (each a JSON string) and ``scores/<scorer>/<module>_latent<N>.txt`` (a JSON list of the
  scored examples). A classifier scorer's (``fuzz``, ``detection``) score is delphi's
  class-balanced accuracy over the examples it answered (prediction not null):
  ``(TP / P + TN / N) / 2``, a term 0 where P or N is 0, as delphi's
  ``compute_classification_metrics``; other scorers' folders (embedding, intruder) are left out,
  with a message. The module maps to a site dictionary of that name, else the entry's
  ``dictionary:`` (one module), else the one site dictionary of the module's layer
  (``layers.6``); ``run_config.json``'s ``explainer_model`` names the explainer.
- ``plain``: YAML (a list of mappings) or CSV (a header row) of ``dictionary, feature,
  explanation`` and optionally ``score``, ``scorer``, ``source`` (who or what wrote it), for
  hand-written explanations.

Explanations are untrusted text: whitespace is collapsed to single spaces, invisible and
control characters are made visible (as token strings are), the length is capped, and the
pages show it as text (escaped), never as Markdown or HTML. Bad input (an id out of range
included) is one ``SitegenError`` line naming the file, the line (or item) and the field. An
explanation of an id in range that this site does not build is skipped, with one message per
file saying how many were (a dump over a whole SAE serves a site that builds some features).

The format readers are in render/explanation_readers.py, the types in
render/explanation_types.py (re-exported here).
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sitegen.cache.feature_data import DictionarySummary
from sitegen.errors import SitegenError
from sitegen.hooks import hook_layer
from sitegen.render.explanation_readers import _Reader
from sitegen.render.explanation_types import (
    ENTRY_KEYS,
    FORMATS,
    HEADS_KIND,
    INDEX_TEXT_CHARS,
    MAX_TEXT_CHARS,
    Explanation,
    Explanations,
    ExplanationSource,
    Score,
    SiteDictionary,
    clean_text,
)

if TYPE_CHECKING:
    from sitegen.config import Config
    from sitegen.sources import Sources

__all__ = [  # the public API; the types and constants live in explanation_types.py, re-exported here
    "ENTRY_KEYS",
    "FORMATS",
    "HEADS_KIND",
    "INDEX_TEXT_CHARS",
    "MAX_TEXT_CHARS",
    "Explanation",
    "ExplanationSource",
    "ExplanationView",
    "Explanations",
    "Score",
    "SiteDictionary",
    "best_explanation",
    "clean_text",
    "explanation_sources",
    "explanation_views",
    "load_explanations",
    "site_dictionaries",
    "source_dictionaries",
    "summary_line",
]


def site_dictionaries(summaries: Sequence[DictionarySummary]) -> list[SiteDictionary]:
    out = []
    for s in summaries:
        layer = hook_layer(s.hook_name)
        layers = tuple(s.layers) if s.layers else (() if layer is None else (layer,))
        out.append(SiteDictionary(s.name, s.kind, layers, s.d_sae, frozenset(s.feature_ids)))
    return out


def source_dictionaries(sources: Sources) -> list[SiteDictionary]:
    """The dictionaries a build would make, from its loaded sources (SAEs and neurons, heads, imports)."""
    out = []
    for d in sources.dictionaries:
        layer = hook_layer(d.hook_name)
        out.append(SiteDictionary(d.name, d.kind, () if layer is None else (layer,), d.d_sae, frozenset(d.feature_ids)))
    for h in sources.heads:
        out.append(SiteDictionary(h.name, HEADS_KIND, tuple(h.layers), h.d_sae, frozenset(h.feature_ids)))
    return out + site_dictionaries([f.summary() for f in sources.imports])


def explanation_sources(cfg: Config) -> list[ExplanationSource]:
    """The entries of ``site.explanations``, checked: each names an existing path, a known format."""
    base = f"{cfg.path.name}: site.explanations"
    out = []
    for i, entry in enumerate(cfg.site.explanations):
        where = f"{base}[{i}]"
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict):
            raise SitegenError(f"{where}: expected a path or a mapping {{path, format, dictionary}}, got {entry!r}")
        for key in entry:
            if key not in ENTRY_KEYS:
                close = difflib.get_close_matches(str(key), ENTRY_KEYS, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else f" (valid: {', '.join(ENTRY_KEYS)})"
                raise SitegenError(f"{where}.{key}: unknown key{hint}")
        for key in ENTRY_KEYS:
            value = entry.get(key)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise SitegenError(f"{where}.{key}: expected a string, got {value!r}")
        if not entry.get("path"):
            raise SitegenError(f"{where}: missing required key 'path'")
        fmt = entry.get("format")
        if fmt is not None and fmt not in FORMATS:
            raise SitegenError(f"{where}.format: must be one of {', '.join(FORMATS)}, got {fmt!r}")
        path = cfg.resolve(entry["path"])
        if not path.exists():
            raise SitegenError(f"{where}.path: not found: {path}")
        shown = os.path.relpath(path, cfg.path.parent).replace(os.sep, "/")
        out.append(ExplanationSource(path, fmt, entry.get("dictionary"), where, shown))
    return out


def load_explanations(cfg: Config, dictionaries: Sequence[SiteDictionary]) -> Explanations:
    """Every explanation of ``site.explanations``, by dictionary and feature, best first (score
    descending, unscored last; ties in the order of the entries and files)."""
    out: Explanations = {}
    for source in explanation_sources(cfg):
        reader = _Reader(source, dictionaries)
        reader.read()
        for e in reader.found:
            out.setdefault(e.dictionary, {}).setdefault(e.feature, []).append(e)
    for features in out.values():
        for listed in features.values():
            listed.sort(key=lambda e: -e.score if e.score is not None else math.inf)
    return out


def best_explanation(listed: Sequence[Explanation]) -> tuple[str, float | None]:
    """The index's text (first ``INDEX_TEXT_CHARS`` characters) and score of the best one."""
    if not listed:
        return "", None
    text = listed[0].text
    if len(text) > INDEX_TEXT_CHARS:
        text = text[: INDEX_TEXT_CHARS - 1].rstrip() + "\u2026"
    return text, listed[0].score


def summary_line(explanations: Explanations) -> str:
    """What ``sitegen validate`` says about them."""
    n = sum(len(v) for features in explanations.values() for v in features.values())
    n_features = sum(len(features) for features in explanations.values())
    per = ", ".join(f"{name}: {len(features)}" for name, features in sorted(explanations.items()))
    return f"explanations: {n} for {n_features} features" + (f" ({per})" if per else "")


@dataclass
class ExplanationView:
    """What a page shows of one explanation."""

    text: str
    scores: list[tuple[str, str, str]]  # (value text, scorer and model, definition)
    explainer: str | None
    source: str  # file (format, line)


def explanation_views(listed: Sequence[Explanation]) -> list[ExplanationView]:
    views = []
    for e in listed:
        scores = [(f"{s.value:.3g}", s.scorer + (f" ({s.model})" if s.model else ""), s.detail) for s in e.scores]
        where = f"{e.format}, line {e.line}" if e.line is not None else e.format
        views.append(ExplanationView(e.text, scores, e.explainer, f"{e.file} ({where})"))
    return views
