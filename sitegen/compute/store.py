"""A dictionary's activations over every token, and the sums correlations need.

Counted activations: positions not in ``data.ignore`` whose activation is finite.
NaN/inf activations are counted per feature (``n_nonfinite``) and left out.
Correlations use the *clean* positions: counted, and with a finite hook vector
and finite activations of every feature, so every pair of vectors is compared
over the same positions.

- ``SparseActs`` (SAEs): one full encode of all tokens, kept as the non-zero
  entries (feature-major for per-feature work, token-major for the Gram rows), in
  memory within what ``features.activation_cache_mb`` leaves and on disk beyond it
  (``spill.py``). The per-feature sums over hook dimensions [d_sae, d_in] and each
  batch's working memory come on top of the budget.
- ``NeuronActs`` (MLP neurons, an identity dictionary): the hook activations are
  the activations; dense.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from tqdm import tqdm

from sitegen.compute.spill import Arrays, EntryLog
from sitegen.sources.dictionaries import Dictionary

CHUNK_ELEMENTS = 1 << 24  # dense [tokens, features] elements per chunk of bookkeeping (sums, matmuls)
CPU_ENCODE_ELEMENTS = 1 << 20  # dense [tokens, features] elements per CPU encode: 4 MiB stays in cache
GRAM_TOKENS = 1 << 16  # tokens per range of the Gram rows' product (fixed: the same sums at any budget)
PIECE_ENTRIES = 1 << 20  # entries per piece of the feature-major sort read from disk (~70 MiB of temporaries)


@dataclass
class BatchEntries:
    """Counted non-zero activations of a feature batch, grouped by feature."""

    rows: torch.Tensor  # [m] int64: index into the batch, ascending
    tok: torch.Tensor  # [m] int64: flat token index (seq * ctx + pos), ascending within a row
    val: torch.Tensor  # [m] float32
    n_tokens: torch.Tensor  # [B] int64: counted positions per feature
    n_nonfinite: torch.Tensor  # [B] int64: positions left out for a NaN/inf activation

    def keys(self, n_tok: int) -> torch.Tensor:
        """[m] int64 ascending: row * n_tok + tok, for lookups with searchsorted."""
        return self.rows * n_tok + self.tok


class ActivationStore(Protocol):
    """What a feature batch reads of a dictionary's activations over the whole data: a store
    (``SparseActs``, ``NeuronActs``) or the token shards' parts (``feature_shard.ShardedActs``)."""

    n_clean: int
    sx: torch.Tensor  # [d_sae] float64 sums over clean positions
    sxx: torch.Tensor
    sh: torch.Tensor  # [d_in] float64 sums over clean positions
    shh: torch.Tensor

    def entries(self, ids: torch.Tensor) -> BatchEntries: ...

    def correlation_sums(self, ids: torch.Tensor, ent: BatchEntries) -> tuple[torch.Tensor, torch.Tensor]: ...

    def release(self) -> None: ...

    def close(self) -> None: ...


