"""Arrays kept in memory within a byte budget and on disk beyond it.

``features.activation_cache_mb`` is the memory for cached activations: the hook
activations one model pass captures (``activations.py``) and each dictionary's store
of non-zero activations (``store.py``), whose entries grow with the data like the
hook activations do. ``Arrays`` hands out memory while the budget lasts and, after
that, memmaps of pre-allocated files in the cache folder's scratch ``activations.tmp/``;
``EntryLog`` is the store's append-only list of entries from the encode, which moves
to plain files as soon as it would overrun the budget. Values are the same either
way; only where they live changes.
"""

from __future__ import annotations

import itertools
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from sitegen.errors import SitegenError

_names = itertools.count()


class Mappings:
    """Tensors mapped to new files. ``release`` hands their resident pages back (the data stays
    in the files and the kernel's page cache), so reading or writing through a mapping does
    not leave every page it touched counted in this process's memory."""

    def __init__(self) -> None:
        self.maps: list[mmap.mmap] = []

    def tensor(self, path: Path, shape: tuple[int, ...], dtype: torch.dtype, what: str) -> torch.Tensor:
        """Zeros mapped to a new file at ``path``; the file's blocks are allocated first, so a
        full disk is this one-line error and not a SIGBUS on a later write."""
        np_dtype = numpy_dtype(dtype)
        size = int(np.prod(shape)) * np_dtype.itemsize
        try:
            with open(path, "w+b") as f:
                if size and hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(f.fileno(), 0, size)
                else:
                    f.truncate(size)
                if not size:
                    return torch.empty(shape, dtype=dtype)
                mapped = mmap.mmap(f.fileno(), size)
        except OSError as err:
            raise SitegenError(f"{path}: cannot create the {what} on disk ({err.strerror or err})") from None
        self.maps.append(mapped)
        return torch.from_numpy(np.frombuffer(mapped, dtype=np_dtype).reshape(shape))

    def release(self) -> None:
        """Advice only: where the platform lacks it or refuses, the pages simply stay."""
        if hasattr(mmap, "MADV_DONTNEED"):
            for mapped in self.maps:
                try:
                    mapped.madvise(mmap.MADV_DONTNEED)
                except OSError:
                    pass

    def close(self) -> None:
        """Forget the mappings: each goes when the last tensor on it does (closing one that a
        tensor still uses would fail)."""
        self.maps.clear()


def numpy_dtype(dtype: torch.dtype) -> np.dtype:
    return torch.empty(0, dtype=dtype).numpy().dtype


class Arrays:
    """Allocates 1-d tensors: in memory while their bytes fit ``budget``, else memmaps in ``folder``."""

    def __init__(self, budget: int, folder: Path):
        self.left = budget
        self.folder = folder
        self.files: list[Path] = []
        self.mappings = Mappings()

    def file(self, stem: str) -> Path:
        """A fresh file name in the folder, deleted by ``close``."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SitegenError(
                f"{self.folder}: cannot create the activation store's folder ({err.strerror or err})"
            ) from None
        path = self.folder / f"{stem}-{next(_names)}"
        self.files.append(path)
        return path

    def take(self, n_bytes: int) -> bool:
        """Whether ``n_bytes`` more fit in memory (and if so, count them)."""
        if n_bytes > self.left:
            return False
        self.left -= n_bytes
        return True

    def empty(self, n: int, dtype: torch.dtype) -> torch.Tensor:
        """[n] uninitialised in memory, or zeros on disk."""
        if self.take(n * dtype.itemsize):
            return torch.empty(n, dtype=dtype)
        return self.mappings.tensor(self.file("store"), (n,), dtype, "activation store")

    def delete(self, paths: list[Path]) -> None:
        """Delete files (a mapping still in use keeps its file's data until its last tensor goes)."""
        for path in paths:
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass  # the scratch folder goes at the start of the next build
        self.files = [p for p in self.files if p not in paths]

    def close(self) -> None:
        self.mappings.close()
        self.delete(list(self.files))
        try:
            self.folder.rmdir()  # unless other files (the activation memmaps) are still there
        except OSError:
            pass


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
        self.write(tuple(torch.empty(0, dtype=t) for t in self.dtypes))  # every file exists
        for piece in self.pieces:
            self.write(piece)
        self.pieces.clear()
        self.arrays.left += self.held
        self.held = 0

    def write(self, columns: tuple[torch.Tensor, ...]) -> None:
        assert self.paths is not None, "written only once spilled"
        for path, column in zip(self.paths, columns):
            try:
                with open(path, "ab") as f:
                    column.numpy().tofile(f)
            except OSError as err:
                raise SitegenError(f"{path}: cannot write the activation store ({err.strerror or err})") from None

    def pieces_of(self, size: int) -> Iterator[tuple[torch.Tensor, ...]]:
        """The columns in order, in aligned pieces: as appended while in memory, of ``size``
        entries when read back from disk."""
        if self.paths is None:
            yield from self.pieces
            return
        for start in range(0, self.length, size):
            n = min(size, self.length - start)
            piece = []
            for path, t in zip(self.paths, self.dtypes):
                try:
                    column = np.fromfile(path, numpy_dtype(t), count=n, offset=start * t.itemsize)
                    piece.append(torch.from_numpy(column))
                except OSError as err:
                    raise SitegenError(f"{path}: cannot read the activation store ({err.strerror or err})") from None
            yield tuple(piece)

    def close(self) -> None:
        """Drop the entries: the pieces in memory (their bytes go back to the budget) or the files."""
        self.pieces.clear()
        self.arrays.left += self.held
        self.held = 0
        if self.paths is not None:
            self.arrays.delete(self.paths)
