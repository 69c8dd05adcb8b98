"""Writing head batch files, and collecting what a cache's pages show beyond them (``Shown``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sitegen.cache.feature_data import FeatureData
from sitegen.cache.files import write_batch
from sitegen.cache.head_data import HeadData


@dataclass
class Shown:
    """What the cache's pages and exports show beyond the batch files: token ids (``tokens.json``)
    and the sequences of NeuronRecord data (``sequences.json``)."""

    tokens: set[int]
    seqs: set[int]

    def add(self, fd: FeatureData) -> None:
        self.tokens.update(fd.token_ids())
        if fd.records is not None:
            self.seqs.update(fd.records.sequences())


@contextmanager
def paused_gc() -> Iterator[None]:
    """Cyclic GC off: a batch creates ~10^5 short-lived acyclic objects (its FeatureData),
    and the collector's repeated scans of them would double the time spent on them."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def write_heads(cache_dir: Path, index: int, heads: list[HeadData], plan: list[list[int]]) -> None:
    """Write every batch of head dictionary ``index`` (``heads`` in id order, as ``plan`` batches them)."""
    by_id = {hd.feature: hd for hd in heads}
    for b, ids in enumerate(plan):
        write_batch(cache_dir, index, b, [by_id[f] for f in ids])
