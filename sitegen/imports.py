"""Imported NeuronRecord folders (``kind: neuron_records``): pages without a model.

A folder holds neuron-explainer ``NeuronRecord`` files laid out ``<layer>/<index>.json``: OpenAI's
public collated activations (``.../collated-activations/<layer>/<neuron>.json``), or one
dictionary's folder of ``sitegen export --format neuron-records``. Site ids: a file's index in a
one-layer folder; with several layers, the layer's place among them x (1 + the largest index) +
index, as attention heads are numbered. Torch-free: a config of imports alone builds its cache
and site without loading torch or a model (``build_record_cache``).

Each file is checked as it is read (one line naming the file and the field, exit 2): the
``dataclass_name`` tags where present, ``neuron_id`` equal to the file's place, every record's
``tokens`` strings and ``activations`` finite numbers, one per token (or n(n+1)/2 for
token-pair records). Values are kept exactly, so an export of the import is the same files.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from sitegen import __version__
from sitegen.cache.feature_data import DictionarySummary
from sitegen.cache.files import SEQUENCES_FILE, STRINGS_FILE, batch_path, write_batch, write_json
from sitegen.cache.record_data import RECORDS_KIND, ActivationRecord, RecordData
from sitegen.config import Config, DictionaryConfig, feature_ids
from sitegen.errors import SitegenError
from sitegen.report import log
from sitegen.text import short_repr

NUMBER = re.compile(r"-?[0-9]+")
MOMENTS = ("mean", "variance", "skewness", "kurtosis")


@dataclass
class RecordFolder:
    """One ``kind: neuron_records`` dictionary: its folder and the files of its built ids."""

    name: str
    path: Path
    layers: list[int]  # the folder's layers, ascending (or the one ``layer:`` names)
    per_layer: int  # 1 + the largest index in any of them
    files: dict[int, tuple[int, int]]  # built site id -> (layer, index), ascending ids

    @property
    def feature_ids(self) -> list[int]:
        return list(self.files)

    def relative(self, feature: int) -> str:
        layer, index = self.files[feature]
        return f"{layer}/{index}.json"

    def summary(self) -> DictionarySummary:
        return DictionarySummary(
            self.name,
            RECORDS_KIND,
            "",
            0,
            len(self.layers) * self.per_layer,
            self.feature_ids,
            "none",
            "",
            self.layers,
        )

    def fingerprint(self) -> str:
        """A digest of the built files' places and bytes (a changed file makes the cache stale)."""
        h = hashlib.blake2b(digest_size=16)
        for f in self.files:
            rel = self.relative(f)
            h.update(f"{rel}\0".encode())
            h.update(hashlib.blake2b((self.path / rel).read_bytes(), digest_size=16).digest())
        return h.hexdigest()


def _numbered(folder: Path, suffix: str, where: str) -> dict[int, str]:
    """The entries of ``folder`` named ``<integer><suffix>`` (layer folders: ``suffix`` ""), by
    that integer; a name such as ``01`` or ``-0``, which another could shadow, is an error."""
    out = {}
    with os.scandir(folder) as entries:
        for e in entries:
            if not (e.name.endswith(suffix) and (e.is_file() if suffix else e.is_dir())):
                continue
            stem = e.name[: len(e.name) - len(suffix)]
            if not NUMBER.fullmatch(stem):
                continue
            if str(int(stem)) != stem:
                raise SitegenError(f"{where}.path: {folder / e.name}: write the number as {int(stem)}{suffix}")
            out[int(stem)] = e.name
    return out


