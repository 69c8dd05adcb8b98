"""An imported NeuronRecord's page (``kind: neuron_records``): data for templates/record.html and
the page's one JSON object, drawn by static/record.js.

JSON (``v`` 1)::

    {"v": 1, "dictionary": <dictionary index>, "feature": <site id>,
     "nav": [<previous built id> | null, <next built id> | null],
     "pairs": bool,            # token-pair records (the n-th token's n scalars, in order)
     "scale": float,           # the largest value of the top records (shading divides by it)
     "tokens": [<display text>, ...],          # page-local token table
     "groups": [[<record>, ...], ...]}         # top, random, then one per quantile bin
    record = [[<token index>, ...], [<value per token>, ...], <split> | null, [<pair scalars>] | null]

A token's value is its activation, or for token-pair records its largest scalar as a query; the
pair scalars let the tooltip list the keys it reads most. Values are the file's, unrounded.
"""

from __future__ import annotations

from dataclasses import dataclass

from sitegen.cache.feature_data import DictionarySummary
from sitegen.cache.record_data import ActivationRecord, RecordData
from sitegen.export.neuron_records import SPLITS_RANDOM, split_of
from sitegen.render.embed import compact_number
from sitegen.render.head_page import Stat
from sitegen.text import display_text

SCHEMA_VERSION = 1

# what a NeuronRecord cannot give, and why (shown on every imported page instead of zeros)
ABSENT = (
    (
        "density and activation histogram",
        "need the activation at every token of the dataset; a record file holds a few sequences and four moments",
    ),
    (
        "logit effects and hovers with loss effects",
        "need the model's weights (the unembedding and the "
        "direction this unit writes); no model is loaded for imported records",
    ),
    (
        "correlated neurons and features, decoder neighbours",
        "need every token's activation of the whole dictionary and its decoder",
    ),
    (
        "top tokens",
        "sitegen counts them over the top 1% of every positive activation, which a record file does not have",
    ),
)


@dataclass
class Group:
    title: str
    caption: str
    n: int


def _text(x: float | None) -> str:
    return "–" if x is None else str(compact_number(x))


def quantile_titles(boundaries: list[float | None] | None, n_bins: int) -> list[str]:
    """A label per quantile bin from the file's boundaries: n + 1 bins (below, between, from the
    last, as sitegen writes them) or n - 1 (between consecutive boundaries); else numbered."""
    b = [_text(x) for x in boundaries or []]
    if b and n_bins == len(b) + 1:
        return [f"below {b[0]}", *(f"{b[k - 1]} to {b[k]}" for k in range(1, len(b))), f"from {b[-1]}"]
    if b and n_bins == len(b) - 1:
        return [f"{b[k]} to {b[k + 1]}" for k in range(n_bins)]
    return [f"bin {k + 1}" for k in range(n_bins)]


def record_groups(rd: RecordData) -> list[Group]:
    unit = "pair scalar" if rd.is_pairs() else "activation"
    groups = [
        Group(
            "Top records",
            f"the file's most positive activation records, as it orders them; split: neuron-explainer's "
            f"interleaved train / calibration / valid / test ({len(rd.top) // 4} each)",
            len(rd.top),
        ),
        Group(
            "Random sample",
            f"the file's random sample of sequences; split: calibration / valid / test ({len(rd.random) // 3} each)",
            len(rd.random),
        ),
    ]
    bins = rd.by_quantile or []
    for title, b in zip(quantile_titles(rd.quantile_boundaries, len(bins)), bins):
        groups.append(
            Group(f"Random sample by quantile: {title}", f"sequences whose largest {unit} is in this bin", len(b))
        )
    return groups


def record_stats(rd: RecordData) -> list[Stat]:
    where = "as the file gives it (its producer's statistic over every token it counted)"
    stats = [
        Stat("max in records", _text(rd.max_activation()), "the largest value of any record in the file"),
        Stat("mean", _text(rd.mean), f"mean activation, {where}"),
        Stat("variance", _text(rd.variance), f"variance, {where}"),
        Stat("skewness", _text(rd.skewness), f"skewness, {where}"),
        Stat("kurtosis", _text(rd.kurtosis), f"kurtosis, {where}"),
    ]
    if rd.quantile_boundaries:
        text = ", ".join(_text(b) for b in rd.quantile_boundaries)
        stats.append(Stat("quantile boundaries", text, "the file's boundaries of its quantile bins"))
    return stats


def record_page_context(rd: RecordData, summary: DictionarySummary, note_html: object) -> dict:
    return {
        "summary": summary,
        "rd": rd,
        "pairs": rd.is_pairs(),
        "stats": record_stats(rd),
        "groups": record_groups(rd),
        "absent": ABSENT,
        "note_html": note_html,
    }


def record_page_json(rd: RecordData, dict_index: int, nav: tuple[int | None, int | None]) -> dict:
    table: dict[str, int] = {}

    def record(r: ActivationRecord, split: str | None) -> list:
        ids = [table.setdefault(display_text(t), len(table)) for t in r.tokens]
        values = [compact_number(v) for v in r.token_values()]
        return [ids, values, split, [compact_number(v) for v in r.activations] if r.is_pairs() else None]

    groups = [
        [record(r, split_of(k, len(rd.top))) for k, r in enumerate(rd.top)],
        [record(r, split_of(k, len(rd.random), SPLITS_RANDOM)) for k, r in enumerate(rd.random)],
        *([record(r, None) for r in b] for b in rd.by_quantile or []),
    ]
    top_values = [v for r in rd.top for v in r.token_values()]
    return {
        "v": SCHEMA_VERSION,
        "dictionary": dict_index,
        "feature": rd.feature,
        "nav": list(nav),
        "pairs": rd.is_pairs(),
        "scale": compact_number(max(top_values, default=0.0)),
        "tokens": list(table),
        "groups": groups,
    }
