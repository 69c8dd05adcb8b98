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
pages show it as text (escaped), never as Markdown or HTML. Bad input is one ``SitegenError``
line naming the file, the line (or item) and the field.
"""

from __future__ import annotations

import csv
import difflib
import gzip
import io
import json
import math
import os
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import yaml

from sitegen.cache.feature_data import DictionarySummary
from sitegen.errors import SitegenError
from sitegen.hooks import hook_layer
from sitegen.report import log

if TYPE_CHECKING:
    from sitegen.config import Config
    from sitegen.sources import Sources

FORMATS = ("neuron-explainer", "neuronpedia", "delphi", "plain")
ENTRY_KEYS = ("path", "format", "dictionary")
PLAIN_FIELDS = ("dictionary", "feature", "explanation", "score", "scorer", "source")
PLAIN_REQUIRED = ("dictionary", "feature", "explanation")
FILE_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".yaml", ".yml", ".csv")
MAX_TEXT_CHARS = 1000  # an explanation longer than this is cut (pages stay small)
INDEX_TEXT_CHARS = 200  # the index keeps the best explanation's first characters
HEADS_KIND = "attention_heads"
DELPHI_NAME = re.compile(r"^(?P<module>.+)_latent(?P<index>\d+)\.txt$")
MODULE_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|$)")


@dataclass(frozen=True)
class Score:
    value: float
    scorer: str  # what measured it, e.g. "fuzz" or "ev_correlation_score"
    model: str | None = None  # the model that scored, where the file says
    detail: str = ""  # how the value is defined


@dataclass(frozen=True)
class Explanation:
    dictionary: str
    feature: int
    text: str  # plain text, one line, sanitised
    scores: tuple[Score, ...]
    explainer: str | None  # the model or person that wrote it, where the file says
    file: str  # the file (or folder), relative to the config's folder
    format: str  # one of FORMATS
    line: int | None = None  # where in the file, for line-based formats

    @property
    def score(self) -> float | None:
        """The explanation's score: the highest of its scores (None without any)."""
        return max((s.value for s in self.scores), default=None)


Explanations = dict[str, dict[int, list[Explanation]]]  # dictionary name -> feature -> best first


@dataclass(frozen=True)
class SiteDictionary:
    """What the explanations are checked against: a site dictionary's name, kind, layers, size
    and built ids (from the cache's manifest, or from the loaded sources in ``sitegen validate``)."""

    name: str
    kind: str
    layers: tuple[int, ...]
    d_sae: int
    built: frozenset[int]


def site_dictionaries(summaries: Sequence[DictionarySummary]) -> list[SiteDictionary]:
    out = []
    for s in summaries:
        layer = hook_layer(s.hook_name)
        layers = tuple(s.layers) if s.layers else (() if layer is None else (layer,))
        out.append(SiteDictionary(s.name, s.kind, layers, s.d_sae, frozenset(s.feature_ids)))
    return out


def source_dictionaries(sources: Sources) -> list[SiteDictionary]:
    """The dictionaries a build would make, from its loaded sources (SAEs and neurons, then heads)."""
    out = []
    for d in sources.dictionaries:
        layer = hook_layer(d.hook_name)
        out.append(SiteDictionary(d.name, d.kind, () if layer is None else (layer,), d.d_sae, frozenset(d.feature_ids)))
    for h in sources.heads:
        out.append(SiteDictionary(h.name, HEADS_KIND, tuple(h.layers), h.d_sae, frozenset(h.feature_ids)))
    return out


@dataclass(frozen=True)
class ExplanationSource:
    """One entry of ``site.explanations``."""

    path: Path
    format: str | None
    dictionary: str | None
    where: str  # the config key, for messages
    shown: str  # the path as pages show it: relative to the config's folder


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


