"""HeadData -> what one attention-head page shows.

Two views of the same head, as for feature pages (``feature_page.py``):
- ``head_page_json``: the one JSON object the page's script (``static/head.js``) reads: the
  records, compact: a page-local token table (most used first), kept keys as columns of the
  record's token strip (small ints, whatever the context length), every per-query number as
  a 24-bit float in one base64 string.
- ``head_page_context``: the static parts the template renders (header, links, head summary).

JSON schema (``v`` 1)::

    {"v": 1, "dictionary": <dict index>, "feature": <id>, "layer": L, "head": H, "kv_head": K,
     "nav": [<previous built id> | null, <next built id> | null],
     "scalars": ["pattern", "write_norm"],     # head_data.SCALARS: every per-scalar list follows it
     "rank_by": <index into scalars>,          # the scalar top records are ranked by
     "maxima": [[<pair max>, <total_in max>, <max_in max>, <total_out max>, <max_out max>], ...],
                                               # per scalar, HeadData.maxima (raw, each >= 0)
     "tokens": [<display text>, ...],          # page-local token table
     "groups": [[<record>, ...], [<record>, ...]],   # top records (ranked), random records
     "h": "<base64>"}                          # 24-bit floats (embed.packed_floats), see below
    record = [seq, start, query, key, score,
              [<token index> per shown query token],          # positions start, start + 1, ...
              [<position> per earlier key token],             # kept keys before start, ascending
              [<token index> per earlier key token],
              [[[<column>, ...] per shown query] per scalar]]
    column = a kept key's index in the record's strip (the earlier key tokens, then the shown
             query tokens): n < E (E earlier tokens) is position earlier[n], else start + n - E;
             a query's columns are its kept keys by value descending (ties: earlier key)

``h`` holds, for each record (top, then random), each scalar, each shown query in turn: the
values at its kept keys (as many as its columns), then its rest (the scalar summed over its
other keys), total_in, max_in, total_out, max_out. Values are cached at 4 significant digits,
which a 24-bit float keeps (``+x.toPrecision(4)`` gives them back). A page shades a token by
max(x, 0) / the matching maximum, 0 where that maximum is 0.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from sitegen.cache.feature_data import DictionarySummary, TokenValues
from sitegen.cache.head_data import HEADS_KIND, SCALARS, HeadData, HeadRecord
from sitegen.errors import SitegenError
from sitegen.render.embed import compact_number, packed_floats, percent_text
from sitegen.render.feature_page import TokenIndex, token_text

SCHEMA_VERSION = 1

# (label, exact definition) per scalar, in SCALARS order
SCALAR_TEXT = {
    "pattern": (
        "attention pattern",
        "A[i, j]: the post-softmax attention probability from query token i to key token j (hook_pattern)",
    ),
    "write_norm": (
        "write norm",
        "||A[i, j] · v_j · W_O[h]||: the norm of what this head writes into the residual stream at query i "
        "from key j, before any post-attention norm",
    ),
}


def _bad(hd: HeadData, what: str) -> SitegenError:
    return SitegenError(f"attention-head cache: head {hd.feature} of '{hd.dictionary}': {what}; rebuild the cache")


def _record(hd: HeadData, r: HeadRecord, tokens: TokenIndex, floats: list[float]) -> list:
    window = len(r.token_ids)
    column = {p: n for n, p in enumerate(r.earlier)}
    column.update((r.start + q, len(r.earlier) + q) for q in range(window))
    ascending = all(a < b for a, b in zip(r.earlier, r.earlier[1:])) and all(p < r.start for p in r.earlier)
    if len(r.scalars) != len(SCALARS) or len(r.earlier) != len(r.earlier_ids) or not ascending:
        raise _bad(hd, f"a record of sequence {r.seq} has {len(r.scalars)} scalars or bad earlier tokens")
    keys = []
    for ps in r.scalars:
        columns = (ps.keys, ps.values, ps.rest, ps.total_in, ps.max_in, ps.total_out, ps.max_out)
        if any(len(c) != window for c in columns):
            raise _bad(hd, f"a record of sequence {r.seq} has lists of another length than its {window} tokens")
        columns_of = []
        for q, (ks, vs) in enumerate(zip(ps.keys, ps.values)):
            pos = r.start + q
            if len(ks) != len(vs) or any(k > pos or k not in column for k in ks):
                raise _bad(hd, f"sequence {r.seq}, position {pos}: its kept keys are not shown before it")
            columns_of.append([column[k] for k in ks])
            floats += [*vs, ps.rest[q], ps.total_in[q], ps.max_in[q], ps.total_out[q], ps.max_out[q]]
        keys.append(columns_of)
    return [
        r.seq,
        r.start,
        r.query,
        r.key,
        compact_number(r.score),
        [tokens.index[i] for i in r.token_ids],
        r.earlier,
        [tokens.index[i] for i in r.earlier_ids],
        keys,
    ]


def head_page_json(hd: HeadData, dict_index: int, nav: tuple[int | None, int | None], texts: dict[int, str]) -> dict:
    if hd.rank_by not in SCALARS or len(hd.maxima) != len(SCALARS) or any(len(m) != 5 for m in hd.maxima):
        raise _bad(hd, f"rank_by {hd.rank_by!r} or its maxima do not match the scalars {', '.join(SCALARS)}")
    used: Counter = Counter()
    for r in (*hd.top_records, *hd.random_records):
        used.update(r.token_ids)
        used.update(r.earlier_ids)
    tokens = TokenIndex(used, texts)
    floats: list[float] = []
    groups = [[_record(hd, r, tokens, floats) for r in g] for g in (hd.top_records, hd.random_records)]
    return {
        "v": SCHEMA_VERSION,
        "dictionary": dict_index,
        "feature": hd.feature,
        "layer": hd.layer,
        "head": hd.head,
        "kv_head": hd.kv_head,
        "nav": list(nav),
        "scalars": list(SCALARS),
        "rank_by": SCALARS.index(hd.rank_by),
        "maxima": [[compact_number(x) for x in m] for m in hd.maxima],
        "tokens": tokens.texts,
        "groups": groups,
        "h": packed_floats(floats),
    }


@dataclass
class HeadLink:
    label: str  # "H3"
    title: str
    href: str  # relative to a page in features/<dict index>/
    current: bool


@dataclass
class HeadGroup:
    """The built heads of one layer in one attention-head dictionary."""

    name: str
    layer: int
    links: list[HeadLink]


@dataclass
class DictLink:
    name: str
    kind: str
    href: str  # the dictionary's row in the index


class LayerLinks:
    """Per layer, the dictionaries that read it and the built heads there (from the manifest)."""

    def __init__(self, summaries: list[DictionarySummary]):
        self.summaries = summaries
        self.heads: dict[int, list[tuple[int, list[tuple[int, int]]]]] = {}  # layer -> [(dict, [(head, id)])]
        for d, s in enumerate(summaries):
            if s.kind != HEADS_KIND:
                continue
            by_layer: dict[int, list[tuple[int, int]]] = {}
            for f in sorted(set(s.feature_ids)):
                layer, head = s.head_of(f)
                by_layer.setdefault(layer, []).append((head, f))
            for layer, heads in by_layer.items():
                self.heads.setdefault(layer, []).append((d, heads))

    def head_groups(self, layer: int | None, here: int, current: int | None = None) -> list[HeadGroup]:
        """The heads of ``layer`` as linked from a page of dictionary ``here`` (``current``: this head's id)."""
        if layer is None:
            return []
        groups = []
        for d, heads in self.heads.get(layer, []):
            folder = "" if d == here else f"../{d}/"
            links = [
                HeadLink(f"H{h}", f"layer {layer} head {h}", f"{folder}{f}.html", d == here and f == current)
                for h, f in heads
            ]
            groups.append(HeadGroup(self.summaries[d].name, layer, links))
        return groups

    def other_dictionaries(self, layer: int, here: int) -> list[DictLink]:
        """Every other dictionary reading ``layer``: feature dictionaries of that one layer and
        attention-head dictionaries with heads there."""
        return [
            DictLink(s.name, s.kind, f"../../index.html#dict-{d}")
            for d, s in enumerate(self.summaries)
            if d != here and (layer in s.layers if s.kind == HEADS_KIND else s.layer() == layer)
        ]


@dataclass
class Stat:
    label: str
    value: str
    title: str


@dataclass
class DistanceBar:
    label: str  # the bin's distances, e.g. "4–7"
    mass: float
    height: float  # of at most 1 (the largest bin)


@dataclass
class ScalarChoice:
    value: int
    name: str
    label: str
    definition: str
    checked: bool


def _distance_bars(edges: list[int], mass: list[float]) -> list[DistanceBar]:
    top = max(mass, default=0.0)
    bars = []
    for lo, hi, m in zip(edges, edges[1:], mass):
        label = str(lo) if hi - lo == 1 else f"{lo}–{hi - 1}"
        bars.append(DistanceBar(label, m, m / top if top > 0 else 0.0))
    return bars


def head_page_context(
    hd: HeadData,
    summary: DictionarySummary,
    dict_index: int,
    links: LayerLinks,
    texts: dict[int, str],
    note_html: str | None,
) -> dict:
    s = hd.summary
    if summary.head_of(hd.feature) != (hd.layer, hd.head):
        raise _bad(hd, f"it is layer {hd.layer} head {hd.head}, but the manifest's id {hd.feature} is not")
    if len(s.distance_edges) != len(s.distance_mass) + 1:
        raise _bad(hd, "its distance histogram has edges and bins that do not match")

    def shares(tv: TokenValues) -> list[tuple[str, str, float]]:
        return [(token_text(texts, i), percent_text(v), v) for i, v in zip(tv.token_ids, tv.values)]

    stats = [
        Stat("mean entropy (nats)", f"{s.entropy:g}", "mean over counted query tokens i of −Σ_j A[i,j]·ln A[i,j]"),
        Stat("first token", percent_text(s.first), "mean attention on position 0 (the first, BOS token)"),
        Stat("previous token", percent_text(s.previous), "mean attention on position i − 1 (queries that have one)"),
        Stat("self", percent_text(s.self), "mean attention of query token i on itself (key j = i)"),
        Stat(
            "mean write norm per pair",
            f"{s.write_mean:g}",
            "mean of ||A[i,j]·v_j·W_O[h]|| over every (query i, key j ≤ i) pair",
        ),
        Stat(
            "mean total write norm per query",
            f"{s.write_total_mean:g}",
            "mean over query tokens i of Σ_j ||A[i,j]·v_j·W_O[h]||",
        ),
        Stat(
            "counted queries",
            f"{s.n_queries:,}",
            "query tokens counted (the first token and ignored positions left out)",
        ),
    ]
    scalars = [
        ScalarChoice(n, name, *SCALAR_TEXT.get(name, (name, name)), checked=name == hd.rank_by)
        for n, name in enumerate(SCALARS)
    ]
    return {
        "hd": hd,
        "summary": summary,
        "stats": stats,
        "distance_bars": _distance_bars(s.distance_edges, s.distance_mass),
        "top_keys": shares(s.top_keys),
        "top_queries": shares(s.top_queries),
        "scalars": scalars,
        "rank_label": SCALAR_TEXT.get(hd.rank_by, (hd.rank_by,))[0],
        "layer_dicts": links.other_dictionaries(hd.layer, dict_index),
        "layer_heads": links.head_groups(hd.layer, dict_index, hd.feature),
        "n_top": len(hd.top_records),
        "n_random": len(hd.random_records),
        "note_html": note_html,
    }
