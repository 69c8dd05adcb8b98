"""The feature-data cache in the build folder: the contract between compute and render.

Layout of ``<cache>/``:
- ``manifest.json``: format version, config hash, input fingerprints, dictionary
  summaries, build statistics; ``complete`` is true once every batch is written.
- ``tokens.json``: ``{token_id: display text}`` for every token id any FeatureData uses.
- ``features/<dictionary index>/<batch:05d>.json``: a JSON list of FeatureData dicts
  (``stored_form``: a direct hover keeps coef and shift, not the lists they give).

Every file is written atomically (temp file + fsync + rename), so an interrupted
build leaves only whole files, and a rerun resumes at the first missing batch.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from sitegen.compute.feature_data import (
    FORMAT_VERSION,
    DictionarySummary,
    Example,
    FeatureData,
    Histogram,
    Hover,
    IntervalGroup,
    Ranked,
    TokenValues,
)
from sitegen.compute.rounding import sig_float
from sitegen.errors import SitegenError


def write_atomic(path: Path, data: bytes) -> None:
    """Write bytes to ``path`` so readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False).encode()


def write_json(path: Path, obj: Any) -> None:
    try:
        write_atomic(path, dumps(obj))
    except OSError as err:
        raise SitegenError(f"{path}: cannot write ({err.strerror or err})") from None


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise SitegenError(f"{path}: unreadable cache file ({err})") from None


def batch_path(cache: Path, dict_index: int, batch: int) -> Path:
    return cache / "features" / str(dict_index) / f"{batch:05d}.json"


def stored_form(obj: Any) -> dict:
    """The cache's dict of one of the FeatureData dataclasses: its fields, except that a direct
    hover (``coef`` set) leaves out its two lists, which follow from coef, shift and the
    feature's hover_basis (``direct_lists``), and a listed one leaves out coef and shift."""
    if isinstance(obj, Hover):
        if obj.coef is not None:
            return {"coef": obj.coef, "loss_effect": obj.loss_effect, "shift": obj.shift}
        return {"bottom": obj.bottom, "loss_effect": obj.loss_effect, "top": obj.top}
    return vars(obj)


def dumps_features(features: list[FeatureData]) -> bytes:
    """The batch file of ``features``: a JSON list of their ``stored_form``s."""
    return json.dumps(features, default=stored_form, separators=(",", ":"), sort_keys=True, ensure_ascii=False,
                      allow_nan=False).encode()


def write_batch(cache: Path, dict_index: int, batch: int, features: list[FeatureData]) -> None:
    write_batch_text(cache, dict_index, batch, dumps_features(features))


def write_batch_text(cache: Path, dict_index: int, batch: int, text: bytes) -> None:
    """Write a batch file from its JSON text (the engine's fast path, compute/serialise.py)."""
    path = batch_path(cache, dict_index, batch)
    try:
        write_atomic(path, text)
    except OSError as err:
        raise SitegenError(f"{path}: cannot write ({err.strerror or err})") from None


def _token_values(d: dict) -> TokenValues:
    return TokenValues(d["token_ids"], d["values"])


def direct_lists(coef: float, shift: float, basis: TokenValues) -> tuple[TokenValues, TokenValues]:
    """(top, bottom) of a direct hover: the log-prob changes -coef * u - shift at the basis
    tokens (the k lowest u ascending, then the k highest descending), largest increases first
    and largest decreases first, at the cache's 4 significant digits."""
    k = len(basis.token_ids) // 2
    low, high = slice(0, k), slice(k, 2 * k)
    up, down = (low, high) if coef > 0 else (high, low)

    def changes(part: slice) -> TokenValues:
        return TokenValues(basis.token_ids[part], [sig_float(-coef * u - shift) for u in basis.values[part]])

    return changes(up), changes(down)


def _hover(h: dict | None, basis: TokenValues) -> Hover | None:
    if h is None:
        return None
    if h.get("coef") is not None:
        return Hover(h["loss_effect"], *direct_lists(h["coef"], h["shift"], basis), h["coef"], h["shift"])
    return Hover(h["loss_effect"], _token_values(h["top"]), _token_values(h["bottom"]))


def _example(d: dict, basis: TokenValues) -> Example:
    hovers = [_hover(h, basis) for h in d["hovers"]]
    return Example(d["seq"], d["pos"], d["start"], d["token_ids"], d["acts"], hovers)


def _group(d: dict | None, basis: TokenValues) -> IntervalGroup | None:
    if d is None:
        return None
    return IntervalGroup(d["lower"], d["upper"], d["fraction"], [_example(e, basis) for e in d["examples"]])


def feature_data_from_dict(d: dict) -> FeatureData:
    """A FeatureData from its ``stored_form`` (as read from a batch file)."""
    basis = _token_values(d["hover_basis"])
    return FeatureData(
        **{
            **d,
            "act_histogram": Histogram(**d["act_histogram"]),
            "top_examples": [_example(e, basis) for e in d["top_examples"]],
            "intervals": [_group(g, basis) for g in d["intervals"]],
            "negative": _group(d["negative"], basis),
            "logit_top": _token_values(d["logit_top"]),
            "logit_bottom": _token_values(d["logit_bottom"]),
            "logit_histogram": Histogram(**d["logit_histogram"]),
            "neuron_alignment": Ranked(**d["neuron_alignment"]),
            "correlated_neurons": Ranked(**d["correlated_neurons"]),
            "correlated_features": Ranked(**d["correlated_features"]),
            "decoder_neighbours": Ranked(**d["decoder_neighbours"]),
            "top_tokens": _token_values(d["top_tokens"]),
            "hover_basis": basis,
        }
    )


def read_manifest(cache: Path) -> dict:
    path = cache / "manifest.json"
    if not path.is_file():
        raise SitegenError(f"{path}: no feature cache here; run 'sitegen build' first")
    manifest = read_json(path)
    if manifest.get("format") != FORMAT_VERSION:
        raise SitegenError(f"{path}: cache format {manifest.get('format')} != {FORMAT_VERSION}; rebuild")
    return manifest


def dictionary_summaries(manifest: dict) -> list[DictionarySummary]:
    return [DictionarySummary(**d) for d in manifest["dictionaries"]]


def read_token_table(cache: Path) -> dict[int, str]:
    return {int(k): v for k, v in read_json(cache / "tokens.json").items()}


def read_features(cache: Path, dict_index: int) -> Iterator[FeatureData]:
    """Every cached FeatureData of one dictionary, in feature order."""
    folder = cache / "features" / str(dict_index)
    for path in sorted(folder.glob("*.json")):
        for d in read_json(path):
            yield feature_data_from_dict(d)
