"""Arrays kept in memory within a byte budget and on disk beyond it.

The activation store of a dictionary holds every non-zero activation over the
dataset, so it grows with the data like the hook activations do. ``Arrays`` gives
it memory while ``features.activation_cache_mb`` (less what the captured hook
activations already hold) lasts and on-disk memmaps in the build's scratch folder
after that; ``EntryLog`` is its append-only list of entries from the encode, which
moves to plain files as soon as it would overrun the budget. Values are the same
either way; only where they live changes.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from sitegen.errors import SitegenError

_names = itertools.count()


class Arrays:
    """Allocates 1-d tensors: in memory while their bytes fit ``budget``, else memmaps in ``folder``."""

    def __init__(self, budget: int, folder: Path):
        self.left = budget
        self.folder = folder
        self.files: list[Path] = []

    def file(self, stem: str, suffix: str = "") -> Path:
        """A fresh file name in the folder, deleted by ``close``."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SitegenError(f"{self.folder}: cannot create the activation store's folder "
                               f"({err.strerror or err})") from None
        path = self.folder / f"{stem}-{next(_names)}{suffix}"
        self.files.append(path)
        return path

    def take(self, n_bytes: int) -> bool:
        """Whether ``n_bytes`` more fit in memory (and if so, count them)."""
        if n_bytes > self.left:
            return False
        self.left -= n_bytes
        return True

    def empty(self, n: int, dtype: torch.dtype) -> torch.Tensor:
        """[n] uninitialised, in memory or on disk."""
        if self.take(n * dtype.itemsize):
            return torch.empty(n, dtype=dtype)
        path = self.file("store", ".npy")
        try:
            array = np.lib.format.open_memmap(path, mode="w+", dtype=numpy_dtype(dtype), shape=(n,))
        except OSError as err:
            raise SitegenError(f"{path}: cannot create the activation store's memmap ({err.strerror or err})") from None
        return torch.from_numpy(array)

    def close(self) -> None:
        """Delete the files (mappings still open keep their data until they are dropped)."""
        for path in self.files:
            path.unlink(missing_ok=True)
        self.files.clear()
        try:
            self.folder.rmdir()  # unless other files (the activation memmaps) are still there
        except OSError:
            pass


def numpy_dtype(dtype: torch.dtype) -> np.dtype:
    return torch.empty(0, dtype=dtype).numpy().dtype


class EntryLog:
    """Append-only columns of equal length (one dtype each), read back in aligned pieces."""

    def __init__(self, arrays: Arrays, dtypes: tuple[torch.dtype, ...]):
        self.arrays = arrays
        self.dtypes = dtypes
        self.pieces: list[tuple[torch.Tensor, ...]] = []  # in memory, until the budget runs out
        self.paths: list[Path] | None = None  # one file per column, once spilled
        self.held = 0  # bytes of ``pieces``
        self.length = 0

    def append(self, *columns: torch.Tensor) -> None:
        columns = tuple(c.to(t).contiguous() for c, t in zip(columns, self.dtypes))
        size = sum(c.numel() * c.element_size() for c in columns)
        if self.paths is None and self.arrays.take(size):
            self.pieces.append(columns)
            self.held += size
        else:
            self.spill()
            self.write(columns)
        self.length += len(columns[0])

    def spill(self) -> None:
        if self.paths is not None:
            return
        self.paths = [self.arrays.file(f"log{i}") for i in range(len(self.dtypes))]
        for path in self.paths:
            path.write_bytes(b"")
        for piece in self.pieces:
            self.write(piece)
        self.pieces.clear()
        self.arrays.left += self.held
        self.held = 0

    def write(self, columns: tuple[torch.Tensor, ...]) -> None:
        for path, column in zip(self.paths, columns):
            try:
                with open(path, "ab") as f:
                    f.write(column.numpy().tobytes())
            except OSError as err:
                raise SitegenError(f"{path}: cannot write the activation store ({err.strerror or err})") from None

    def pieces_of(self, size: int) -> Iterator[tuple[torch.Tensor, ...]]:
        """The columns in order, in aligned pieces (of ``size`` entries when read from disk)."""
        if self.paths is None:
            yield from self.pieces
            return
        for start in range(0, self.length, size):
            n = min(size, self.length - start)
            yield tuple(torch.from_numpy(np.fromfile(path, dtype=numpy_dtype(t), count=n, offset=start * t.itemsize))
                        for path, t in zip(self.paths, self.dtypes))

    def close(self) -> None:
        """Drop the pieces held in memory and give their bytes back to the budget."""
        self.pieces.clear()
        self.arrays.left += self.held
        self.held = 0
