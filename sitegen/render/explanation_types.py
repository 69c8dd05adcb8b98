"""The shared types of ``site.explanations`` (render/explanations.py): the constants, the
dataclasses, the text sanitiser, the YAML loader that keeps line numbers, and the checks of
field values (``_Checks``) that every format reader (render/explanation_readers.py) builds on."""

from __future__ import annotations

import gzip
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from sitegen.cache.head_data import HEADS_KIND
from sitegen.errors import SitegenError
from sitegen.report import log
from sitegen.text import short_repr, visible

FORMATS = ("neuron-explainer", "neuronpedia", "delphi", "plain")
ENTRY_KEYS = ("path", "format", "dictionary")
PLAIN_FIELDS = ("dictionary", "feature", "explanation", "score", "scorer", "source")
PLAIN_REQUIRED = ("dictionary", "feature", "explanation")
FILE_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".yaml", ".yml", ".csv")
MAX_TEXT_CHARS = 1000  # an explanation longer than this is cut (pages stay small)
INDEX_TEXT_CHARS = 200  # the index keeps the best explanation's first characters
DELPHI_NAME = re.compile(r"^(?P<module>.+)_latent(?P<index>\d+)\.txt$")
MODULE_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|$)")

NEURON_EXPLAINER_SCORE = (
    "neuron-explainer's preferred score: the correlation of the simulator's expected activations with the true "
    "ones over all scored sequences"
)


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

    def id_of(self, layer: int, index: int) -> int | None:
        """The site id of neuron ``index`` of ``layer``: itself, or in a dictionary of several layers
        (imported NeuronRecords) the layer's place x the per-layer size + index; None where the
        layer is not one of them or the index is beyond a layer's size."""
        if len(self.layers) < 2:
            return index
        per_layer = self.d_sae // len(self.layers)
        if layer not in self.layers or not 0 <= index < per_layer:
            return None
        return self.layers.index(layer) * per_layer + index


@dataclass(frozen=True)
class ExplanationSource:
    """One entry of ``site.explanations``."""

    path: Path
    format: str | None
    dictionary: str | None
    where: str  # the config key, for messages
    shown: str  # the path as pages show it: relative to the config's folder


def clean_text(raw: str) -> str:
    """An untrusted explanation as one bounded line of visible text: whitespace runs become one
    space, control, format (bidi, zero-width) and other invisible characters ``\\uXXXX``."""
    text = " ".join(visible(" ".join(raw.split())).split())
    if len(text) > MAX_TEXT_CHARS:
        text = text[: MAX_TEXT_CHARS - 1].rstrip() + "\u2026"
    return text


def _json_value(text: str | bytes) -> Any:
    """JSON, also with the NaN/Infinity that Python's json writes."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def _line(at: str) -> int | None:
    m = re.match(r"line (\d+)", at)
    return int(m[1]) if m else None


class _LineLoader(yaml.SafeLoader):
    """YAML mappings that remember the line they start on (under the key ``_LINE``)."""


_LINE = "\0line"


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict:
    mapping = loader.construct_mapping(node, deep=True)
    mapping[_LINE] = node.start_mark.line + 1
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


@dataclass
class _Checks:
    """What every format reader shares: the entry it reads, where it is, the checks of field
    values and dictionary names, and what it found."""

    source: ExplanationSource
    dictionaries: Sequence[SiteDictionary]
    found: list[Explanation] = field(default_factory=list)
    file: Path = Path()
    shown: str = ""
    fixed: dict[str, str] = field(default_factory=dict)  # one foreign id -> the entry's dictionary
    skipped: list[str] = field(default_factory=list)  # the dictionary kinds of those skipped, this file

    def __post_init__(self) -> None:
        self.by_name = {d.name: d for d in self.dictionaries}

    # -- errors and checks ---------------------------------------------------------------------

    def fail(self, at: str, problem: str) -> SitegenError:
        return SitegenError(f"{self.file}: {at}{problem}")

    def text(self, value: Any, at: str, name: str, numbers: bool = False) -> str:
        """An explanation's text; ``numbers``: a number is text too (YAML reads ``42`` as one)."""
        if isinstance(value, bool) or not isinstance(value, (str, int, float) if numbers else str):
            raise self.fail(at, f"{name}: expected the explanation's text, got {short_repr(value)}")
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
            raise self.fail(at, f"{name}: expected text, got {short_repr(value)}")
        return clean_text(str(value)) or None

    def number(self, value: Any, at: str, name: str) -> float | None:
        """A score: a finite number, or None (null, NaN: not scored)."""
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(at, f"{name}: expected a number, got {short_repr(value)}")
        try:
            number = float(value)
        except OverflowError:
            raise self.fail(at, f"{name}: expected a number, got an integer of {len(str(value))} digits") from None
        return number if math.isfinite(number) else None

    def index(self, value: Any, at: str, name: str) -> int:
        ok = isinstance(value, int) and value >= 0 or isinstance(value, str) and value.isascii() and value.isdigit()
        if isinstance(value, bool) or not ok:
            raise self.fail(at, f"{name}: expected a feature id (an integer >= 0), got {short_repr(value)}")
        return int(value)

    def feature(self, d: SiteDictionary, feature: int, at: str, name: str) -> int:
        """A feature (or head) id, in range; one that this site does not build is skipped in ``add``."""
        unit = "head" if d.kind == HEADS_KIND else "feature"
        if not 0 <= feature < d.d_sae:
            raise self.fail(at, f"{name}: {unit} {feature} is out of range ('{d.name}' has {d.d_sae:,})")
        return feature

    def named(self, name: Any, at: str, key: str) -> SiteDictionary:
        if not isinstance(name, str) or name not in self.by_name:
            raise self.fail(at, f"{key}: no site dictionary {short_repr(name)} (have: {', '.join(self.by_name)})")
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
        if feature not in d.built:  # a dump over a whole dictionary: the site builds some of it
            self.skipped.append(d.kind)
            return
        self.found.append(Explanation(d.name, feature, text, tuple(scores), explainer, self.shown, fmt, line))

    def report_skipped(self) -> None:
        """One line for the file just read, if it explained features this site does not build."""
        if self.skipped:
            unit = "heads" if all(k == HEADS_KIND for k in self.skipped) else "features"
            n = len(self.skipped)
            log.info(
                f"[sitegen] explanations: {self.shown}: {n:,} explanation{'s' if n != 1 else ''} of {unit} "
                "not built in this site skipped"
            )
            self.skipped = []

    def raw_text(self, file: Path) -> str:
        try:
            data = gzip.decompress(file.read_bytes()) if file.name.lower().endswith(".gz") else file.read_bytes()
            return data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise SitegenError(f"{file}: not UTF-8 text (undecodable byte at offset {err.start})") from None
        except (OSError, EOFError, gzip.BadGzipFile) as err:
            raise SitegenError(f"{file}: cannot read ({getattr(err, 'strerror', None) or err})") from None
