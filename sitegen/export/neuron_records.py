"""The NeuronRecord export: one JSON file per feature, neuron or head in neuron-explainer's
layout (``neuron_explainer/activations/activations.py``), read from the feature cache.

Files: ``<dictionary>/<layer>/<index>.json``, each a ``NeuronRecord`` with the ``dataclass_name``
tags neuron-explainer's loader dispatches on: ``neuron_id {layer_index, neuron_index}``,
``most_positive_activation_records``, ``random_sample``, ``random_sample_by_quantile``,
``quantile_boundaries``, ``mean``, ``variance``, ``skewness``, ``kurtosis``; every record an
``ActivationRecord {tokens, activations}``: tokens as the tokenizer decodes each alone.

- SAE latents and neurons: records are whole context windows (activation 0 where the feature is
  0 or the position is not counted, e.g. BOS); the top records are ``records.top`` sequences by
  their largest activation (a multiple of 4: neuron-explainer interleaves them into train /
  calibration / valid / test), the random sample ``records.random`` (a multiple of 3).
- Attention heads: a record is the record's shown window, its activations the ranking scalar
  (``heads.rank_by``) flattened as the neuron-viewer lays out token pairs: the n-th token's
  n scalars, its keys from the window's first token up to itself, in order. Top and random
  records are the head page's; there is no quantile sample (``None``, as neuron-explainer
  writes when it does not track quantiles). ``layer_index`` is the head's layer,
  ``neuron_index`` its head number.
- Imported NeuronRecords (``kind: neuron_records``): each record as it was read, so export ->
  import -> export gives the same files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sitegen.cache.feature_data import DictionarySummary, FeatureData, NeuronRecords, SequenceActivations
from sitegen.cache.files import (
    batch_files,
    dumps,
    read_batch,
    read_head_batch,
    read_record_batch,
    read_sequences,
    read_token_strings,
    write_atomic,
)
from sitegen.cache.head_data import HEADS_KIND, HeadData, HeadRecord
from sitegen.cache.record_data import RECORDS_KIND, ActivationRecord, RecordData
from sitegen.errors import SitegenError
from sitegen.export import ExportInput

SPLITS_TOP = ("train", "calibration", "valid", "test")  # neuron-explainer's interleaved top-record splits
SPLITS_RANDOM = ("calibration", "valid", "test")  # and its random-sample splits


def split_of(rank: int, n_top: int, splits: tuple[str, ...] = SPLITS_TOP) -> str | None:
    """The split of the ``rank``-th top record (0-based) among ``n_top`` (of the random sample,
    with ``SPLITS_RANDOM``): neuron-explainer takes n // len(splits) per split, interleaved
    (record i goes to split i % len(splits)); records beyond them are in none."""
    per = n_top // len(splits)
    return splits[rank % len(splits)] if rank < per * len(splits) else None


def layer_of(summary: DictionarySummary, feature: int) -> tuple[int, int]:
    """(layer_index, neuron_index) of a feature: a head's layer and head number, an imported
    record's own; else the dictionary's layer (-1 for a model-level hook) and the feature id."""
    if summary.kind in (HEADS_KIND, RECORDS_KIND):
        return summary.head_of(feature)
    layer = summary.layer()
    return (-1 if layer is None else layer), feature


def feature_path(summary: DictionarySummary, dict_index: int, feature: int) -> str | None:
    layer, index = layer_of(summary, feature)
    return f"{summary.name}/{layer}/{index}.json"


def _record(tokens: list[str], activations: list[float]) -> dict[str, Any]:
    return {"dataclass_name": "ActivationRecord", "tokens": tokens, "activations": activations}


def _neuron_record(layer: int, index: int, **fields: Any) -> dict[str, Any]:
    return {
        "dataclass_name": "NeuronRecord",
        "neuron_id": {"dataclass_name": "NeuronId", "layer_index": layer, "neuron_index": index},
        **fields,
    }


def feature_record(
    fd: FeatureData, layer: int, sequences: dict[int, list[int]], strings: dict[int, str]
) -> dict[str, Any]:
    r: NeuronRecords | None = fd.records
    if r is None:
        raise SitegenError(f"feature {fd.feature} of '{fd.dictionary}': the cache has no record data; rebuild")

    def record(s: SequenceActivations) -> dict[str, Any]:
        ids = sequences.get(s.seq)
        if ids is None:
            raise SitegenError(f"sequences.json: sequence {s.seq} missing; rebuild the cache")
        acts = [0.0] * len(ids)
        for p, v in zip(s.positions, s.values):
            acts[p] = v
        return _record([strings[t] for t in ids], acts)

    return _neuron_record(
        layer,
        fd.feature,
        most_positive_activation_records=[record(s) for s in r.top],
        random_sample=[record(s) for s in r.random],
        random_sample_by_quantile=[[record(s) for s in b] for b in r.by_quantile],
        quantile_boundaries=r.quantile_boundaries,
        mean=r.mean,
        variance=r.variance,
        skewness=r.skewness,
        kurtosis=r.kurtosis,
    )


def head_record(hd: HeadData, strings: dict[int, str]) -> dict[str, Any]:
    def record(r: HeadRecord) -> dict[str, Any]:
        width = len(r.token_ids)
        if len(r.pairs) != width * (width + 1) // 2:
            raise SitegenError(f"head {hd.feature} of '{hd.dictionary}': a record's pairs do not fit; rebuild")
        return _record([strings[t] for t in r.token_ids], r.pairs)

    mean, variance, skewness, kurtosis = hd.moments
    return _neuron_record(
        hd.layer,
        hd.head,
        most_positive_activation_records=[record(r) for r in hd.top_records],
        random_sample=[record(r) for r in hd.random_records],
        random_sample_by_quantile=None,
        quantile_boundaries=None,
        mean=mean,
        variance=variance,
        skewness=skewness,
        kurtosis=kurtosis,
    )


def imported_record(rd: RecordData) -> dict[str, Any]:
    """An imported NeuronRecord as it was read (values exactly; key order aside)."""

    def record(r: ActivationRecord) -> dict[str, Any]:
        return _record(r.tokens, r.activations)

    by_q = rd.by_quantile
    return _neuron_record(
        rd.layer,
        rd.index,
        most_positive_activation_records=[record(r) for r in rd.top],
        random_sample=[record(r) for r in rd.random],
        random_sample_by_quantile=None if by_q is None else [[record(r) for r in b] for b in by_q],
        quantile_boundaries=rd.quantile_boundaries,
        mean=rd.mean,
        variance=rd.variance,
        skewness=rd.skewness,
        kurtosis=rd.kurtosis,
    )


def export(inp: ExportInput, folder: Path) -> None:
    """Write every built feature's NeuronRecord under ``folder``."""
    sequences, strings = read_sequences(inp.cache), read_token_strings(inp.cache)
    for i, summary in enumerate(inp.summaries):
        for path in batch_files(inp.cache, i):
            if summary.kind == RECORDS_KIND:
                for rd in read_record_batch(path):
                    write_atomic(folder / str(feature_path(summary, i, rd.feature)), dumps(imported_record(rd)))
                continue
            if summary.kind == HEADS_KIND:
                for hd in read_head_batch(path):
                    write_atomic(folder / str(feature_path(summary, i, hd.feature)), dumps(head_record(hd, strings)))
                continue
            for fd in read_batch(path):
                layer, _ = layer_of(summary, fd.feature)
                data = feature_record(fd, layer, sequences, strings)
                write_atomic(folder / str(feature_path(summary, i, fd.feature)), dumps(data))
