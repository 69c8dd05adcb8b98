"""FeatureData -> what one feature page shows.

Two views of the same feature:
- ``feature_page_json``: the one JSON object the page's script reads (examples,
  histograms, navigation), compact: a page-local token table (most used first),
  token ids as indexes into it, hovers only where present, arrays for examples.
- ``feature_page_context``: the static parts the template renders (header, tables).

JSON schema (``v`` 2)::

    {"v": 2, "dictionary": <dict index>, "feature": <id>, "max_act": <float>,
     "nav": [<previous built id> | null, <next built id> | null],
     "tokens": [<display text>, ...],                 # page-local token table
     "act_hist": [[edges...], [counts...]],           # over non-zero activations
     "logit_hist": [[edges...], [counts...]],         # over the vocabulary
     "groups": [[<example>, ...], ...],               # top, intervals (highest first), negative
     "splits": [<split> | null per top example],       # neuron-explainer split of its sequence's record
     ...one of the two hover encodings below}
    example = [seq, pos, start, [<token index>...], <per-token numbers>]
    (tokens without numbers have activation 0 and no hover)

Direct hovers (``effects: direct``, no logit soft-cap): a hover's log-prob changes are
-coef * u[t] - shift for the feature's logit effects u, affine in u, so a page ships the
changes at the lowest and the highest u and the browser interpolates the rest: 4 numbers
per token instead of 12. (This keeps dense dictionaries such as MLP neurons, where every
token has a hover, inside the page budget; interpolating between two shown values keeps
each change accurate to 2**-16 of the tooltip's largest one, where coef and shift would
lose digits to cancellation.)::

    "basis": [[<token index> x 2k], [u x 2k]],   # k lowest u (ascending), k highest (descending)
    "h": "<base64>",   # 24-bit floats (embed.packed_floats), 4 per record: activation,
                       # loss effect, change at the lowest u, change at the highest u
                       # (the last three NaN where the token has no hover)
    per-token numbers = [<offset in window>, ...]   # the tokens with a record; left out when
                                                    # every token of the window has one
    (records follow the order of first appearance over the page: a (seq, position) shown in
    several overlapping windows has one record; the top tokens are the k lowest u when the
    change there is the larger one (coef > 0), else the k highest, the bottom tokens the rest)

Any other hovers (``exact``, soft-capped logits) are listed in full::

    "lists": [[<token index>, ...], ...],          # distinct hover token lists
    per-token numbers = [<active>...]
    active  = [offset in window, activation]                 # non-zero, no hover
            | [offset, activation, loss effect, <list index> of the top tokens,
               <top log-prob changes>..., <list index> of the bottom tokens,
               <bottom log-prob changes>...]                  # with a hover
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from sitegen.cache.feature_data import (
    DictionarySummary,
    DirectHover,
    Example,
    FeatureData,
    IntervalGroup,
    ListedHover,
    Ranked,
    TokenValues,
)
from sitegen.errors import SitegenError
from sitegen.export.neuron_records import split_of
from sitegen.hooks import hook_layer
from sitegen.render.embed import compact_number, compact_numbers, float24, packed_floats

SCHEMA_VERSION = 3  # 3: "splits"
NAN = float("nan")  # a record's loss effect where the token has no hover

# (FeatureData field, title, caption, id column, value column, extra column, ids are features)
RANKED_TABLES = [
    (
        "neuron_alignment",
        "Neuron alignment",
        "hook dimensions with the largest |decoder value|",
        "dim",
        "decoder value",
        "share of L1",
        False,
    ),
    (
        "correlated_neurons",
        "Correlated neurons",
        "hook dimensions whose activations correlate most",
        "dim",
        "Pearson r",
        "cosine",
        False,
    ),
    (
        "correlated_features",
        "Correlated features",
        "features of this dictionary whose activations correlate most",
        "feature",
        "Pearson r",
        "cosine",
        True,
    ),
    (
        "decoder_neighbours",
        "Decoder neighbours",
        "features with the most similar decoder directions",
        "feature",
        "cosine",
        None,
        True,
    ),
]


def token_text(texts: dict[int, str], token_id: int) -> str:
    try:
        return texts[token_id]
    except KeyError:
        raise SitegenError(f"tokens.json: no display text for token id {token_id}; rebuild the cache") from None


class TokenIndex:
    """Page-local token table: ids -> indexes, most used ids first (small indexes)."""

    def __init__(self, ids: Counter, texts: dict[int, str]):
        order = sorted(ids, key=lambda i: (-ids[i], i))
        self.index = {tok: n for n, tok in enumerate(order)}
        self.texts = [token_text(texts, i) for i in order]


def example_splits(fd: FeatureData) -> list[str | None]:
    """Per top example, the neuron-explainer split its sequence's record is in (the NeuronRecord
    export's top records, interleaved train / calibration / valid / test), None when its
    sequence is not among them."""
    if fd.records is None:
        return [None] * len(fd.top_examples)
    rank = {r.seq: n for n, r in reversed(list(enumerate(fd.records.top)))}
    n_top = len(fd.records.top)
    return [split_of(rank[ex.seq], n_top) if ex.seq in rank else None for ex in fd.top_examples]


def example_groups(fd: FeatureData) -> list[IntervalGroup | list[Example]]:
    """Top examples, the interval groups from the highest, then the negative group when present."""
    intervals = sorted(fd.intervals, key=lambda g: -g.upper)
    return [fd.top_examples, *intervals, *([fd.negative] if fd.negative else [])]


def _group_examples(group: IntervalGroup | list[Example]) -> list[Example]:
    return group.examples if isinstance(group, IntervalGroup) else group


def direct_page(fd: FeatureData) -> bool:
    """Whether the page ships its hovers in the direct encoding: every hover is a DirectHover
    (or there is none) and the feature has a hover basis."""
    kinds = {type(h) for ex in fd.examples() for h in ex.hovers if h is not None}
    if kinds == {DirectHover, ListedHover}:
        raise SitegenError(
            f"feature cache: feature {fd.feature} of '{fd.dictionary}' mixes direct and listed "
            "hovers; rebuild the cache"
        )
    if DirectHover in kinds and not fd.hover_basis.token_ids:
        raise SitegenError(
            f"feature cache: feature {fd.feature} of '{fd.dictionary}' has direct hovers but no "
            "hover basis; rebuild the cache"
        )
    return bool(fd.hover_basis.token_ids) and ListedHover not in kinds


def _used_token_ids(fd: FeatureData, direct: bool) -> Counter:
    used: Counter = Counter(fd.hover_basis.token_ids if direct else [])
    for ex in fd.examples():
        used.update(ex.token_ids)
        for h in ex.hovers:
            if isinstance(h, ListedHover):
                used.update(h.top.token_ids)
                used.update(h.bottom.token_ids)
    return used


def _hover_fields(h: ListedHover, tokens: TokenIndex, lists: dict[tuple, int]) -> list:
    if len(h.top.token_ids) != len(h.top.values) or len(h.bottom.token_ids) != len(h.bottom.values):
        raise SitegenError("feature cache: a hover's token ids and values differ in length; rebuild the cache")
    top = tuple(tokens.index[i] for i in h.top.token_ids)
    bottom = tuple(tokens.index[i] for i in h.bottom.token_ids)
    for key in (top, bottom):
        lists.setdefault(key, len(lists))
    return [
        compact_number(h.loss_effect),
        lists[top],
        *compact_numbers(h.top.values),
        lists[bottom],
        *compact_numbers(h.bottom.values),
    ]


def _listed_example(ex: Example, tokens: TokenIndex, lists: dict[tuple, int]) -> list:
    active = [
        [k, compact_number(a), *(_hover_fields(h, tokens, lists) if isinstance(h, ListedHover) else [])]
        for k, (a, h) in enumerate(zip(ex.acts, ex.hovers))
        if a != 0 or h is not None
    ]
    return [ex.seq, ex.pos, ex.start, [tokens.index[i] for i in ex.token_ids], active]


class DirectRecords:
    """Per-token numbers of a page with direct hovers, one record per (sequence, position)."""

    def __init__(self, basis: TokenValues) -> None:
        k = len(basis.values) // 2
        self.u_min, self.u_max = basis.values[0], basis.values[k]
        self.values: list[float] = []  # 4 per record
        self.seen: dict[tuple[int, int], list[float]] = {}

    def record(self, a: float, h: DirectHover | None) -> list[float]:
        if h is None:
            return [a, NAN, NAN, NAN]
        low, high = float24(-h.coef * self.u_min - h.shift), float24(-h.coef * self.u_max - h.shift)
        if h.coef > 0 and low <= high:  # equal once rounded: keep the ends ordered, which the page
            high = float24(low - abs(low) * 2**-15 if low else -1e-30)  # reads as the sign of coef
        return [a, h.loss_effect, low, high]

    def example(self, ex: Example, tokens: TokenIndex) -> list:
        offsets = []
        for k, (a, h) in enumerate(zip(ex.acts, ex.hovers)):
            if a == 0 and h is None:
                continue
            offsets.append(k)
            record, key = self.record(a, h if isinstance(h, DirectHover) else None), (ex.seq, ex.start + k)
            if key not in self.seen:
                self.seen[key] = record
                self.values.extend(record)
            elif self.seen[key] != record:  # (NAN is one object: lists holding it still compare equal)
                raise SitegenError(
                    f"feature cache: two examples disagree at sequence {key[0]}, position {key[1]}; rebuild the cache"
                )
        window = [tokens.index[i] for i in ex.token_ids]
        return [ex.seq, ex.pos, ex.start, window, *([] if len(offsets) == len(window) else [offsets])]


def feature_page_json(
    fd: FeatureData, dict_index: int, nav: tuple[int | None, int | None], texts: dict[int, str]
) -> dict:
    direct = direct_page(fd)
    tokens = TokenIndex(_used_token_ids(fd, direct), texts)
    out: dict[str, object] = {
        "v": SCHEMA_VERSION,
        "dictionary": dict_index,
        "feature": fd.feature,
        "max_act": compact_number(fd.max_act),
        "nav": list(nav),
        "tokens": tokens.texts,
        "act_hist": [compact_numbers(fd.act_histogram.edges), fd.act_histogram.counts],
        "logit_hist": [compact_numbers(fd.logit_histogram.edges), fd.logit_histogram.counts],
        "splits": example_splits(fd),
    }
    if direct:
        rec = DirectRecords(fd.hover_basis)
        out["groups"] = [[rec.example(ex, tokens) for ex in _group_examples(g)] for g in example_groups(fd)]
        out["basis"] = [[tokens.index[i] for i in fd.hover_basis.token_ids], compact_numbers(fd.hover_basis.values)]
        out["h"] = packed_floats(rec.values)
    else:
        lists: dict[tuple, int] = {}
        out["groups"] = [[_listed_example(ex, tokens, lists) for ex in _group_examples(g)] for g in example_groups(fd)]
        out["lists"] = [list(k) for k in lists]
    return out


@dataclass
class TableRow:
    id: int
    href: str | None  # a link to the feature's page when it is built
    value: float
    extra: float | None


@dataclass
class RankedTable:
    key: str
    title: str
    caption: str
    id_label: str
    value_label: str
    extra_label: str | None
    rows: list[TableRow]


@dataclass
class GroupHeading:
    kind: str  # "top" | "interval" | "negative"
    lower: float | None
    upper: float | None
    fraction: float | None
    n_examples: int


def _ranked_table(spec: tuple, ranked: Ranked, built: set[int]) -> RankedTable:
    key, title, caption, id_label, value_label, extra_label, are_features = spec
    has_extra = extra_label is not None and len(ranked.extra) == len(ranked.ids)
    rows = [
        TableRow(i, f"{i}.html" if are_features and i in built else None, v, ranked.extra[n] if has_extra else None)
        for n, (i, v) in enumerate(zip(ranked.ids, ranked.values))
    ]
    return RankedTable(key, title, caption, id_label, value_label, extra_label if has_extra else None, rows)


def _group_heading(fd: FeatureData, group: IntervalGroup | list[Example]) -> GroupHeading:
    if not isinstance(group, IntervalGroup):
        return GroupHeading("top", None, None, None, len(group))
    kind = "negative" if group is fd.negative else "interval"
    return GroupHeading(kind, group.lower, group.upper, group.fraction, len(group.examples))


def feature_page_context(
    fd: FeatureData, summary: DictionarySummary, built: set[int], texts: dict[int, str], note_html: str | None
) -> dict:
    def token_rows(ids: list[int], values: list[float]) -> list[tuple[str, float]]:
        return [(token_text(texts, i), v) for i, v in zip(ids, values)]

    return {
        "fd": fd,
        "summary": summary,
        "layer": hook_layer(summary.hook_name),
        "note_html": note_html,
        "tables": [_ranked_table(spec, getattr(fd, spec[0]), built) for spec in RANKED_TABLES],
        "logit_top": token_rows(fd.logit_top.token_ids, fd.logit_top.values),
        "logit_bottom": token_rows(fd.logit_bottom.token_ids, fd.logit_bottom.values),
        "top_tokens": token_rows(fd.top_tokens.token_ids, fd.top_tokens.values),
        "groups": [_group_heading(fd, g) for g in example_groups(fd)],
    }