def ranges(starts: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenated ranges starts[i] : starts[i] + lens[i] -> (positions [m], range of each [m])."""
    which = torch.repeat_interleave(torch.arange(len(lens)), lens)
    offsets = torch.cumsum(lens, 0) - lens
    return torch.arange(int(lens.sum())) - offsets[which] + starts[which], which


def finite_rows(x: torch.Tensor) -> torch.Tensor:
    """[n] bool: rows of x with only finite values (the row sum test is exact but for overflow)."""
    ok = torch.isfinite(x.sum(1))
    if not bool(ok.all()):
        bad = (~ok).nonzero().squeeze(1)
        ok[bad] = torch.isfinite(x[bad]).all(1)
    return ok


def chunk_rows(width: int, elements: int = CHUNK_ELEMENTS) -> int:
    return max(64, elements // max(width, 1))


class SparseActs:
    """All activations of an SAE, from one full encode, as non-zero entries; the sums over
    hook dimensions are streamed in the same pass (token chunks in float32, added in float64).
    The entries live in memory within ``budget`` bytes and in memmaps in ``folder`` beyond it
    (``spill.Arrays``); ``close`` deletes those."""

    def __init__(
        self,
        d: Dictionary,
        hook: torch.Tensor,
        counted: torch.Tensor,
        *,
        device: str | torch.device,
        progress: bool,
        budget: int,
        folder: Path,
        release_hook: Callable[[], None] = lambda: None,
    ):
        n_tok, d_sae, d_in = len(hook), d.d_sae, hook.shape[1]  # hook: [n_tok, d_in]; counted: [n_tok]
        self.n_tok, self.d_sae = n_tok, d_sae
        self.nonfinite = torch.zeros(d_sae, dtype=torch.int64)  # [d_sae]
        self.clean = torch.zeros(n_tok, dtype=torch.bool)  # [n_tok]
        self.hook_sums = torch.zeros(d_sae, d_in, dtype=torch.float64)  # sum of x_f * h over clean positions
        self.sh = torch.zeros(d_in, dtype=torch.float64)  # sums over clean positions
        self.shh = torch.zeros(d_in, dtype=torch.float64)
        self.sx = torch.zeros(d_sae, dtype=torch.float64)
        self.sxx = torch.zeros(d_sae, dtype=torch.float64)
        self.n_counted = int(counted.sum())
        self.arrays = Arrays(budget, folder)
        try:
            log = EntryLog(self.arrays, (index_dtype(n_tok), torch.int32, torch.float32))  # (token, feature, value)
            per_feature, per_token = self.encode(d, hook, counted, device, progress, log, release_hook)
            self.n_clean = int(self.clean.sum())
            self.store(log, per_feature, per_token)
        except BaseException:
            self.close()
            raise

    def encode(
        self,
        d: Dictionary,
        hook: torch.Tensor,
        counted: torch.Tensor,
        device: str | torch.device,
        progress: bool,
        log: EntryLog,
        release_hook: Callable[[], None],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode every token once: log the counted finite entries, token-major, and stream the
        sums. Returns the number of entries per feature [d_sae] and of clean ones per token [n_tok].
        ``release_hook`` hands back the pages of a memmapped ``hook`` read so far."""
        per_feature = torch.zeros(self.d_sae, dtype=torch.int64)
        per_token = torch.zeros(self.n_tok, dtype=torch.int32)
        step = chunk_rows(self.d_sae)
        for s in tqdm(range(0, self.n_tok, step), desc=f"encode {d.name}", unit="chunk", disable=not progress):
            h = hook[s : s + step]  # [c, d_in]
            row, feat, val = nonzero_activations(d, h, device)
            keep = counted[s : s + step]
            bad = ~torch.isfinite(val)
            clean = keep & finite_rows(h) & (torch.bincount(row[bad], minlength=len(h)) == 0)
            self.clean[s : s + step] = clean
            if not bool(keep.all()) or bool(bad.any()):
                self.nonfinite += torch.bincount(feat[bad & keep[row]], minlength=self.d_sae)
                use = keep[row] & ~bad
                row, feat, val = row[use], feat[use], val[use]
            on = clean[row]
            rc, fc, vc = (row, feat, val) if bool(on.all()) else (row[on], feat[on], val[on])
            by_feature = torch.argsort(fc, stable=True)  # a feature-major CSR: 2.5x faster product than .t()
            x = csr_rows(fc[by_feature], rc[by_feature], vc[by_feature], self.d_sae, len(h))  # [d_sae, c]
            self.hook_sums.add_(x @ h)  # float32 product, added in float64
            self.sx += torch.bincount(fc, weights=vc.double(), minlength=self.d_sae)
            self.sxx += torch.bincount(fc, weights=vc.double() ** 2, minlength=self.d_sae)
            hc = (h if bool(clean.all()) else h[clean]).to(torch.float64, copy=True)
            self.sh += hc.sum(0)
            self.shh += hc.square_().sum(0)
            per_feature += torch.bincount(feat, minlength=self.d_sae)
            per_token[s : s + len(h)] = torch.bincount(rc, minlength=len(h))
            log.append(row + s, feat, val)
            release_hook()
        return per_feature, per_token

    def store(self, log: EntryLog, per_feature: torch.Tensor, per_token: torch.Tensor) -> None:
        """The logged entries, twice: feature-major (``ptr``, ``csc_tok``, ``csc_val``; by a
        counting sort, piece by piece) and, at clean positions, as the token-major float64 CSR
        ``matrix`` [n_tok, d_sae] the Gram rows multiply with."""
        self.ptr = torch.zeros(self.d_sae + 1, dtype=torch.int64)  # feature-major segments
        self.ptr[1:] = torch.cumsum(per_feature, 0)
        self.csc_tok = self.arrays.empty(log.length, index_dtype(self.n_tok))  # [nnz] by (feature, token)
        self.csc_val = self.arrays.empty(log.length, torch.float32)
        n_gram = int(per_token.sum())
        crow = torch.zeros(self.n_tok + 1, dtype=index_dtype(max(n_gram, self.d_sae)))
        crow[1:] = torch.cumsum(per_token, 0)
        col, gram_val = self.arrays.empty(n_gram, crow.dtype), self.arrays.empty(n_gram, torch.float64)
        fill, done = self.ptr[:-1].clone(), 0  # next free slot of each feature; Gram entries written
        for tok, feat, val in log.pieces_of(PIECE_ENTRIES):
            order = torch.argsort(feat, stable=True)
            f = feat[order].long()
            n_f = torch.bincount(f, minlength=self.d_sae)
            dest = fill[f] + torch.arange(len(f)) - (torch.cumsum(n_f, 0) - n_f)[f]  # rank within the feature
            self.csc_tok[dest], self.csc_val[dest] = tok[order], val[order]
            fill += n_f
            on = self.clean[tok]
            n_on = int(on.sum())
            col[done : done + n_on], gram_val[done : done + n_on] = feat[on], val[on]
            done += n_on
            self.release()
        log.close()
        self.matrix = sparse_csr(crow, col, gram_val, (self.n_tok, self.d_sae))

    def entries(self, ids: torch.Tensor) -> BatchEntries:
        pos, rows = ranges(self.ptr[ids], self.ptr[ids + 1] - self.ptr[ids])
        n_nonfinite = self.nonfinite[ids]
        return BatchEntries(
            rows, self.csc_tok[pos].long(), self.csc_val[pos], self.n_counted - n_nonfinite, n_nonfinite
        )

    def correlation_sums(self, ids: torch.Tensor, ent: BatchEntries) -> tuple[torch.Tensor, torch.Tensor]:
        """Sums over clean positions, float64: ([B, d_sae] of x_f * x_g, [B, d_in] of x_f * h)."""
        gram = torch.zeros(len(ids), self.d_sae, dtype=torch.float64)
        crow, col, val = self.matrix.crow_indices(), self.matrix.col_indices(), self.matrix.values()
        on = self.clean[ent.tok]
        rows, tok, vals = ent.rows[on], ent.tok[on], ent.val[on].double()
        by_range = torch.argsort(tok // GRAM_TOKENS, stable=True)  # (row, token) order kept within a range
        rows, tok, vals = rows[by_range], tok[by_range], vals[by_range]
        ends = torch.cumsum(torch.bincount(tok // GRAM_TOKENS, minlength=-(-self.n_tok // GRAM_TOKENS)), 0).tolist()
        for r, t0 in enumerate(range(0, self.n_tok, GRAM_TOKENS)):  # a memmapped matrix is read range by range
            t1, part = min(t0 + GRAM_TOKENS, self.n_tok), slice(ends[r - 1] if r else 0, ends[r])
            x = csr_rows(rows[part], tok[part] - t0, vals[part], len(ids), t1 - t0)  # [B, t1 - t0]
            lo, hi = int(crow[t0]), int(crow[t1])
            part_matrix = sparse_csr(crow[t0 : t1 + 1] - lo, col[lo:hi], val[lo:hi], (t1 - t0, self.d_sae))
            # into a dense result: CSR @ CSR with a sparse result (torch.sparse.mm) leaks about the
            # result's size per call on CPU (pytorch/pytorch#109445) and is 2x slower
            gram = torch.addmm(gram, x, part_matrix)
            self.release()
        return gram, self.hook_sums[ids]

    def release(self) -> None:
        """Hand back the resident pages of the store's memmaps."""
        self.arrays.mappings.release()

    def close(self) -> None:
        """Delete the store's files (its mappings stay readable until the store is dropped)."""
        self.arrays.close()


def nonzero_activations(
    d: Dictionary, h: torch.Tensor, device: str | torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Non-zero activations of the hook rows h [c, d_in] as (row, feature, value) [m] each,
    token-major; NaN counts as non-zero. On CPU the encode runs on sub-chunks whose dense
    output stays in cache, written into one reused buffer where the dictionary can, which
    makes the encode and the scan for non-zeros memory-cheap (encode + scan of 4096 x 4096:
    0.20 s in one fresh piece, 0.12 s in fresh pieces of 256 rows, 0.10 s in one buffer)."""
    cpu = torch.device(device).type == "cpu"
    step = chunk_rows(d.d_sae, CPU_ENCODE_ELEMENTS) if cpu else len(h)
    buf = torch.empty(min(step, len(h)), d.d_sae) if cpu else None  # reused by encodes that can
    flats, vals = [], []
    for s in range(0, len(h), step):
        x = h[s : s + step].to(device)
        acts = d.encode(x, None if buf is None else buf[: len(x)]).cpu().view(-1)  # [c * d_sae]
        flat = acts.nonzero().squeeze(1)
        flats.append(flat + s * d.d_sae)
        vals.append(acts[flat])
    flat = torch.cat(flats) if len(flats) > 1 else flats[0]
    return flat // d.d_sae, flat % d.d_sae, torch.cat(vals) if len(vals) > 1 else vals[0]


def index_dtype(n: int) -> torch.dtype:
    """int32 for indices and counts below 2**31 (half the bytes, faster sparse products), else int64."""
    return torch.int32 if n < 2**31 else torch.int64


def csr_rows(rows: torch.Tensor, cols: torch.Tensor, val: torch.Tensor, n_rows: int, n_cols: int) -> torch.Tensor:
    """Sparse CSR [n_rows, n_cols] from entries sorted by row."""
    dtype = index_dtype(max(len(val), n_cols))
    crow = torch.zeros(n_rows + 1, dtype=dtype)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n_rows), 0)
    return sparse_csr(crow, cols.to(dtype), val, (n_rows, n_cols))


def sparse_csr(crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A CSR tensor on these (valid, same-dtype) index arrays, without copies or checks."""
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, val, shape, check_invariants=False)


class NeuronActs:
    """MLP neurons: the hook activations themselves are the feature activations."""

    def __init__(
        self, d: Dictionary, hook: torch.Tensor, counted: torch.Tensor, release_hook: Callable[[], None] = lambda: None
    ):
        self.d = d
        self.release_hook = release_hook
        self.hook = hook  # [n_tok, d_mlp]
        self.n_tok, self.d_sae = len(hook), d.d_sae
        self.counted = counted
        self.n_counted = int(counted.sum())
        self.clean = counted.clone()
        step = chunk_rows(d.d_sae)
        for s in range(0, self.n_tok, step):
            self.clean[s : s + step] &= finite_rows(hook[s : s + step])
            self.release()
        self.n_clean = int(self.clean.sum())
        self.sh, self.shh = hook_moments(hook, self.clean, self.release)
        self.sx, self.sxx = self.sh, self.shh

    def entries(self, ids: torch.Tensor) -> BatchEntries:
        x = self.d.encode_subset(self.hook, ids).T  # [B, n_tok]
        self.release()
        bad = ~torch.isfinite(x) & self.counted
        n_nonfinite = bad.sum(1)
        keep = self.counted & ~bad & (x != 0)
        rows, tok = keep.nonzero().unbind(1)
        return BatchEntries(rows, tok, x[rows, tok], self.n_counted - n_nonfinite, n_nonfinite)

    def correlation_sums(self, ids: torch.Tensor, ent: BatchEntries) -> tuple[torch.Tensor, torch.Tensor]:
        """Sums over clean positions of x_f * x_g, float64 ([B, d_mlp]; features are hook dims)."""
        out = torch.zeros(len(ids), self.d_sae, dtype=torch.float64)
        step = chunk_rows(self.d_sae)
        for s in range(0, self.n_tok, step):
            h = torch.where(self.clean[s : s + step, None], self.hook[s : s + step], 0.0)  # [c, d_mlp]
            out += (h[:, ids].T @ h).double()
            self.release()
        return out, out

    def release(self) -> None:
        """Hand back the pages of the (memmapped) hook activations read so far."""
        self.release_hook()

    def close(self) -> None:
        """Nothing to delete: the hook activations belong to the activation cache."""


def hook_moments(
    hook: torch.Tensor, clean: torch.Tensor, release: Callable[[], None]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and sum of squares of each hook dimension over clean positions, float64; ``release``
    after each chunk read."""
    width = hook.shape[1]
    sh = torch.zeros(width, dtype=torch.float64)
    shh = torch.zeros(width, dtype=torch.float64)
    step = chunk_rows(width)
    for s in range(0, len(hook), step):
        h = hook[s : s + step][clean[s : s + step]].double()
        sh += h.sum(0)
        shh += (h * h).sum(0)
        release()
    return sh, shh