def scan_record_folder(cfg: Config, dc: DictionaryConfig, where: str) -> RecordFolder:
    """The files a ``kind: neuron_records`` entry builds; a SitegenError naming the key otherwise."""
    assert dc.path is not None, "config._check requires a path"
    root = cfg.resolve(dc.path)
    if not root.is_dir():
        raise SitegenError(f"{where}.path: {root} is not a folder")
    layer_dirs = _numbered(root, "", where)
    if not layer_dirs:
        raise SitegenError(
            f"{where}.path: {root} has no layer folders <layer>/<index>.json (for a sitegen export, "
            "give the folder of one dictionary inside it)"
        )
    if dc.layer is not None:
        if dc.layer not in layer_dirs:
            raise SitegenError(f"{where}.layer: {root} has no folder for layer {dc.layer} (has {sorted(layer_dirs)})")
        layer_dirs = {dc.layer: layer_dirs[dc.layer]}
    layers = sorted(layer_dirs)
    indices = {layer: _numbered(root / layer_dirs[layer], ".json", where) for layer in layers}
    found = [i for layer in layers for i in indices[layer]]
    if not found or min(found) < 0:
        problem = "no <index>.json files" if not found else f"a negative index ({min(found)}.json)"
        raise SitegenError(f"{where}.path: {root}: {problem} in the layer folders {layers}")
    per_layer = max(found) + 1
    existing = {slot * per_layer + i: (layer, i) for slot, layer in enumerate(layers) for i in sorted(indices[layer])}
    files = selected(dc.features, existing, len(layers) * per_layer, where)
    if isinstance(files, int):
        slot, i = divmod(files, per_layer)
        raise SitegenError(f"{where}.features: id {files}: {root}/{layers[slot]}/{i}.json does not exist")
    if not files:
        raise SitegenError(f"{where}.features: {dc.features!r} selects none of the {len(existing)} files in {root}")
    return RecordFolder(dc.name, root, layers, per_layer, files)


def selected(
    spec: list[int] | str | None, existing: dict[int, tuple[int, int]], d_sae: int, where: str
) -> dict[int, tuple[int, int]] | int:
    """The files ``features:`` selects (default: all) by site id, ascending (a range: the files in
    it), or the first listed id without a file."""
    if spec is None:
        return existing
    if isinstance(spec, str):
        ids = feature_ids(spec, d_sae, where)
        return {f: place for f, place in existing.items() if ids[0] <= f <= ids[-1]}
    wanted = feature_ids(spec, d_sae, where)
    absent = next((f for f in wanted if f not in existing), None)
    return absent if absent is not None else {f: existing[f] for f in wanted}


def record_folders(cfg: Config) -> list[RecordFolder]:
    return [
        scan_record_folder(cfg, dc, f"dictionaries[{i}]")
        for i, dc in enumerate(cfg.dictionaries)
        if dc.kind == RECORDS_KIND
    ]


