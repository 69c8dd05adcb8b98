"""Attention-head records and summaries, streamed over the one model pass.

For each token batch and layer of a head dictionary, the pattern hook's A [batch, head, query,
key] and the value hook's v give both token-pair scalars (``cache.head_data.SCALARS``):
A itself and the write norm ||A[i, j] v_j W_O[h]|| = A[i, j] ||v_j W_O[h]|| (A >= 0). Nothing
of the [batch, head, query, key] tensors outlives its batch: the head summaries are running
sums, the top records a running top-N by the ranking scalar's largest pair in the sequence (ties:
the earlier sequence), the random records are kept when their sequence passes by.

A record keeps, per shown query and scalar, the top-k keys (value descending, ties: the earlier
key), the sum over the other keys, and the per-token summaries over the whole sequence: total
and max in (over the query's keys), total and max out (over every query that reads the token).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from transformer_lens import HookedTransformer

from sitegen.cache.feature_data import TokenValues
from sitegen.cache.head_data import SCALARS, HeadData, HeadSummary
from sitegen.compute.head_records import NEG, maxima, records_of, scalar
from sitegen.compute.records import moments_from_powers
from sitegen.compute.rounding import rounded
from sitegen.config import FeaturesConfig, HeadsConfig
from sitegen.hooks import block_hook
from sitegen.sources.heads import HeadDictionary

RANDOM_STREAM = 0x4EAD  # the random records' generator is seeded with [seed, RANDOM_STREAM]
FIELDS = ("score", "seq", "start", "query", "key", "keys", "values", "rest", "summaries", "pairs")


def distance_edges(ctx: int) -> list[int]:
    """Bins [edges[b], edges[b + 1]) of query - key distance: 0, 1, 2-3, 4-7, ... up to ctx - 1."""
    edges = [0, 1]
    while edges[-1] < ctx:
        edges.append(min(2 * edges[-1], ctx))
    return edges


def window_size(fc: FeaturesConfig, ctx: int) -> tuple[int, int]:
    """(query tokens shown per record, tokens before its centre)."""
    if fc.whole_sequence:
        return ctx, ctx
    return min(ctx, fc.context_before + fc.context_after + 1), fc.context_before


def causal(ctx: int, device: torch.device) -> torch.Tensor:
    """[query, key] bool: key <= query."""
    return torch.ones(ctx, ctx, dtype=torch.bool, device=device).tril()


def token_summaries(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[..., 4, q] total in, max in, total out, max out of pair scalars ``x`` [..., q, k] (>= 0 where
    ``mask`` [q, k]; 0 for a token no pair reaches)."""
    x = torch.where(mask, x, 0.0)
    return torch.stack([x.sum(-1), x.amax(-1), x.sum(-2), x.amax(-2)], dim=-2)


