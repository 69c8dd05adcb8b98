"""The cache folder's files: written atomically, read back into FeatureData.

Layout of ``<cache>/``:
- ``manifest.json``: format version, config hash, input fingerprints, dictionary
  summaries, build statistics; ``complete`` is true once every batch is written.
- ``tokens.json``: ``{token_id: display text}`` for every token id any FeatureData uses.
- ``features/<dictionary index>/<batch:05d>.json``: a JSON list of FeatureData, each
  dataclass as an object of its fields (``write_batch``, by orjson: building the objects
  and encoding them took 0.4-0.96x the time of the hand-joined JSON text it replaced).

Every file is written atomically (temp file + fsync + rename), so an interrupted
build leaves only whole files, and a rerun resumes at the first missing batch.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson

from sitegen.cache.feature_data import (
    DictionarySummary,
    DirectHover,
    Example,
    FeatureData,
    Histogram,
    Hover,
    IntervalGroup,
    ListedHover,
    NeuronRecords,
    Ranked,
    SequenceActivations,
    TokenValues,
)
from sitegen.cache.head_data import HeadData, HeadRecord, HeadSummary, PairScalars
from sitegen.cache.prompt_data import Ablation, PromptData, PromptNode, Trace, Upstream
from sitegen.cache.record_data import RecordData, record_data_from_dict
from sitegen.errors import SitegenError

T = TypeVar("T")


def write_atomic(path: Path, data: bytes) -> None:
    """Write bytes to ``path`` so readers see the old file or the whole new one; an OSError
    becomes a one-line SitegenError naming the file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise SitegenError(f"{path}: cannot write ({err.strerror or err})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise SitegenError(f"{path}: cannot write ({err.strerror or err})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def dumps(obj: Any) -> bytes:
    """Deterministic JSON: dict keys sorted, dataclasses as their fields in order. orjson writes
    NaN as null: callers pass finite floats (compute.rounding.rounded raises on any other)."""
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, dumps(obj))


def read_json(path: Path) -> Any:
    try:
        return orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as err:
        raise SitegenError(f"{path}: unreadable cache file ({err})") from None


def batch_path(cache: Path, dict_index: int, batch: int) -> Path:
    return cache / "features" / str(dict_index) / f"{batch:05d}.json"


def write_batch(
    cache: Path, dict_index: int, batch: int, features: list[FeatureData] | list[HeadData] | list[RecordData]
) -> None:
    write_atomic(batch_path(cache, dict_index, batch), dumps(features))


def _token_values(d: dict) -> TokenValues:
    return TokenValues(d["token_ids"], d["values"])


def _hover(h: dict | None) -> Hover | None:
    if h is None:
        return None
    if "coef" in h:
        return DirectHover(h["coef"], h["loss_effect"], h["shift"])
    return ListedHover(h["loss_effect"], _token_values(h["top"]), _token_values(h["bottom"]))


def _example(d: dict) -> Example:
    return Example(d["seq"], d["pos"], d["start"], d["token_ids"], d["acts"], [_hover(h) for h in d["hovers"]])


def _group(d: dict | None) -> IntervalGroup | None:
    if d is None:
        return None
    return IntervalGroup(d["lower"], d["upper"], d["fraction"], [_example(e) for e in d["examples"]])


def _sequences(items: list[dict]) -> list[SequenceActivations]:
    return [SequenceActivations(**r) for r in items]


def _records(d: dict | None) -> NeuronRecords | None:
    if d is None:
        return None
    return NeuronRecords(
        **{
            **d,
            "top": _sequences(d["top"]),
            "random": _sequences(d["random"]),
            "by_quantile": [_sequences(b) for b in d["by_quantile"]],
        }
    )


def feature_data_from_dict(d: dict) -> FeatureData:
    """A FeatureData from its JSON object (as read from a batch file)."""
    return FeatureData(
        **{
            **d,
            "act_histogram": Histogram(**d["act_histogram"]),
            "top_examples": [_example(e) for e in d["top_examples"]],
            "intervals": [_group(g) for g in d["intervals"]],
            "negative": _group(d["negative"]),
            "logit_top": _token_values(d["logit_top"]),
            "logit_bottom": _token_values(d["logit_bottom"]),
            "logit_histogram": Histogram(**d["logit_histogram"]),
            "neuron_alignment": Ranked(**d["neuron_alignment"]),
            "correlated_neurons": Ranked(**d["correlated_neurons"]),
            "correlated_features": Ranked(**d["correlated_features"]),
            "decoder_neighbours": Ranked(**d["decoder_neighbours"]),
            "top_tokens": _token_values(d["top_tokens"]),
            "hover_basis": _token_values(d["hover_basis"]),
            "records": _records(d.get("records")),
        }
    )


