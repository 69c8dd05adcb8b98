"""Hovers grouped by position across batches: the hover stage (``feature_shard.hover_shard``)
runs these on one token shard's positions.

Each batch hands over a ``HoverRequest`` (its pairs of feature and position, with the
activation) and, for ``direct`` effects, its features' logit effects, which go into one
``LogitTable``. All ``direct`` hovers are then computed in one pass over positions
(``effects.direct_hovers``): a position's clean logits and probabilities are computed once,
whichever features of whichever dictionaries hover there. The ``exact`` hovers of one
dictionary go into one set of re-runs (``effects.exact_hovers`` sorts the copies of all its
features by length). A hover's numbers depend only on its own position, feature and
activation, so they come out the same whichever other batches or shards share the work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer

from sitegen.compute.effects import HoverTable, NormConvention, direct_hovers, exact_hovers
from sitegen.compute.spill import Arrays


@dataclass
class HoverRequest:
    """The hovers of one batch, sorted by (feature, position)."""

    rows: torch.Tensor  # [h] direct: row of the LogitTable; exact: feature id (row of the decoder)
    flat: torch.Tensor  # [h] flat position (sequence * n_ctx + position)
    acts: torch.Tensor  # [h] activation; direct: as the residual stream receives it (post-norm scale divided out)
    next_tok: torch.Tensor  # [h] the token after the position


@dataclass
class ExactSource:
    """What the re-runs of one dictionary's exact hovers need."""

    hook_name: str
    start: torch.Tensor | None  # [n_seq, ctx, d_model] residual entering the hook's layer, or None
    decoder: torch.Tensor  # [d_sae, d_in]


class LogitTable:
    """Logit effects u ([rows, d_vocab] float32) of every feature whose direct hovers a build
    computes, filled batch by batch: in memory within ``arrays``' budget, else a memmap. Rows of
    a dictionary's batches are contiguous; ``u_max`` and ``basis`` are kept beside them."""

    def __init__(self, n_rows: int, d_vocab: int, basis_width: int | None, arrays: Arrays):
        self.u = arrays.empty(n_rows * d_vocab, torch.float32).view(n_rows, d_vocab)
        self.u_max = torch.zeros(n_rows)  # max |u| per row
        self.basis = None if basis_width is None else torch.zeros(n_rows, basis_width, dtype=torch.int64)
        self.rows = 0
        self.arrays = arrays

    def add(self, u: torch.Tensor, basis: torch.Tensor | None) -> int:
        """Store a batch's u [B, V] (and its hover basis ids [B, 2k]); returns its first row."""
        first, self.rows = self.rows, self.rows + len(u)
        self.u[first : self.rows] = u
        self.u_max[first : self.rows] = u.abs().amax(1)
        if self.basis is not None and basis is not None:
            self.basis[first : self.rows] = basis
        self.arrays.mappings.release()
        return first

    def release(self) -> None:
        self.arrays.mappings.release()


def split_table(table: HoverTable, sizes: list[int]) -> list[HoverTable]:
    """The table cut into consecutive pieces of ``sizes`` rows."""
    out, first = [], 0
    for n in sizes:
        out.append(table.take(torch.arange(first, first + n)))
        first += n
    return out


def position_order(rows: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """The permutation sorting pairs by (position, row)."""
    return torch.argsort(flat * (int(rows.max()) + 1) + rows) if len(rows) else torch.zeros(0, dtype=torch.int64)


def direct_tables(
    model: HookedTransformer,
    *,
    norm: NormConvention,
    final: torch.Tensor,
    logits: LogitTable,
    requests: list[HoverRequest],
    k: int,
    release: Callable[[], None],
    tick: Callable[[int], None],
) -> list[HoverTable]:
    """The direct hover table of each request, all requests' positions computed together."""
    rows = torch.cat([r.rows for r in requests])
    flat = torch.cat([r.flat for r in requests])
    order = position_order(rows, flat)

    def release_all() -> None:
        release()
        logits.release()

    table = direct_hovers(
        model,
        norm=norm,
        final=final,
        u=logits.u,
        u_max=logits.u_max,
        basis=logits.basis,
        rows=rows[order],
        flat=flat[order],
        acts=torch.cat([r.acts for r in requests])[order],
        next_tok=torch.cat([r.next_tok for r in requests])[order],
        k=k,
        release=release_all,
        tick=tick,
    )
    return split_table(table.take(torch.argsort(order)), [len(r.rows) for r in requests])


def exact_tables(
    model: HookedTransformer,
    *,
    source: ExactSource,
    tokens: torch.Tensor,
    final: torch.Tensor,
    requests: list[HoverRequest],
    k: int,
    batch_size: int,
    release: Callable[[], None],
    tick: Callable[[int], None],
) -> list[HoverTable]:
    """The exact hover table of each request of one dictionary, all re-run together."""
    table = exact_hovers(
        model,
        hook_name=source.hook_name,
        start=source.start,
        tokens=tokens,
        final=final,
        decoder=source.decoder,
        rows=torch.cat([r.rows for r in requests]),
        flat=torch.cat([r.flat for r in requests]),
        acts=torch.cat([r.acts for r in requests]),
        next_tok=torch.cat([r.next_tok for r in requests]),
        k=k,
        batch_size=batch_size,
        release=release,
        tick=tick,
    )
    return split_table(table, [len(r.rows) for r in requests])