def kept_keys(rows: torch.Tensor, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per query of ``x`` [n, w, ctx] (query positions ``rows`` [n, w]): its top ``k`` keys
    [n, w, k] (-1 past the keys it has), their values (0 there) and the sum over its other keys."""
    ctx = x.shape[-1]
    valid = torch.arange(ctx, device=x.device) <= rows[..., None]
    ordered, keys = torch.where(valid, x, -1.0).sort(dim=-1, descending=True, stable=True)
    k = min(k, ctx)
    kept = ordered[..., :k] >= 0
    rest = ordered[..., k:].clamp(min=0).sum(-1)
    return torch.where(kept, keys[..., :k], -1), torch.where(kept, ordered[..., :k], 0.0), rest


class LayerRecords:
    """The running state of one layer's built heads."""

    def __init__(self, heads: list[int], n_top: int, n_random: int, n_tokens: int, n_bins: int) -> None:
        self.heads = heads
        h = len(heads)
        self.top: dict[str, torch.Tensor] = {}
        self.random: dict[str, torch.Tensor] = {}
        self.n_top, self.n_random = n_top, n_random
        z = torch.zeros
        self.sums = {
            "entropy": z(h, dtype=torch.float64),
            "first": z(h, dtype=torch.float64),
            "previous": z(h, dtype=torch.float64),
            "self": z(h, dtype=torch.float64),
            "write": z(h, dtype=torch.float64),
            "powers": z(h, 4, dtype=torch.float64),  # sums of the ranking scalar's 1st..4th powers over pairs
            "distance": z(h, n_bins, dtype=torch.float64),
            "received": z(h, n_tokens, dtype=torch.float64),
            "written": z(h, n_tokens, dtype=torch.float64),
        }

    def merge_top(self, batch: dict[str, torch.Tensor]) -> None:
        """Keep the n_top best of the running records and ``batch``'s (each [heads, slots, ...])."""
        if not self.top:
            both = batch
        else:
            both = {f: torch.cat([self.top[f], batch[f]], dim=1) for f in FIELDS}
        order = both["score"].sort(dim=1, descending=True, stable=True).indices[:, : self.n_top]
        self.top = {f: take(both[f], order) for f in FIELDS}

    def add_random(self, batch: dict[str, torch.Tensor], slots: torch.Tensor) -> None:
        if not self.random:
            self.random = {
                f: torch.zeros((len(self.heads), self.n_random, *t.shape[2:]), dtype=t.dtype) for f, t in batch.items()
            }
            self.random["seq"].fill_(-1)
        for f in FIELDS:
            self.random[f][:, slots] = batch[f]


def take(t: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """``t`` [h, n, ...] reordered along dim 1 by ``order`` [h, m]."""
    index = order.reshape(*order.shape, *([1] * (t.ndim - 2))).expand(*order.shape, *t.shape[2:])
    return torch.take_along_dim(t, index, dim=1)


class HeadRecorder:
    """One head dictionary's records and summaries, fed by the model pass (``fwd_hooks``)."""

    def __init__(
        self,
        hd: HeadDictionary,
        model: HookedTransformer,
        *,
        tokens: torch.Tensor,  # [n_seq, ctx]
        ignore: torch.Tensor,  # [n_seq, ctx] bool
        fc: FeaturesConfig,
        hc: HeadsConfig,
        seed: int,
    ) -> None:
        self.hd, self.hc = hd, hc
        self.tokens, self.counted = tokens, ~ignore
        n_seq, ctx = tokens.shape
        self.width, self.before = window_size(fc, ctx)
        self.edges = distance_edges(ctx)
        self.n_top_tokens = fc.n_top_tokens
        self.uniq, inverse = torch.unique(tokens, return_inverse=True)
        self.inverse = inverse.reshape(n_seq, ctx)
        distance = torch.arange(ctx)[:, None] - torch.arange(ctx)[None, :]
        self.bins = (torch.bucketize(distance.clamp(min=0), torch.tensor(self.edges), right=True) - 1).reshape(-1)
        self.w_o = {layer: model.blocks[layer].attn.W_O.detach().float() for layer in hd.layers}
        self.random_seqs, self.random_queries = self.random_positions(seed, hc.random_records)
        self.layers = {
            layer: LayerRecords(
                heads, min(hc.top_records, n_seq), len(self.random_seqs), len(self.uniq), len(self.edges) - 1
            )
            for layer, heads in hd.heads_by_layer().items()
        }
        self.n_queries = 0
        self.n_previous = 0
        self.n_pairs = 0
        self.first_seq = 0
        self.v: dict[int, torch.Tensor] = {}
        self.seconds = 0.0  # spent in the hooks

    def state(self) -> dict:
        """What this recorder gathered over its sequences (one token shard's part), for ``absorb``."""
        layers = {layer: (st.top, st.random, st.sums) for layer, st in self.layers.items()}
        return {"layers": layers, "counts": (self.n_queries, self.n_previous, self.n_pairs), "seconds": self.seconds}

    def absorb(self, state: dict) -> None:
        """Add the part a recorder gathered over later sequences (token shards taken in order, so
        ties between records still go to the earlier sequence)."""
        for layer, (top, random, sums) in state["layers"].items():
            st = self.layers[layer]
            if top:
                st.merge_top(top)
            if random:
                if not st.random:
                    st.random = {f: t.clone() for f, t in random.items()}
                else:
                    slots = random["seq"][0] >= 0  # the slots that part filled
                    for f in FIELDS:
                        st.random[f][:, slots] = random[f][:, slots]
            for key, value in sums.items():
                st.sums[key] += value
        n_queries, n_previous, n_pairs = state["counts"]
        self.n_queries += n_queries
        self.n_previous += n_previous
        self.n_pairs += n_pairs
        self.seconds += state["seconds"]

    def random_positions(self, seed: int, n: int) -> tuple[list[int], list[int]]:
        """Seeded distinct sequences, ascending, each with a counted query position drawn at random."""
        rng = np.random.default_rng([seed, RANDOM_STREAM])
        usable = [s for s in range(len(self.tokens)) if bool(self.counted[s].any())]
        seqs = sorted(int(s) for s in rng.choice(usable, size=min(n, len(usable)), replace=False))
        queries = [int(rng.choice(np.flatnonzero(self.counted[s].numpy()))) for s in seqs]
        return seqs, queries

    def stop_layer(self) -> int:
        return max(self.hd.layers) + 1

    def fwd_hooks(self) -> list[tuple[str, Callable]]:
        hooks: list[tuple[str, Callable]] = []
        for layer in self.layers:
            hooks.append((block_hook(layer, "attn.hook_v"), self.keep_v(layer)))
            hooks.append((block_hook(layer, "attn.hook_pattern"), self.observe(layer)))
        return hooks

    def begin(self, first_seq: int, n_seq: int) -> None:
        """The next forward pass runs sequences first_seq .. first_seq + n_seq."""
        self.first_seq = first_seq
        counted = self.counted[first_seq : first_seq + n_seq]
        self.n_queries += int(counted.sum())
        self.n_previous += int(counted[:, 1:].sum())
        self.n_pairs += int((counted * (torch.arange(counted.shape[1]) + 1)).sum())

    def keep_v(self, layer: int) -> Callable:
        def hook(v: torch.Tensor, hook) -> None:
            self.v[layer] = v.detach()

        return hook

    def observe(self, layer: int) -> Callable:
        def hook(pattern: torch.Tensor, hook) -> None:
            t0 = time.perf_counter()
            self.record(layer, pattern.detach(), self.v.pop(layer))
            self.seconds += time.perf_counter() - t0

        return hook

    def write_norm_scale(self, layer: int, v: torch.Tensor, heads: list[int]) -> torch.Tensor:
        """[batch, head, key] ||v_key @ W_O[head]|| (each head's own key/value head)."""
        w_o = self.w_o[layer][heads].to(v.device)  # [head, d_head, d_model]
        return self.hd.head_writes(v.float(), w_o, heads).norm(dim=-1)

    @torch.no_grad()
    def record(self, layer: int, pattern: torch.Tensor, v: torch.Tensor) -> None:
        state = self.layers[layer]
        heads = state.heads
        a = pattern.float()[:, heads].cpu()  # [batch, head, query, key]
        b, h, ctx, _ = a.shape
        mask = causal(ctx, a.device)
        a = torch.where(mask, a, 0.0)
        scalars = [a, a * self.write_norm_scale(layer, v, heads).cpu()[:, :, None, :]]
        seqs = slice(self.first_seq, self.first_seq + b)
        counted = self.counted[seqs]  # [batch, query]
        self.add_sums(state, scalars, counted, self.inverse[seqs], mask)
        summaries = [token_summaries(x, mask) for x in scalars]  # [batch, head, 4, ctx] each
        rank = scalars[SCALARS.index(self.hc.rank_by)]
        ranked = torch.where(mask & counted[:, None, :, None], rank, NEG).reshape(b, h, -1)
        score, where = ranked.max(dim=-1)  # [batch, head]: first arg-max in (query, key) order
        query, key = where // ctx, where % ctx
        bi = torch.arange(b)[:, None].expand(b, h)
        hi = torch.arange(h)[None, :].expand(b, h)
        top = self.extract(scalars, summaries, bi, hi, query, key, score, first=self.first_seq)
        state.merge_top({f: t.transpose(0, 1) for f, t in top.items()})
        local = [n for n, s in enumerate(self.random_seqs) if self.first_seq <= s < self.first_seq + b]
        if local:
            rs = torch.tensor([self.random_seqs[n] - self.first_seq for n in local])
            rq = torch.tensor([self.random_queries[n] for n in local])
            bi, hi = rs[:, None].expand(-1, h), torch.arange(h)[None, :].expand(len(local), h)
            qi = rq[:, None].expand(-1, h)
            best = torch.where(torch.arange(ctx) <= rq[:, None, None], rank[rs, :, rq, :], NEG)  # [n, head, key]
            score, key = best.max(dim=-1)  # [n, head]
            rec = self.extract(scalars, summaries, bi, hi, qi, key, score, first=self.first_seq)
            state.add_random({f: t.transpose(0, 1) for f, t in rec.items()}, torch.tensor(local))

    def add_sums(
        self,
        state: LayerRecords,
        scalars: list[torch.Tensor],
        counted: torch.Tensor,
        token_index: torch.Tensor,
        mask: torch.Tensor,
    ) -> None:
        a, w = scalars
        q = counted[:, None, :].float()  # [batch, 1, query]
        s = state.sums
        s["entropy"] += (torch.special.entr(a).sum(-1) * q).sum((0, 2)).double()
        s["first"] += (a[..., 0] * q).sum((0, 2)).double()
        s["self"] += (a.diagonal(dim1=2, dim2=3) * q).sum((0, 2)).double()
        s["previous"] += (a.diagonal(offset=-1, dim1=2, dim2=3) * q[..., 1:]).sum((0, 2)).double()
        s["write"] += (w.sum(-1) * q).sum((0, 2)).double()
        r = scalars[SCALARS.index(self.hc.rank_by)].double() * q[..., None]  # 0 past the causal mask
        s["powers"] += torch.stack([(r**k).sum((0, 2, 3)) for k in (1, 2, 3, 4)], dim=1)
        by_pair = (a * q[..., None]).sum(0).reshape(a.shape[1], -1)  # [head, query * key]
        s["distance"].index_add_(1, self.bins, by_pair.double())
        received = (a * q[..., None]).sum(2)  # [batch, head, key]
        written = w.sum(-1) * q  # [batch, head, query]
        flat = token_index.reshape(-1)
        s["received"].index_add_(1, flat, received.transpose(0, 1).reshape(a.shape[1], -1).double())
        s["written"].index_add_(1, flat, written.transpose(0, 1).reshape(a.shape[1], -1).double())

    def extract(
        self,
        scalars: list[torch.Tensor],
        summaries: list[torch.Tensor],
        bi: torch.Tensor,
        hi: torch.Tensor,
        query: torch.Tensor,
        key: torch.Tensor,
        score: torch.Tensor,
        *,
        first: int,
    ) -> dict[str, torch.Tensor]:
        """The records of (batch row, head) pairs ``bi``, ``hi`` centred at ``query`` (any shape)."""
        shape = bi.shape
        bi, hi, query = bi.reshape(-1), hi.reshape(-1), query.reshape(-1)
        ctx = scalars[0].shape[-1]
        start = (query - self.before).clamp(0, ctx - self.width)
        rows = start[:, None] + torch.arange(self.width)  # [n, width]
        keys, values, rest, summ = [], [], [], []
        for x, sm in zip(scalars, summaries):
            k, v, r = kept_keys(rows, x[bi[:, None], hi[:, None], rows], self.hc.top_keys)
            keys.append(k)
            values.append(v)
            rest.append(r)
            summ.append(torch.take_along_dim(sm[bi, hi], rows[:, None, :], dim=-1))  # [n, 4, width]
        rank = scalars[SCALARS.index(self.hc.rank_by)][bi[:, None], hi[:, None], rows]  # [n, width, ctx]
        pairs = torch.take_along_dim(rank, rows[:, None, :], dim=-1)  # [n, width (query), width (key)]
        out = {
            "score": score.reshape(-1),
            "seq": bi + first,
            "start": start,
            "query": query,
            "key": key.reshape(-1),
            "keys": torch.stack(keys, 1),  # [n, scalar, width, k]
            "values": torch.stack(values, 1),
            "rest": torch.stack(rest, 1),  # [n, scalar, width]
            "summaries": torch.stack(summ, 1),  # [n, scalar, 4, width]
            "pairs": pairs,  # the ranking scalar between the shown tokens (lower triangle used)
        }
        return {f: t.reshape(*shape, *t.shape[1:]) for f, t in out.items()}

    def head_data(self) -> list[HeadData]:
        """One HeadData per built head, in id order (floats to 4 significant digits)."""
        out = []
        for f in self.hd.feature_ids:
            layer, head = self.hd.head_of(f)
            state = self.layers[layer]
            n = state.heads.index(head)
            top = records_of(self.tokens, state.top, n) if state.top else []
            rnd = records_of(self.tokens, state.random, n) if state.random else []
            out.append(
                HeadData(
                    dictionary=self.hd.name,
                    feature=f,
                    layer=layer,
                    head=head,
                    kv_head=self.hd.kv_head(head),
                    rank_by=self.hc.rank_by,
                    summary=self.summary(state, n),
                    top_records=top,
                    random_records=rnd,
                    maxima=maxima([*top, *rnd]),
                    moments=rounded(torch.tensor(moments_from_powers(state.sums["powers"][n].tolist(), self.n_pairs))),
                )
            )
        return out

    def summary(self, state: LayerRecords, n: int) -> HeadSummary:
        s = {k: v[n] for k, v in state.sums.items()}
        nq, npv = max(self.n_queries, 1), max(self.n_previous, 1)
        mass = s["distance"]
        return HeadSummary(
            n_queries=self.n_queries,
            entropy=scalar(s["entropy"] / nq),
            first=scalar(s["first"] / nq),
            previous=scalar(s["previous"] / npv),
            self=scalar(s["self"] / nq),
            distance_edges=self.edges,
            distance_mass=rounded(mass / mass.sum().clamp(min=1e-300)),
            top_keys=self.top_tokens(s["received"]),
            top_queries=self.top_tokens(s["written"]),
            write_mean=scalar(s["write"] / max(self.n_pairs, 1)),
            write_total_mean=scalar(s["write"] / nq),
        )

    def top_tokens(self, totals: torch.Tensor) -> TokenValues:
        """The tokens with the largest shares of ``totals`` [distinct tokens] (ties: lower id)."""
        order = totals.sort(descending=True, stable=True).indices[: self.n_top_tokens]
        order = order[totals[order] > 0]
        share = totals[order] / totals.sum().clamp(min=1e-300)
        return TokenValues(self.uniq[order].tolist(), rounded(share))
