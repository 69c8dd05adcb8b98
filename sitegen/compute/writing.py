"""Writing a build's batch files and collecting what its pages show beyond them (``Shown``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from sitegen.cache.feature_data import FeatureData
from sitegen.cache.files import write_batch
from sitegen.cache.head_data import HeadData
from sitegen.compute.hovers import Pending
from sitegen.compute.serialise import feature_data


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


def write_features(cache_dir: Path, index: int, b: int, features: list[FeatureData], shown: Shown) -> int:
    """Write one batch file; add what it shows to ``shown``; return its NaN/inf count."""
    write_batch(cache_dir, index, b, features)
    n_nonfinite = 0
    for fd in features:
        shown.add(fd)
        n_nonfinite += fd.n_nonfinite
    return n_nonfinite


def write_heads(cache_dir: Path, index: int, heads: list[HeadData], plan: list[list[int]], shown: Shown) -> None:
    """Write every batch of head dictionary ``index`` (``heads`` in id order, as ``plan`` batches them)."""
    by_id = {hd.feature: hd for hd in heads}
    for b, ids in enumerate(plan):
        batch = [by_id[f] for f in ids]
        write_batch(cache_dir, index, b, batch)
        for hd in batch:
            shown.tokens.update(hd.token_ids())


def write_pending(cache_dir: Path, pending: list[Pending], shown: Shown, progress: bool) -> int:
    """Write the batches whose hovers the hover phase filled in; return their NaN/inf count."""
    n_nonfinite = 0
    total = sum(len(p.tensors.ids) for p in pending)
    pending.reverse()
    with paused_gc(), tqdm(total=total, desc="writing", unit="feature", disable=not progress) as bar:
        while pending:
            p = pending.pop()  # freed once written
            n_nonfinite += write_features(cache_dir, p.dictionary, p.batch, feature_data(p.tensors), shown)
            bar.update(len(p.tensors.ids))
    return n_nonfinite