def clean_text(raw: str) -> str:
    """An untrusted explanation as one bounded line of visible text: whitespace runs become one
    space, control, format (bidi, zero-width) and other invisible characters ``\\uXXXX``."""
    out = []
    for ch in raw:
        if ch.isspace():
            out.append(" ")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Co", "Cs", "Zl", "Zp"):
            out.append(f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}")
        else:
            out.append(ch)
    text = " ".join("".join(out).split())
    if len(text) > MAX_TEXT_CHARS:
        text = text[: MAX_TEXT_CHARS - 1].rstrip() + "\u2026"
    return text


class _LineLoader(yaml.SafeLoader):
    """YAML mappings that remember the line they start on (under the key ``_LINE``)."""


_LINE = "\0line"


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict:
    mapping = loader.construct_mapping(node, deep=True)
    mapping[_LINE] = node.start_mark.line + 1
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _json_value(text: str | bytes) -> Any:
    """JSON, also with the NaN/Infinity that Python's json writes."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


@dataclass
class _Reader:
    source: ExplanationSource
    dictionaries: Sequence[SiteDictionary]
    found: list[Explanation] = field(default_factory=list)
    file: Path = Path()
    shown: str = ""
    fixed: dict[str, str] = field(default_factory=dict)  # one foreign id -> the entry's dictionary

    def __post_init__(self) -> None:
        self.by_name = {d.name: d for d in self.dictionaries}

    # -- errors and checks ---------------------------------------------------------------------

    def fail(self, at: str, problem: str) -> SitegenError:
        return SitegenError(f"{self.file}: {at}{problem}")

    def text(self, value: Any, at: str, name: str, numbers: bool = False) -> str:
        """An explanation's text; ``numbers``: a number is text too (YAML reads ``42`` as one)."""
        if isinstance(value, bool) or not isinstance(value, (str, int, float) if numbers else str):
            raise self.fail(at, f"{name}: expected the explanation's text, got {_short(value)}")
        raw = str(value)
        try:
            raw = raw.encode("utf-16", "surrogatepass").decode("utf-16")  # a YAML-escaped pair, joined
        except UnicodeDecodeError:
            raise self.fail(at, f"{name}: holds an unpaired surrogate escape (\\ud800-\\udfff)") from None
        text = clean_text(raw)
        if not text:
            raise self.fail(at, f"{name}: the explanation is empty")
        return text

    def optional_text(self, value: Any, at: str, name: str) -> str | None:
        if value is None or value == "":
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.fail(at, f"{name}: expected text, got {_short(value)}")
        return clean_text(str(value)) or None

    def number(self, value: Any, at: str, name: str) -> float | None:
        """A score: a finite number, or None (null, NaN: not scored)."""
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(at, f"{name}: expected a number, got {_short(value)}")
        try:
            number = float(value)
        except OverflowError:
            raise self.fail(at, f"{name}: expected a number, got an integer of {len(str(value))} digits") from None
        return number if math.isfinite(number) else None

    def index(self, value: Any, at: str, name: str) -> int:
        ok = isinstance(value, int) and value >= 0 or isinstance(value, str) and value.isascii() and value.isdigit()
        if isinstance(value, bool) or not ok:
            raise self.fail(at, f"{name}: expected a feature id (an integer >= 0), got {_short(value)}")
        return int(value)

    def feature(self, d: SiteDictionary, feature: int, at: str, name: str) -> int:
        unit = "head" if d.kind == HEADS_KIND else "feature"
        if not 0 <= feature < d.d_sae:
            raise self.fail(at, f"{name}: {unit} {feature} is out of range ('{d.name}' has {d.d_sae:,})")
        if feature not in d.built:
            raise self.fail(
                at,
                f"{name}: {unit} {feature} of '{d.name}' is not built in this site ({len(d.built):,} of "
                f"{d.d_sae:,} are; see its 'features' key)",
            )
        return feature

    def named(self, name: Any, at: str, key: str) -> SiteDictionary:
        if not isinstance(name, str) or name not in self.by_name:
            raise self.fail(at, f"{key}: no site dictionary {_short(name)} (have: {', '.join(self.by_name)})")
        return self.by_name[name]

    def by_layer(self, layer: int, at: str, key: str, what: str) -> SiteDictionary:
        """The entry's ``dictionary:`` (for one layer), else the one non-head site dictionary of ``layer``."""
        if self.source.dictionary is not None:
            return self.only(f"layer {layer}", at, key, what)
        matches = [d for d in self.dictionaries if d.kind != HEADS_KIND and layer in d.layers]
        if len(matches) == 1:
            return matches[0]
        readers = (
            f"the site dictionaries {', '.join(d.name for d in matches)} all read"
            if matches
            else "no site dictionary reads"
        )
        raise self.fail(
            at,
            f"{key}: {what} is in layer {layer}, which {readers}: give {self.source.where} a 'dictionary:' "
            "(the site dictionary its ids refer to)",
        )

    def foreign(self, foreign_id: str, at: str, key: str, what: str) -> SiteDictionary:
        """A site dictionary named ``foreign_id``, else the entry's ``dictionary:`` (for one id)."""
        if foreign_id in self.by_name:
            return self.by_name[foreign_id]
        if self.source.dictionary is None:
            raise self.fail(
                at,
                f"{key}: {what} {foreign_id!r} is no site dictionary (have: {', '.join(self.by_name)}); give "
                f"{self.source.where} a 'dictionary:' (the site dictionary its ids refer to)",
            )
        return self.only(repr(foreign_id), at, key, what)

    def only(self, label: str, at: str, key: str, what: str) -> SiteDictionary:
        """The entry's ``dictionary:``, for the first foreign dictionary (``label``: a layer, a
        source id) its files name; another one is an error, as its ids would collide."""
        other = next(iter(self.fixed), None)
        if other is not None and other != label:
            raise self.fail(
                at,
                f"{key}: {what} {label} after {other}: 'dictionary:' of {self.source.where} names one "
                "dictionary, so its files may hold one (give each its own entry, or name the site dictionaries "
                "after them)",
            )
        self.fixed[label] = str(self.source.dictionary)
        return self.by_name[str(self.source.dictionary)]

    def add(
        self,
        d: SiteDictionary,
        feature: int,
        text: str,
        scores: list[Score],
        explainer: str | None,
        fmt: str,
        line: int | None = None,
    ) -> None:
        self.found.append(Explanation(d.name, feature, text, tuple(scores), explainer, self.shown, fmt, line))

    # -- files -----------------------------------------------------------------------------------

    def read(self) -> None:
        path, fmt, where = self.source.path, self.source.format, self.source.where
        if self.source.dictionary is not None and self.source.dictionary not in self.by_name:
            raise SitegenError(
                f"{where}.dictionary: no site dictionary {self.source.dictionary!r} (have: {', '.join(self.by_name)})"
            )
        if path.is_dir():
            if fmt == "delphi" or (fmt is None and (path / "explanations").is_dir()):
                self.file, self.shown = path, self.source.shown
                self.delphi(path)
                return
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(FILE_SUFFIXES))
            if not files:
                raise SitegenError(
                    f"{where}.path: {path} holds no explanation files ({', '.join(FILE_SUFFIXES)}) "
                    "and no delphi run (explanations/)"
                )
        elif fmt == "delphi":
            raise SitegenError(f"{where}.path: a delphi run is a folder (explanations/, scores/), not {path}")
        else:
            files = [path]
        for file in files:
            self.file = file
            inside = file.relative_to(path).as_posix() if file != path else ""
            self.shown = f"{self.source.shown}/{inside}" if inside else self.source.shown
            self.read_file(file, fmt)

    def raw_text(self, file: Path) -> str:
        try:
            data = gzip.decompress(file.read_bytes()) if file.name.lower().endswith(".gz") else file.read_bytes()
            return data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise SitegenError(f"{file}: not UTF-8 text (undecodable byte at offset {err.start})") from None
        except (OSError, EOFError, gzip.BadGzipFile) as err:
            raise SitegenError(f"{file}: cannot read ({getattr(err, 'strerror', None) or err})") from None

    def read_file(self, file: Path, fmt: str | None) -> None:
        name = file.name.lower()
        if name.endswith((".yaml", ".yml", ".csv")):
            if fmt not in (None, "plain"):
                raise SitegenError(f"{file}: a {file.suffix} file is plain explanations, not format '{fmt}'")
            text = self.raw_text(file)
            self.plain_csv(text) if name.endswith(".csv") else self.plain_yaml(text)
            return
        text = self.raw_text(file)
        items = self.json_items(text)
        if not items:
            return
        fmt = fmt or self.detect(items)
        if fmt == "neuron-explainer":
            for at, obj in items:
                self.neuron_explainer(obj, at)
        elif fmt == "neuronpedia":
            for at, obj in items:
                self.neuronpedia(obj, at)
        else:
            raise SitegenError(f"{file}: format '{fmt}' is read from YAML or CSV files (or a delphi run folder)")

    def json_items(self, text: str) -> list[tuple[str, Any]]:
        """(where, object) for a JSON array's items, or a JSON-lines file's lines."""
        stripped = text.lstrip()
        if stripped.startswith("["):
            try:
                value = _json_value(text)
            except ValueError as err:
                raise self.fail("", f"JSON syntax error ({err})") from None
            return [(f"item {i}: ", v) for i, v in enumerate(value)]
        items = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                items.append((f"line {n}: ", _json_value(line)))
            except ValueError as err:
                raise self.fail(f"line {n}: ", f"JSON syntax error ({err})") from None
        return items

    def detect(self, items: list[tuple[str, Any]]) -> str:
        obj = items[0][1]
        if isinstance(obj, dict):
            if obj.get("dataclass_name") == "NeuronSimulationResults" or {"neuron_id", "scored_explanations"} <= set(
                obj
            ):
                return "neuron-explainer"
            if {"layer", "index", "description"} <= set(obj):
                return "neuronpedia"
        kinds = "neuron-explainer (neuron_id, scored_explanations) or neuronpedia (layer, index, description)"
        raise SitegenError(
            f"{self.file}: cannot tell the explanation format from its first object (expected {kinds}); "
            f"name it with 'format:' in {self.source.where}"
        )

    # -- neuron-explainer -------------------------------------------------------------------------

    def tagged(self, obj: Any, at: str, name: str, dataclass: str) -> dict:
        """A neuron-explainer object; its ``dataclass_name`` tag, where it has one, must match."""
        if not isinstance(obj, dict):
            raise self.fail(at, f"{name or 'the line'}: expected a {dataclass} object, got {_short(obj)}")
        tag = obj.get("dataclass_name", dataclass)
        if tag != dataclass:
            key = f"{name}.dataclass_name" if name else "dataclass_name"
            raise self.fail(at, f"{key}: expected {dataclass!r}, got {_short(tag)}")
        return obj

    def neuron_explainer(self, obj: Any, at: str) -> None:
        obj = self.tagged(obj, at, "", "NeuronSimulationResults")
        if "neuron_id" not in obj:
            raise self.fail(at, "neuron_id: missing")
        nid = self.tagged(obj["neuron_id"], at, "neuron_id", "NeuronId")
        for key in ("layer_index", "neuron_index"):
            if key not in nid:
                raise self.fail(at, f"neuron_id.{key}: missing")
        layer = self.index(nid["layer_index"], at, "neuron_id.layer_index")
        neuron = self.index(nid["neuron_index"], at, "neuron_id.neuron_index")
        d = self.by_layer(layer, at, "neuron_id.layer_index", f"neuron {neuron}")
        feature = self.feature(d, neuron, at, "neuron_id.neuron_index")
        listed = obj.get("scored_explanations")
        if not isinstance(listed, list):
            raise self.fail(at, f"scored_explanations: expected a list, got {_short(listed)}")
        for i, se in enumerate(listed):
            key = f"scored_explanations[{i}]"
            se = self.tagged(se, at, key, "ScoredExplanation")
            if "explanation" not in se:
                raise self.fail(at, f"{key}.explanation: missing")
            text = self.text(se["explanation"], at, f"{key}.explanation")
            sim = se.get("scored_simulation")
            value = None
            if sim is not None:
                sim = self.tagged(sim, at, f"{key}.scored_simulation", "ScoredSimulation")
                value = self.number(
                    sim.get("ev_correlation_score"), at, f"{key}.scored_simulation.ev_correlation_score"
                )
            scores = [] if value is None else [Score(value, "ev_correlation_score", None, NEURON_EXPLAINER_SCORE)]
            self.add(d, feature, text, scores, None, "neuron-explainer", _line(at))

    # -- Neuronpedia ---------------------------------------------------------------------------

    def neuronpedia(self, obj: Any, at: str) -> None:
        if not isinstance(obj, dict):
            raise self.fail(at, f"expected an explanation object, got {_short(obj)}")
        for key in ("layer", "index", "description"):
            if key not in obj:
                raise self.fail(at, f"{key}: missing")
        layer = obj["layer"]
        if not isinstance(layer, str) or not layer:
            raise self.fail(at, f"layer: expected Neuronpedia's source id (e.g. '6-res-jb'), got {_short(layer)}")
        d = self.foreign(layer, at, "layer", "source")
        feature = self.feature(d, self.index(obj["index"], at, "index"), at, "index")
        text = self.text(obj["description"], at, "description")
        model = self.optional_text(obj.get("explanationModelName"), at, "explanationModelName")
        kind = self.optional_text(obj.get("typeName"), at, "typeName")
        explainer = " ".join(p for p in (model, f"({kind})" if kind else None) if p) or None
        scores = []
        listed = obj.get("scores")
        if listed is not None and not isinstance(listed, list):
            raise self.fail(at, f"scores: expected a list, got {_short(listed)}")
        for i, s in enumerate(listed or []):
            key = f"scores[{i}]"
            if not isinstance(s, dict):
                raise self.fail(at, f"{key}: expected a score object, got {_short(s)}")
            if "value" not in s:
                raise self.fail(at, f"{key}.value: missing")
            value = self.number(s["value"], at, f"{key}.value")
            scorer = self.optional_text(s.get("explanationScoreTypeName"), at, f"{key}.explanationScoreTypeName")
            by = self.optional_text(s.get("explanationScoreModelName"), at, f"{key}.explanationScoreModelName")
            if value is not None:
                scores.append(Score(value, scorer or "score", by, "a Neuronpedia explanation score"))
        if not scores:
            v2 = self.number(obj.get("scoreV2"), at, "scoreV2")
            v1 = self.number(obj.get("scoreV1"), at, "scoreV1")
            if v2 is not None:
                scores.append(Score(v2, "scoreV2", None, "Neuronpedia's legacy score (v2)"))
            elif v1:  # 0 is its default: not scored
                scores.append(Score(v1, "scoreV1", None, "Neuronpedia's legacy score (v1)"))
        self.add(d, feature, text, scores, explainer, "neuronpedia", _line(at))

    # -- delphi ----------------------------------------------------------------------------------

    def delphi(self, run: Path) -> None:
        folder = run / "explanations"
        if not folder.is_dir():
            raise SitegenError(f"{run}: not a delphi run (no explanations/ folder)")
        explainer = None
        config = run / "run_config.json"
        if config.is_file():
            self.file = config
            try:
                cfg = _json_value(self.raw_text(config))
            except ValueError as err:
                raise self.fail("", f"JSON syntax error ({err})") from None
            if isinstance(cfg, dict) and cfg.get("explainer_model") is not None:
                explainer = self.optional_text(cfg["explainer_model"], "", "explainer_model")
        texts: dict[str, tuple[str, int, str]] = {}  # file stem (score-file form) -> (module, latent, text)
        for file in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
            self.file = file
            if file.suffix != ".txt":
                continue
            m = DELPHI_NAME.match(file.name)
            if not m:
                raise self.fail("", "file name: expected delphi's <module>_latent<N>.txt")
            try:
                value = _json_value(self.raw_text(file))
            except ValueError:
                raise self.fail("", "expected a JSON string (delphi writes each explanation as one)") from None
            if not isinstance(value, str):
                raise self.fail("", f"expected a JSON string (the explanation), got {_short(value)}")
            texts[file.stem] = (m["module"], int(m["index"]), self.text(value, "", "explanation"))
        modules = sorted({module for module, _, _ in texts.values()})
        if self.source.dictionary is not None and len([m for m in modules if m not in self.by_name]) > 1:
            self.file = folder
            raise self.fail(
                "",
                f"holds the modules {', '.join(modules)}, and 'dictionary:' of {self.source.where} names one "
                "dictionary: name the site dictionaries after the modules, or give one module a run",
            )
        targets: dict[str, SiteDictionary] = {}
        for module in modules:
            self.file = folder
            if module in self.by_name:
                targets[module] = self.by_name[module]
            elif self.source.dictionary is not None:
                targets[module] = self.by_name[self.source.dictionary]
            else:
                m = MODULE_LAYER.search(module)
                if m is None:
                    raise self.fail(
                        "",
                        f"module {module!r} is no site dictionary (have: {', '.join(self.by_name)}) and names no "
                        f"layer: give {self.source.where} a 'dictionary:'",
                    )
                targets[module] = self.by_layer(int(m[1]), "", f"module {module!r}", "it")
        scores: dict[str, list[Score]] = {stem: [] for stem in texts}
        score_root = run / "scores"
        for scorer_dir in sorted(p for p in score_root.iterdir() if p.is_dir()) if score_root.is_dir() else []:
            self.delphi_scores(scorer_dir, texts, scores, explainer)
        for stem, (module, latent, text) in sorted(texts.items(), key=lambda kv: (kv[1][0], kv[1][1])):
            self.file = folder / f"{stem}.txt"
            d = targets[module]
            feature = self.feature(d, latent, "", "latent")
            self.add(d, feature, text, scores[stem], explainer, "delphi")

    def delphi_scores(
        self, folder: Path, texts: dict[str, tuple[str, int, str]], scores: dict[str, list[Score]], model: str | None
    ) -> None:
        for file in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix == ".txt"):
            self.file = file
            try:
                records = _json_value(self.raw_text(file))
            except ValueError as err:
                raise self.fail("", f"JSON syntax error ({err})") from None
            if not isinstance(records, list):
                raise self.fail("", f"expected a JSON list of scored examples, got {_short(records)}")
            if records and (not isinstance(records[0], dict) or "activating" not in records[0]):
                log.info(
                    f"[sitegen] {folder}: not a classifier scorer's output (its examples have no 'activating'); "
                    "its scores are left out"
                )
                return
            if file.stem not in texts:
                raise self.fail("", f"a score without an explanation (no explanations/{file.name})")
            value, n, answered = self.balanced_accuracy(records)
            detail = (
                f"delphi's class-balanced accuracy, (TP/P + TN/N) / 2, over the {answered} of {n} scored examples "
                "the scorer answered"
            )
            scores[file.stem].append(Score(value, folder.name, model, detail))

    def balanced_accuracy(self, records: list[Any]) -> tuple[float, int, int]:
        """delphi's ``compute_confusion`` (threshold 0.5, unanswered examples left out) and
        ``compute_classification_metrics``' accuracy, for one latent's scored examples."""
        tp = tn = pos = neg = 0
        for i, r in enumerate(records):
            at = f"[{i}]."
            if not isinstance(r, dict):
                raise self.fail("", f"[{i}]: expected a scored example, got {_short(r)}")
            for key in ("activating", "prediction"):
                if key not in r:
                    raise self.fail("", f"{at}{key}: missing")
            activating, prediction = r["activating"], r["prediction"]
            if activating not in (True, False, 0, 1) or isinstance(activating, float):
                raise self.fail("", f"{at}activating: expected true or false, got {_short(activating)}")
            if prediction is None:
                continue
            if isinstance(prediction, bool) or (isinstance(prediction, (int, float)) and math.isfinite(prediction)):
                predicted = prediction >= 0.5
            else:
                raise self.fail("", f"{at}prediction: expected true, false or null, got {_short(prediction)}")
            if activating:
                pos += 1
                tp += predicted
            else:
                neg += 1
                tn += not predicted
        value = ((tp / pos if pos else 0.0) + (tn / neg if neg else 0.0)) / 2
        return value, len(records), pos + neg

    # -- plain YAML / CSV ---------------------------------------------------------------------------

    def plain_row(self, row: dict, at: str, line: int | None) -> None:
        for key in row:
            if key not in PLAIN_FIELDS:
                close = difflib.get_close_matches(str(key), PLAIN_FIELDS, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else f" (fields: {', '.join(PLAIN_FIELDS)})"
                raise self.fail(at, f"{key}: unknown field{hint}")
        for key in PLAIN_REQUIRED:
            if row.get(key) is None or row.get(key) == "":
                raise self.fail(at, f"{key}: missing")
        d = self.named(row["dictionary"], at, "dictionary")
        feature = self.feature(d, self.index(row["feature"], at, "feature"), at, "feature")
        text = self.text(row["explanation"], at, "explanation", numbers=True)
        score = row.get("score")
        if isinstance(score, str):
            try:
                score = float(score) if score.strip() else None
            except ValueError:
                raise self.fail(at, f"score: expected a number, got {_short(score)}") from None
        value = self.number(score, at, "score")
        scorer = self.optional_text(row.get("scorer"), at, "scorer")
        scores = [] if value is None else [Score(value, scorer or "score", None, "as the file gives it")]
        self.add(d, feature, text, scores, self.optional_text(row.get("source"), at, "source"), "plain", line)

    def plain_yaml(self, text: str) -> None:
        try:
            rows = yaml.load(text, Loader=_LineLoader)  # a SafeLoader that records lines
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            at = f"line {mark.line + 1}: " if mark else ""
            raise self.fail(at, f"YAML syntax error: {getattr(err, 'problem', None) or 'invalid YAML'}") from None
        if rows is None:
            return
        if not isinstance(rows, list):
            raise self.fail("", "expected a list of {dictionary, feature, explanation, score, source} rows")
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise self.fail(f"item {i}: ", f"expected a mapping of {', '.join(PLAIN_FIELDS)}, got {_short(row)}")
            line = row.pop(_LINE)
            self.plain_row(row, f"line {line}: ", line)

    def plain_csv(self, text: str) -> None:
        reader = csv.reader(io.StringIO(text, newline=""))
        try:
            header = next(reader, None)
            if header is None:
                return
            header = [h.strip() for h in header]
            for key in header:
                if key not in PLAIN_FIELDS:
                    close = difflib.get_close_matches(key, PLAIN_FIELDS, n=1)
                    hint = f" (did you mean '{close[0]}'?)" if close else f" (fields: {', '.join(PLAIN_FIELDS)})"
                    raise self.fail("line 1: ", f"{key}: unknown column{hint}")
            missing = [k for k in PLAIN_REQUIRED if k not in header]
            if missing:
                raise self.fail(
                    "line 1: ", f"{missing[0]}: missing column (the header names {', '.join(PLAIN_REQUIRED)})"
                )
            start = reader.line_num + 1
            for cells in reader:
                line, start = start, reader.line_num + 1
                if not any(c.strip() for c in cells):
                    continue
                if len(cells) != len(header):
                    raise self.fail(f"line {line}: ", f"expected {len(header)} cells (as the header), got {len(cells)}")
                self.plain_row({k: v.strip() for k, v in zip(header, cells)}, f"line {line}: ", line)
        except csv.Error as err:
            raise self.fail(f"line {reader.line_num}: ", f"CSV syntax error ({err})") from None


NEURON_EXPLAINER_SCORE = (
    "neuron-explainer's preferred score: the correlation of the simulator's expected activations with the true "
    "ones over all scored sequences"
)


def _line(at: str) -> int | None:
    m = re.match(r"line (\d+)", at)
    return int(m[1]) if m else None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:59] + "\u2026"