class RecordReader:
    """Reads and checks one NeuronRecord file; every problem is one line naming it and the field."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, field: str, problem: str) -> SitegenError:
        return SitegenError(f"{self.path}: {field}: {problem}")

    def load(self) -> dict:
        try:
            raw = self.path.read_bytes()
        except OSError as err:
            raise SitegenError(f"{self.path}: cannot read ({err.strerror or err})") from None
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            try:  # Python's json writes NaN moments (neuron-explainer's default) unquoted
                obj = json.loads(raw)
            except (ValueError, UnicodeDecodeError, RecursionError) as err:
                reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)
                raise SitegenError(f"{self.path}: not JSON ({reason})") from None
        if not isinstance(obj, dict):
            raise SitegenError(f"{self.path}: expected a NeuronRecord object, got {type(obj).__name__}")
        self.tag(obj, "the file", "NeuronRecord")
        return obj

    def tag(self, obj: dict, field: str, name: str) -> None:
        tag = obj.get("dataclass_name", name)
        if tag != name:
            raise self.fail(field, f"dataclass_name is {short_repr(tag)}, expected {name!r}")

    def index(self, value: Any, field: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(field, f"expected an integer, got {short_repr(value)}")
        return value

    def number(self, value: Any, field: str) -> float | None:
        """A moment or boundary: a number, None for null or NaN (neuron-explainer's 'not computed')."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise self.fail(field, f"expected a finite number or null, got {short_repr(value)}")
        return value

    def record(self, obj: Any, field: str) -> ActivationRecord:
        if not isinstance(obj, dict):
            raise self.fail(field, f"expected an ActivationRecord object, got {type(obj).__name__}")
        self.tag(obj, field, "ActivationRecord")
        tokens, acts = obj.get("tokens"), obj.get("activations")
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise self.fail(f"{field}.tokens", "expected a list of strings")
        if not isinstance(acts, list):
            raise self.fail(f"{field}.activations", "expected a list of numbers")
        for n, v in enumerate(acts):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise self.fail(f"{field}.activations[{n}]", f"expected a finite number, got {short_repr(v)}")
        record = ActivationRecord(tokens, acts)
        if len(acts) != len(tokens) and not record.is_pairs():
            raise self.fail(
                f"{field}.activations",
                f"{len(acts)} values for {len(tokens)} tokens (expected one per token, or n(n+1)/2 token-pair values)",
            )
        return record

    def records(self, value: Any, field: str) -> list[ActivationRecord]:
        if not isinstance(value, list):
            raise self.fail(field, f"expected a list of ActivationRecords, got {type(value).__name__}")
        return [self.record(r, f"{field}[{n}]") for n, r in enumerate(value)]

    def read(self, *, dictionary: str, feature: int, layer: int, index: int, source: str) -> RecordData:
        obj = self.load()
        nid = obj.get("neuron_id")
        if not isinstance(nid, dict):
            raise self.fail("neuron_id", "missing (expected {layer_index, neuron_index})")
        self.tag(nid, "neuron_id", "NeuronId")
        got = (
            self.index(nid.get("layer_index"), "neuron_id.layer_index"),
            self.index(nid.get("neuron_index"), "neuron_id.neuron_index"),
        )
        if got != (layer, index):
            raise self.fail("neuron_id", f"says layer {got[0]} neuron {got[1]}, but the file is at {source}")
        by_q = obj.get("random_sample_by_quantile")
        bounds = obj.get("quantile_boundaries")
        if bounds is not None and not isinstance(bounds, list):
            raise self.fail("quantile_boundaries", f"expected a list of numbers or null, got {short_repr(bounds)}")
        if by_q is not None and not isinstance(by_q, list):
            raise self.fail("random_sample_by_quantile", f"expected a list of lists or null, got {short_repr(by_q)}")
        moments = {k: self.number(obj.get(k), k) for k in MOMENTS}
        return RecordData(
            dictionary=dictionary,
            feature=feature,
            layer=layer,
            index=index,
            source=source,
            top=self.records(obj.get("most_positive_activation_records", []), "most_positive_activation_records"),
            random=self.records(obj.get("random_sample", []), "random_sample"),
            by_quantile=None
            if by_q is None
            else [self.records(b, f"random_sample_by_quantile[{n}]") for n, b in enumerate(by_q)],
            quantile_boundaries=None
            if bounds is None
            else [self.number(b, f"quantile_boundaries[{n}]") for n, b in enumerate(bounds)],
            **moments,
        )


def read_record(folder: RecordFolder, feature: int) -> RecordData:
    layer, index = folder.files[feature]
    source = folder.relative(feature)
    return RecordReader(folder.path / source).read(
        dictionary=folder.name, feature=feature, layer=layer, index=index, source=source
    )


def check_records(folder: RecordFolder) -> None:
    """Read and check every file the folder builds (``sitegen validate``)."""
    for f in folder.files:
        read_record(folder, f)


def write_record_batches(folder: RecordFolder, cache_dir: Path, dict_index: int, batches: list[list[int]]) -> None:
    """The given batches (lists of site ids) of an imported folder, as batch files."""
    for b, ids in enumerate(batches):
        if not batch_path(cache_dir, dict_index, b).is_file():
            write_batch(cache_dir, dict_index, b, [read_record(folder, f) for f in ids])


def build_record_cache(cfg: Config, folders: list[RecordFolder], cache_dir: Path) -> dict:
    """The cache of a config whose dictionaries are all imported NeuronRecord folders (no model,
    no dataset): their batch files and a manifest; resumes from the batches a matching earlier
    build left. Returns the manifest."""
    from sitegen.cache.manifest import drop_if_stale, make_head, remove_partial_files

    size = cfg.features.feature_batch_size
    plan = [[f.feature_ids[i : i + size] for i in range(0, len(f.feature_ids), size)] for f in folders]
    head = make_head(
        cfg,
        fingerprints={f"dictionary:{f.name}": f.fingerprint() for f in folders},
        summaries=[f.summary() for f in folders],
        n_batches=[len(p) for p in plan],
        provenance={"model": "none (imported NeuronRecords)", "sitegen_version": __version__},
    )
    cache_dir.mkdir(parents=True, exist_ok=True)
    remove_partial_files(cache_dir)
    drop_if_stale(cache_dir, head)
    manifest_path = cache_dir / "manifest.json"
    write_json(manifest_path, {**head, "complete": False, "stats": {}})
    for i, (folder, batches) in enumerate(zip(folders, plan)):
        log.info(f"[sitegen] reading {len(folder.files)} NeuronRecords of '{folder.name}' from {folder.path}")
        write_record_batches(folder, cache_dir, i, batches)
    for name in ("tokens.json", STRINGS_FILE, SEQUENCES_FILE):
        write_json(cache_dir / name, {})
    manifest = {**head, "complete": True, "stats": {"imported records": sum(len(f.files) for f in folders)}}
    write_json(manifest_path, manifest)
    return manifest
