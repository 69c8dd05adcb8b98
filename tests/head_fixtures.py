"""Synthetic but valid attention-head caches for the renderer's tests.

A head's records come from whole synthetic sequences: per sequence an attention pattern
(causal softmax of noise, a recency bias, a bonus on the first token and, per head, on the
previous token) and a write norm (the pattern times a per-key norm of v_j W_O[h]). Each record
keeps, per shown query and scalar, its top-k keys by value descending (ties: earlier key) and
sums the rest, as the engine does; per-token summaries are over the whole sequence. Values are
rounded to 4 significant digits. Head ``zero_write`` writes nothing (W_O = 0: every write norm
and its maxima are 0) and one random record of every head is all zeros, so pages must
normalise by 0 without NaN. Token strings mix plain words with ``fixtures.HOSTILE`` and
``site_fixtures.PAYLOADS`` (one of those is the centre token of some records).

``write_head_cache`` writes a complete cache: feature dictionaries (``site_fixtures.write_cache``),
then attention-head dictionaries, in the manifest that ``sitegen.render.site.render_site`` reads.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from fixtures import HOSTILE
from site_fixtures import PAYLOADS, DictSpec, round_sig, token_table, write_cache

from sitegen.cache.feature_data import DictionarySummary, TokenValues
from sitegen.cache.files import read_json, write_batch, write_json
from sitegen.cache.head_data import SCALARS, HeadData, HeadRecord, HeadSummary, PairScalars
from sitegen.config import Config

HOSTILE_IDS = range(
    12, 12 + len(HOSTILE) + len(PAYLOADS)
)  # token_table(): fixtures.HOSTILE, then PAYLOADS, from rank 12


@dataclasses.dataclass
class HeadSizes:
    top_records: int = 12
    random_records: int = 6
    before: int = 5  # window = before + 1 + after shown query tokens
    after: int = 5
    top_keys: int = 8
    ctx: int = 64  # sequence length
    distance_edges: tuple[int, ...] = (0, 1, 2, 4, 8, 16, 32, 64)


@dataclasses.dataclass
class HeadSpec:
    name: str = "heads"
    layers: tuple[int, ...] = (1,)
    n_heads: int = 4
    n_kv_heads: int = 2  # grouped-query attention: head h reads key/value head h // (n_heads // n_kv_heads)
    d_head: int = 16
    feature_ids: tuple[int, ...] | None = None  # default: every head
    zero_write: int | None = 3  # the head (within its layer) with W_O = 0
    rank_by: str = "write_norm"

    def ids(self) -> list[int]:
        return sorted(self.feature_ids if self.feature_ids is not None else range(len(self.layers) * self.n_heads))

    def hook_name(self) -> str:
        if len(self.layers) == 1:
            return f"blocks.{self.layers[0]}.attn.hook_pattern"
        return "blocks.{" + ",".join(map(str, self.layers)) + "}.attn.hook_pattern"


def rounded(xs) -> list[float]:
    return [round_sig(float(x)) for x in xs]


class HeadMaker:
    def __init__(self, seed: int = 0, vocab: int = 4096, sizes: HeadSizes | None = None):
        self.rng = np.random.default_rng(seed)
        self.vocab = vocab
        self.sizes = sizes or HeadSizes()
        ranks = np.arange(1, vocab + 1, dtype=float)
        self.p = (1 / ranks) / (1 / ranks).sum()

    def tokens(self, n: int) -> list[int]:
        return [int(i) for i in self.rng.choice(self.vocab, size=n, p=self.p)]

    def sequence(self, previous: float, zero_write: bool) -> tuple[np.ndarray, np.ndarray]:
        """(pattern, write norm), each [ctx, ctx], 0 above the diagonal."""
        n, rng = self.sizes.ctx, self.rng
        i, j = np.indices((n, n))
        logits = rng.normal(0, 1.0, (n, n)) - 0.35 * (i - j) + 3.0 * (j == 0) + previous * (j == i - 1)
        logits[j > i] = -np.inf
        pattern = np.exp(logits - logits.max(axis=1, keepdims=True))
        pattern /= pattern.sum(axis=1, keepdims=True)
        norms = np.zeros(n) if zero_write else rng.uniform(0.1, 3.0, n)
        return pattern, pattern * norms[None, :]

    def scalars(self, matrix: np.ndarray, start: int, window: int) -> PairScalars:
        k = self.sizes.top_keys
        out = PairScalars([], [], [], [], [], [], [])
        for pos in range(start, start + window):
            row = matrix[pos, : pos + 1]
            values = rounded(row)
            keys = sorted(range(pos + 1), key=lambda j: (-values[j], j))[:k]
            column = matrix[pos:, pos]
            out.keys.append(keys)
            out.values.append([values[j] for j in keys])
            out.rest.append(round_sig(float(row.sum() - row[keys].sum())))
            out.total_in.append(round_sig(float(row.sum())))
            out.max_in.append(round_sig(float(row.max())))
            out.total_out.append(round_sig(float(column.sum())))
            out.max_out.append(round_sig(float(column.max())))
        return out

    def record(self, seq: int, rank: int, previous: float, zero_write: bool, zero: bool = False) -> HeadRecord:
        s, rng = self.sizes, self.rng
        window = s.before + 1 + s.after
        pattern, write = self.sequence(previous, zero_write)
        if zero:  # e.g. a sequence of ignored positions: every number 0
            pattern, write = np.zeros_like(pattern), np.zeros_like(write)
        centre = int(rng.integers(s.before, s.ctx - s.after))
        if rng.random() < 0.15:
            centre = s.before  # the window starts at the first token
        start = centre - s.before
        tokens = self.tokens(s.ctx)
        if rng.random() < 0.4 or zero:
            tokens[centre] = int(rng.choice(HOSTILE_IDS))
        scalars = [self.scalars(m, start, window) for m in (pattern, write)]
        earlier = sorted({j for ps in scalars for keys in ps.keys for j in keys if j < start})
        ranked = scalars[rank]
        c = centre - start
        key = ranked.keys[c][0]
        matrix = (pattern, write)[rank]
        pairs = [v for q in range(window) for v in rounded(matrix[start + q, start : start + q + 1])]
        return HeadRecord(
            seq=seq,
            start=start,
            token_ids=tokens[start : start + window],
            earlier=earlier,
            earlier_ids=[tokens[j] for j in earlier],
            query=centre,
            key=key,
            score=ranked.values[c][0],
            scalars=scalars,
            pairs=pairs,
        )

    def summary(self, previous_head: bool, zero_write: bool) -> HeadSummary:
        rng, edges = self.rng, list(self.sizes.distance_edges)
        shares = rng.dirichlet([1, 6 if previous_head else 1, 1, 2])  # first, previous, self, elsewhere
        mass = rng.dirichlet(np.ones(len(edges) - 1))

        def top(n: int) -> TokenValues:
            ids = list(dict.fromkeys(self.tokens(4 * n)))[:n]  # distinct tokens
            return TokenValues(ids, sorted(rounded(rng.uniform(0.001, 0.1, len(ids))), reverse=True))

        write = 0.0 if zero_write else round_sig(float(rng.uniform(0.05, 2)))
        return HeadSummary(
            n_queries=32512,
            entropy=round_sig(float(rng.uniform(0.1, 3))),
            first=round_sig(float(shares[0])),
            previous=round_sig(float(shares[1])),
            self=round_sig(float(shares[2])),
            distance_edges=edges,
            distance_mass=rounded(mass),
            top_keys=top(8),
            top_queries=TokenValues([], []) if zero_write else top(8),
            write_mean=write,
            write_total_mean=round_sig(write * 9.5),
        )

    def head(self, spec: HeadSpec, feature: int) -> HeadData:
        s = self.sizes
        layer, head = spec.layers[feature // spec.n_heads], feature % spec.n_heads
        zero_write = head == spec.zero_write
        previous = 5.0 if head == 1 else 0.0  # head 1 is a previous-token head
        rank = SCALARS.index(spec.rank_by)
        seqs = iter(int(x) for x in self.rng.permutation(4096))
        top = [self.record(next(seqs), rank, previous, zero_write) for _ in range(s.top_records)]
        top.sort(key=lambda r: (-r.score, r.seq))
        random = [self.record(next(seqs), rank, previous, zero_write) for _ in range(s.random_records - 1)]
        random.insert(len(random) // 2, self.record(next(seqs), rank, previous, zero_write, zero=True))
        return HeadData(
            dictionary=spec.name,
            feature=feature,
            layer=layer,
            head=head,
            kv_head=head // (spec.n_heads // spec.n_kv_heads),
            rank_by=spec.rank_by,
            summary=self.summary(head == 1, zero_write),
            top_records=top,
            random_records=random,
            maxima=maxima([*top, *random]),
            moments=[round_sig(float(x)) for x in self.rng.uniform(0.01, 2.0, 4)],
        )


def maxima(records: list[HeadRecord]) -> list[list[float]]:
    """Per scalar: [largest kept pair value, total_in, max_in, total_out, max_out], floored at 0."""
    out = []
    for s in range(len(SCALARS)):
        scalars = [r.scalars[s] for r in records]
        pair = max((v for ps in scalars for vs in ps.values for v in vs), default=0.0)
        sums = [max((v for ps in scalars for v in getattr(ps, name)), default=0.0) for name in SUMMARY_FIELDS]
        out.append([max(x, 0.0) for x in (pair, *sums)])
    return out


SUMMARY_FIELDS = ("total_in", "max_in", "total_out", "max_out")


def head_summary(spec: HeadSpec) -> DictionarySummary:
    return DictionarySummary(
        name=spec.name,
        kind="attention_heads",
        hook_name=spec.hook_name(),
        d_in=spec.d_head,
        d_sae=len(spec.layers) * spec.n_heads,
        feature_ids=spec.ids(),
        effects="none",
        norm_note="",
        layers=list(spec.layers),
    )


FEATURES = [DictSpec(name="sae", hook_name="blocks.1.hook_resid_post", d_sae=64, feature_ids=(0, 1, 2, 5))]


def write_head_cache(
    cache: Path,
    feature_specs: list[DictSpec] | None = None,
    head_specs: list[HeadSpec] | None = None,
    *,
    seed: int = 0,
    sizes: HeadSizes | None = None,
    batch_size: int = 2,
    config: Config | None = None,
) -> Path:
    """A complete cache: the feature dictionaries (default: one SAE of layer 1), then the
    attention-head dictionaries (default: 4 heads of layer 1), ``batch_size`` heads a batch
    file. Returns ``cache``."""
    feature_specs = FEATURES if feature_specs is None else feature_specs
    head_specs = [HeadSpec()] if head_specs is None else head_specs
    texts = token_table()
    write_cache(cache, feature_specs, seed=seed, texts=texts, config=config)
    manifest = read_json(cache / "manifest.json")
    maker = HeadMaker(seed + 1, vocab=len(texts), sizes=sizes)
    for n, spec in enumerate(head_specs):
        index, ids = len(feature_specs) + n, spec.ids()
        for b in range(0, len(ids), batch_size):
            write_batch(cache, index, b // batch_size, [maker.head(spec, f) for f in ids[b : b + batch_size]])
        manifest["dictionaries"].append(dataclasses.asdict(head_summary(spec)))
    write_json(cache / "manifest.json", manifest)
    return cache
