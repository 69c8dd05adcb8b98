"""The index's data file ``assets/index-data.js``: one columnar object for every
built feature of every dictionary, loaded with a plain ``<script src>`` (so it
works from file://) as ``window.SITEGEN_INDEX``.

Schema (``v`` 1), one entry per row in every column array::

    {"v": 1, "dicts": [<dictionary name>, ...], "tokens": [<display text>, ...],
     "d": [<dict index>...], "id": [<feature id>...], "density": [...], "max": [...],
     "top": [[<token index>, ...], ...],          # most frequent tokens at the top activations
     "dead": [<row>...],                           # rows of dead features
     "notes": [[<row>, <plain-text snippet>], ...]}  # rows with a note
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from sitegen.cache.feature_data import FeatureData
from sitegen.render.embed import compact_number, script_safe_json
from sitegen.render.feature_page import token_text

SCHEMA_VERSION = 1
INDEX_DATA_PATH = "assets/index-data.js"


@dataclass
class IndexRow:
    dict_index: int
    feature: int
    dead: bool
    density: float
    max_act: float
    top_tokens: list[str]
    snippet: str  # plain text, "" without a note


def index_row(fd: FeatureData, dict_index: int, texts: dict[int, str], snippet: str) -> IndexRow:
    return IndexRow(
        dict_index,
        fd.feature,
        fd.dead,
        fd.density,
        fd.max_act,
        [token_text(texts, i) for i in fd.top_tokens.token_ids],
        snippet,
    )


def index_json(rows: list[IndexRow], dictionary_names: list[str]) -> dict:
    counts = Counter(t for r in rows for t in r.top_tokens)
    table = sorted(counts, key=lambda t: (-counts[t], t))
    index = {t: n for n, t in enumerate(table)}
    return {
        "v": SCHEMA_VERSION,
        "dicts": dictionary_names,
        "tokens": table,
        "d": [r.dict_index for r in rows],
        "id": [r.feature for r in rows],
        "density": [compact_number(r.density) for r in rows],
        "max": [compact_number(r.max_act) for r in rows],
        "top": [[index[t] for t in r.top_tokens] for r in rows],
        "dead": [n for n, r in enumerate(rows) if r.dead],
        "notes": [[n, r.snippet] for n, r in enumerate(rows) if r.snippet],
    }


def index_script(rows: list[IndexRow], dictionary_names: list[str]) -> str:
    """The text of ``assets/index-data.js``."""
    return f"window.SITEGEN_INDEX={script_safe_json(index_json(rows, dictionary_names))};\n"
