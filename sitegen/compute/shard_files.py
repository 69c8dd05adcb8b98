"""Where the shards of a build leave their outputs (``executor.storage``, or the cache's scratch
``shards.tmp/``), and the plan every stage reads.

Each output is written atomically (a temporary name, then a rename) under a folder named by a
digest of what the build depends on, so a retried or rerun shard finds a finished output and
reuses it, and a changed config never reads an old one. A token shard's folder is renamed
into place whole, after its last file: it is there complete or not at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sitegen.errors import SitegenError

SHARDS_DIR = "shards.tmp"  # the local executor's storage, under the cache folder


def run_key(head: dict) -> str:
    """The storage folder's name: a digest of the manifest's head (config keys, inputs)."""
    text = json.dumps(head, sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def token_ranges(n_seq: int, batch_size: int, n_shards: int) -> list[tuple[int, int]]:
    """``n_shards`` consecutive ranges of sequences (fewer if there are fewer model batches), each
    made of whole model batches, so every forward pass sees the same sequences on any executor."""
    n_batches = -(-n_seq // batch_size)
    n = max(1, min(n_shards, n_batches))
    bounds = [round(k * n_batches / n) * batch_size for k in range(n + 1)]
    return [(lo, min(hi, n_seq)) for lo, hi in zip(bounds, bounds[1:])]


def feature_groups(batches: list[tuple[int, int]], n_shards: int) -> list[list[tuple[int, int]]]:
    """The (dictionary, batch) pairs cut into ``n_shards`` consecutive groups (fewer if fewer pairs)."""
    n = max(1, min(n_shards, len(batches)))
    bounds = [round(k * len(batches) / n) for k in range(n + 1)]
    return [batches[lo:hi] for lo, hi in zip(bounds, bounds[1:]) if hi > lo]


@dataclass
class BuildPlan:
    """What every stage of one build reads (picklable: it travels to Ray workers)."""

    storage: Path  # this build's folder of shard outputs
    out: Path  # the cache folder the batch files go to
    plan: list[list[list[int]]]  # per dictionary, its batches' feature ids
    missing: dict[int, list[int]]  # per dictionary, the batches to build
    todo: list[int]  # feature dictionaries (SAEs, neurons) with batches to build
    heads: list[int]  # head dictionaries with batches to build
    tokens: list[tuple[int, int]]  # token shards: ranges of sequences
    features: list[list[tuple[int, int]]]  # feature shards: (dictionary, batch) pairs

    def shard_dir(self, s: int) -> Path:
        return self.storage / "tokens" / str(s)

    def contents(self) -> dict:
        """What a token shard holds for this plan: each dictionary's batches, the head dictionaries."""
        return {"batches": {str(i): self.missing[i] for i in self.todo}, "heads": self.heads}

    def covered(self, held: dict) -> bool:
        """Whether a finished token shard holding ``held`` has all this plan needs."""
        batches = held.get("batches", {})
        return set(self.heads) <= set(held.get("heads", [])) and all(
            set(self.missing[i]) <= set(batches.get(str(i), [])) for i in self.todo
        )

    def pending(self, i: int, b: int) -> Path:
        """A batch built but for its hovers (its FeatureTensors)."""
        return self.storage / "pending" / f"{i}-{b}.pt"

    def request(self, i: int, b: int) -> Path:
        """That batch's hover request (and, for direct effects, its logit effects' maxima and basis)."""
        return self.storage / "pending" / f"{i}-{b}.request.pt"

    def logit_effects(self, i: int, b: int) -> Path:
        return self.storage / "pending" / f"{i}-{b}.u.npy"

    def hovers(self, s: int) -> Path:
        return self.storage / "hovers" / f"{s}.pt"


def _failed(path: Path, err: OSError) -> SitegenError:
    return SitegenError(f"{path}: cannot write a shard's output ({err.strerror or err})")


def _temporary(path: Path) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _failed(path.parent, err) from None
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    os.close(fd)
    return Path(name)


def save(path: Path, obj: Any) -> None:
    """``obj`` (tensors, dataclasses of tensors) to ``path``, atomically."""
    tmp = _temporary(path)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise _failed(path, err) from None


def load(path: Path) -> Any:
    try:
        return torch.load(path, weights_only=False)
    except (OSError, EOFError, RuntimeError) as err:
        raise SitegenError(f"{path}: cannot read a shard's output ({err})") from None


def save_array(path: Path, tensor: torch.Tensor) -> None:
    """A float32 array as ``.npy``, atomically (read back as a memmap)."""
    tmp = _temporary(path)
    try:
        with open(tmp, "wb") as f:
            np.save(f, tensor.contiguous().numpy())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise _failed(path, err) from None


def load_array(path: Path) -> torch.Tensor:
    """The array at ``path``, mapped copy-on-write (pages are read as used)."""
    try:
        return torch.from_numpy(np.load(path, mmap_mode="c"))
    except (OSError, ValueError) as err:
        raise SitegenError(f"{path}: cannot read a shard's output ({err})") from None


def finished_folder(tmp: Path, final: Path) -> None:
    """Move a shard's complete folder into place (another attempt's finished folder wins)."""
    try:
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def new_folder(final: Path) -> Path:
    """A fresh temporary folder beside ``final``."""
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    except OSError as err:
        raise _failed(final.parent, err) from None