def _read_list(path: Path, from_dict: Callable[[dict], T], what: str) -> list[T]:
    """A batch file's objects; one line naming the file where it is not ``what`` of this sitegen."""
    data = read_json(path)
    try:
        return [from_dict(d) for d in data]
    except (KeyError, TypeError) as err:
        raise SitegenError(f"{path}: not {what} of this sitegen ({err}); rebuild the cache") from None


def read_batch(path: Path) -> list[FeatureData]:
    return _read_list(path, feature_data_from_dict, "a feature batch")


def _record(d: dict) -> HeadRecord:
    return HeadRecord(**{**d, "scalars": [PairScalars(**s) for s in d["scalars"]]})


def head_data_from_dict(d: dict) -> HeadData:
    """A HeadData from its JSON object (as read from a batch file)."""
    s = d["summary"]
    summary = HeadSummary(
        **{**s, "top_keys": _token_values(s["top_keys"]), "top_queries": _token_values(s["top_queries"])}
    )
    return HeadData(
        **{
            **d,
            "summary": summary,
            "top_records": [_record(r) for r in d["top_records"]],
            "random_records": [_record(r) for r in d["random_records"]],
        }
    )


def read_head_batch(path: Path) -> list[HeadData]:
    return _read_list(path, head_data_from_dict, "an attention-head batch")


def read_record_batch(path: Path) -> list[RecordData]:
    return _read_list(path, record_data_from_dict, "a NeuronRecord batch")


PROMPTS_FILE = "prompts.json"
SEQUENCES_FILE = "sequences.json"  # {sequence index: token ids} of the sequences NeuronRecord data holds


STRINGS_FILE = "token_strings.json"  # {token id: the token decoded alone} of every id in tokens.json (exports)


def read_token_strings(cache: Path) -> dict[int, str]:
    return {int(k): v for k, v in read_json(cache / STRINGS_FILE).items()}


def read_sequences(cache: Path) -> dict[int, list[int]]:
    path = cache / SEQUENCES_FILE
    return {int(k): v for k, v in read_json(path).items()} if path.is_file() else {}


def write_prompts(cache: Path, prompts: list[PromptData]) -> None:
    write_json(cache / PROMPTS_FILE, prompts)


def prompt_data_from_dict(d: dict) -> PromptData:
    return PromptData(
        **{
            **d,
            "top_predictions": _token_values(d["top_predictions"]),
            "next_tokens": [_token_values(t) for t in d["next_tokens"]],
            "nodes": [PromptNode(**n) for n in d["nodes"]],
            "ablations": [Ablation(**a) for a in d["ablations"]],
            "traces": [
                Trace(t["node"], [Upstream(PromptNode(**u["node"]), u["act_grad"]) for u in t["upstream"]])
                for t in d["traces"]
            ],
        }
    )


def read_prompts(cache: Path) -> list[PromptData]:
    """The cached prompt pages' data ([] when the config has no prompts)."""
    path = cache / PROMPTS_FILE
    if not path.is_file():
        return []
    try:
        return [prompt_data_from_dict(d) for d in read_json(path)]
    except (KeyError, TypeError) as err:
        raise SitegenError(f"{path}: not prompt data of this sitegen ({err}); rebuild the cache") from None


def batch_files(cache: Path, dict_index: int) -> list[Path]:
    """The batch files of one dictionary, in feature order."""
    return sorted((cache / "features" / str(dict_index)).glob("*.json"))


def read_features(cache: Path, dict_index: int) -> Iterator[FeatureData]:
    """Every cached FeatureData of one dictionary, in feature order."""
    for path in batch_files(cache, dict_index):
        yield from read_batch(path)


def read_token_table(cache: Path) -> dict[int, str]:
    return {int(k): v for k, v in read_json(cache / "tokens.json").items()}


def dictionary_summaries(manifest: dict) -> list[DictionarySummary]:
    return [DictionarySummary(**d) for d in manifest["dictionaries"]]
