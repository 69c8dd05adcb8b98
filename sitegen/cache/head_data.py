"""HeadData: every number one attention head's page shows, as plain typed data (no torch).

A head's records follow the neuron-viewer's attention-head records: token sequences in which
each query token carries one scalar per key it reads from (causal: keys at or before it). Two
token-pair scalars are kept, in ``SCALARS`` order:

- ``pattern``: the post-softmax attention probability A[i, j] from query i to key j
  (``blocks.L.attn.hook_pattern``);
- ``write_norm``: ||A[i, j] * v_j @ W_O[h]||, the norm of what the head adds to the residual
  stream at i from j (the transformer-debugger's attention write norm; a grouped-query head uses
  its key/value head's v_j; before any post-attention norm such as Gemma's ``ln1_post``).

A record shows a window of query tokens; per shown query and scalar it keeps the top-k keys
and the sum over the other keys (``rest``), so the page shades exactly what it draws. Per-token
summaries are over the whole sequence (all keys of a query; all later queries of a key). All
values are raw; pages divide by ``HeadData.maxima`` (the neuron-viewer's normalisation).
"""

from __future__ import annotations

from dataclasses import dataclass

from sitegen.cache.feature_data import TokenValues

SCALARS = ("pattern", "write_norm")
SUMMARIES = ("total_in", "max_in", "total_out", "max_out")
HEADS_KIND = "attention_heads"


@dataclass
class PairScalars:
    """One token-pair scalar over a record's shown query tokens (``[window]`` lists)."""

    keys: list[list[int]]  # [window][<= k] key positions in the sequence, by value descending (ties: earlier key)
    values: list[list[float]]  # [window][<= k] the scalar at those keys
    rest: list[float]  # [window] sum of the scalar over the query's other keys
    total_in: list[float]  # [window] sum over the keys the token reads (all of them)
    max_in: list[float]  # [window] largest over those keys
    total_out: list[float]  # [window] sum over the later queries (and itself) that read the token
    max_out: list[float]  # [window] largest over those queries


@dataclass
class HeadRecord:
    """One sequence of a head's records: the shown query tokens ``start .. start + window``,
    and the earlier tokens some shown query keeps among its top keys."""

    seq: int  # sequence index in the tokenised dataset
    start: int  # position of the first shown query token
    token_ids: list[int]  # [window] tokens of the shown queries
    earlier: list[int]  # positions < start that are kept keys of a shown query, ascending
    earlier_ids: list[int]  # their tokens
    query: int  # the record's centre: its arg-max query (top records) or the sampled query (random)
    key: int  # the arg-max key of that query for the ranking scalar
    score: float  # the ranking scalar at (query, key): for top records the sequence's largest
    scalars: list[PairScalars]  # in SCALARS order
    # the ranking scalar between the shown tokens, in the neuron-viewer's layout: shown token n's
    # n + 1 scalars (keys start .. start + n) in order, flattened (the NeuronRecord export's record)
    pairs: list[float]


@dataclass
class HeadSummary:
    """Over every counted query token of the dataset (BOS and ignored positions left out)."""

    n_queries: int
    entropy: float  # mean attention entropy, nats
    first: float  # mean attention on position 0 (BOS)
    previous: float  # mean attention on the previous token (queries with one)
    self: float  # mean attention on the query token itself
    distance_edges: list[int]  # bins [edges[b], edges[b + 1]) of query - key distance
    distance_mass: list[float]  # share of all attention per bin
    top_keys: TokenValues  # key tokens by share of all attention they receive
    top_queries: TokenValues  # query tokens by share of the head's total write norm written at them
    write_mean: float  # mean write norm over all (query, key <= query) pairs
    write_total_mean: float  # mean over queries of the write norm summed over their keys


@dataclass
class HeadData:
    dictionary: str
    feature: int  # id within the dictionary: index of the layer in the dictionary's layers * n_heads + head
    layer: int
    head: int
    kv_head: int  # the key/value head it reads (grouped-query attention; = head without grouping)
    rank_by: str  # the scalar top records are ranked by (one of SCALARS)
    summary: HeadSummary
    top_records: list[HeadRecord]  # distinct sequences by their largest ranking scalar, descending
    random_records: list[HeadRecord]  # seeded sample of sequences
    # per scalar (SCALARS order), the normalisers over all records (top and random) of the head:
    # [largest pair scalar, largest total_in, max_in, total_out, max_out], each floored at 0
    maxima: list[list[float]]
    # the ranking scalar over every (counted query, key <= query) pair of the dataset: mean,
    # population variance, skewness, excess kurtosis (NeuronRecord's moments)
    moments: list[float]

    def token_ids(self) -> set[int]:
        ids = {*self.summary.top_keys.token_ids, *self.summary.top_queries.token_ids}
        for r in (*self.top_records, *self.random_records):
            ids.update(r.token_ids, r.earlier_ids)
        return ids
