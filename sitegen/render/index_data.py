"""The index's data file ``assets/index-data.js``: one columnar object for every
built feature of every dictionary, and one for every built attention head, loaded
with a plain ``<script src>`` (so it works from file://) as ``window.SITEGEN_INDEX``.

Schema (``v`` 3), one entry per row in every column array::

    {"v": 3, "dicts": [<dictionary name>, ...], "tokens": [<display text>, ...],
     "d": [<dict index>...], "id": [<feature id>...], "density": [...], "max": [...],
                                                   # null: imported NeuronRecords (no density)
     "top": [[<token index>, ...], ...],          # most frequent tokens at the top activations
     "dead": [<row>...],                           # rows of dead features
     "notes": [[<row>, <plain-text snippet>], ...],  # rows with a note
     "expl": [[<row>, <text>, <score> | null], ...],  # rows with an explanation (v 3): the best
                                                      # one's text (first 200 characters) and score
     "heads": {                                    # attention heads (v 2), one entry per head:
        "d": [<dict index>...], "id": [<head id>...], "layer": [...], "head": [...],
        "entropy": [...],     # mean attention entropy over counted queries (nats)
        "first": [...],       # mean attention on the first (BOS) token
        "previous": [...],    # mean attention on the previous token
        "self": [...],        # mean attention of a query on itself
        "write": [...]}}      # mean write norm ||A[i,j] v_j W_O[h]|| per (query, key) pair
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from sitegen.cache.feature_data import FeatureData
from sitegen.cache.head_data import HeadData
from sitegen.cache.record_data import RecordData
from sitegen.render.embed import compact_number, script_safe_json
from sitegen.render.feature_page import token_text

SCHEMA_VERSION = 3  # 3: "expl", the best explanation of each explained feature
INDEX_DATA_PATH = "assets/index-data.js"


@dataclass
class IndexRow:
    dict_index: int
    feature: int
    dead: bool
    density: float | None  # None: imported NeuronRecords (a record file has no density)
    max_act: float | None  # None: an imported record file without records
    top_tokens: list[str]
    snippet: str  # plain text, "" without a note
    explanation: str = ""  # the best explanation's text (plain, cut), "" without one
    explanation_score: float | None = None  # its score, None without one


@dataclass
class HeadRow:
    dict_index: int
    feature: int
    layer: int
    head: int
    entropy: float
    first: float
    previous: float
    self_share: float
    write_mean: float


Row = IndexRow | HeadRow  # what a batch file's pages give the index


def head_row(hd: HeadData, dict_index: int) -> HeadRow:
    s = hd.summary
    return HeadRow(dict_index, hd.feature, hd.layer, hd.head, s.entropy, s.first, s.previous, s.self, s.write_mean)


def heads_json(rows: list[HeadRow]) -> dict:
    columns = {
        "entropy": "entropy",
        "first": "first",
        "previous": "previous",
        "self": "self_share",
        "write": "write_mean",
    }
    out: dict[str, list] = {
        "d": [r.dict_index for r in rows],
        "id": [r.feature for r in rows],
        "layer": [r.layer for r in rows],
        "head": [r.head for r in rows],
    }
    out.update({key: [compact_number(getattr(r, field)) for r in rows] for key, field in columns.items()})
    return out


def index_row(
    fd: FeatureData,
    dict_index: int,
    texts: dict[int, str],
    snippet: str,
    explanation: str = "",
    explanation_score: float | None = None,
) -> IndexRow:
    return IndexRow(
        dict_index,
        fd.feature,
        fd.dead,
        fd.density,
        fd.max_act,
        [token_text(texts, i) for i in fd.top_tokens.token_ids],
        snippet,
        explanation,
        explanation_score,
    )


def record_row(
    rd: RecordData, dict_index: int, snippet: str, explanation: str = "", explanation_score: float | None = None
) -> IndexRow:
    """An imported NeuronRecord's row: its largest record value, no density (the file has none),
    no top tokens (sitegen's definition needs every activation); dead when its top value is <= 0."""
    top = max((v for r in rd.top for v in r.token_values()), default=None)
    return IndexRow(
        dict_index,
        rd.feature,
        top is not None and top <= 0,
        None,
        rd.max_activation(),
        [],
        snippet,
        explanation,
        explanation_score,
    )


def optional_number(x: float | None) -> float | int | None:
    return None if x is None else compact_number(x)


def index_json(all_rows: Sequence[Row], dictionary_names: list[str]) -> dict:
    rows = [r for r in all_rows if isinstance(r, IndexRow)]
    counts = Counter(t for r in rows for t in r.top_tokens)
    table = sorted(counts, key=lambda t: (-counts[t], t))
    index = {t: n for n, t in enumerate(table)}
    return {
        "v": SCHEMA_VERSION,
        "dicts": dictionary_names,
        "tokens": table,
        "d": [r.dict_index for r in rows],
        "id": [r.feature for r in rows],
        "density": [optional_number(r.density) for r in rows],
        "max": [optional_number(r.max_act) for r in rows],
        "top": [[index[t] for t in r.top_tokens] for r in rows],
        "dead": [n for n, r in enumerate(rows) if r.dead],
        "notes": [[n, r.snippet] for n, r in enumerate(rows) if r.snippet],
        "expl": [
            [n, r.explanation, None if r.explanation_score is None else compact_number(r.explanation_score)]
            for n, r in enumerate(rows)
            if r.explanation
        ],
        "heads": heads_json([r for r in all_rows if isinstance(r, HeadRow)]),
    }


def index_script(rows: Sequence[Row], dictionary_names: list[str]) -> str:
    """The text of ``assets/index-data.js``."""
    return f"window.SITEGEN_INDEX={script_safe_json(index_json(rows, dictionary_names))};\n"
