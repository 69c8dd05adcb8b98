"""Synthetic but valid feature caches for the renderer's tests and benchmarks.

Sizes default to sitegen's defaults (20 top examples of 5 + 1 + 5 tokens, 10
intervals x 5 examples, 5 + 5 hover tokens, 10 + 10 logits, 40-bin histograms).
Values are rounded to 4 significant digits, as the engine caches them. Loss
effects are "direct": removing a feature moves the same tokens' log-probs at
every position, so each page's hover token lists repeat, as in real data.
The token table mixes plain words with the hostile strings of ``fixtures.HOSTILE``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

from fixtures import HOSTILE
from sitegen.compute.cache import write_batch, write_json
from sitegen.compute.feature_data import (
    FORMAT_VERSION,
    DictionarySummary,
    Example,
    FeatureData,
    Histogram,
    Hover,
    IntervalGroup,
    Ranked,
    TokenValues,
)
from sitegen.config import Config, DatasetConfig, DictionaryConfig, SiteConfig
from sitegen.render.index_data import IndexRow
from sitegen.sources.tokens import display_text

VOCAB = 4096
PAYLOADS = ['<img src=x onerror="window.__pwned=1">', "<svg onload=\"window.__pwned=1\"></svg>"]


def round_sig(x: float, digits: int = 4) -> float:
    if x == 0 or not math.isfinite(x):
        return 0.0
    return round(x, digits - 1 - int(math.floor(math.log10(abs(x)))))


COMMON = (" the , . of and to a in is that for it as was with be by on not he I this are or his from at"
          " which but have an they you were her she there had been one all we can their has more when will"
          " would who so no if out into do time only new some could these two may first then any like other"
          " than now its over such our what man up about also most made after many well before must through"
          " back years where much your way down should because each just those people how too little state"
          " good very make world still own see men work long get here between both life being under never day")


def token_table(vocab: int = VOCAB) -> dict[int, str]:
    """Display text per id: common words first (Zipf-frequent), the hostile strings and
    payloads from rank 12 on (so every page shows several), then numbered words."""
    words = [f" {w}" for w in COMMON.split()]
    special = [display_text(t) for t in HOSTILE + PAYLOADS]
    texts = words[:12] + special + words[12:]
    texts += [f" word{i}" if i % 3 else f"tok{i}" for i in range(len(texts), vocab)]
    return dict(enumerate(texts))


@dataclasses.dataclass
class Sizes:
    top_examples: int = 20
    before: int = 5
    after: int = 5
    n_intervals: int = 10
    per_interval: int = 5
    hover_top: int = 5
    logit_top: int = 10
    bins: int = 40
    n_related: int = 3
    n_neighbours: int = 5
    n_top_tokens: int = 5
    # share of non-selected window tokens with a non-zero activation; on the shipped SAE over
    # the corpus it is ~3.5% (90th percentile of features ~9%)
    active_rate: float = 0.1


class FeatureMaker:
    def __init__(self, seed: int = 0, vocab: int = VOCAB, sizes: Sizes | None = None):
        self.rng = np.random.default_rng(seed)
        self.vocab = vocab
        self.sizes = sizes or Sizes()
        ranks = np.arange(1, vocab + 1, dtype=float)
        self.p = (1 / ranks) / (1 / ranks).sum()  # Zipf: low ids are frequent

    def tokens(self, n: int) -> list[int]:
        return [int(i) for i in self.rng.choice(self.vocab, size=n, p=self.p)]

    def floats(self, n: int, lo: float, hi: float) -> list[float]:
        return [round_sig(float(x)) for x in self.rng.uniform(lo, hi, size=n)]

    def example(self, act: float, max_act: float, lists: tuple[list[int], list[int]], negative: bool) -> Example:
        s, rng = self.sizes, self.rng
        window = s.before + 1 + s.after
        acts = [round_sig(float(rng.uniform(0.05, 1) * max_act)) if rng.random() < s.active_rate else 0.0
                for _ in range(window)]
        acts[s.before] = act
        if negative:
            acts = [-abs(a) for a in acts]
        hovers = [
            None if a == 0 else Hover(
                round_sig(float(rng.normal(0, 0.05) + 0.02 * a)),
                TokenValues(lists[0], sorted(self.floats(s.hover_top, 0.001, max(abs(a), 0.002)), reverse=True)),
                TokenValues(lists[1], sorted(self.floats(s.hover_top, -max(abs(a), 0.002), -0.001))),
            )
            for a in acts
        ]
        seq, pos = int(rng.integers(0, 4096)), int(rng.integers(s.before, 128 - s.after))
        return Example(seq, pos, pos - s.before, self.tokens(window), acts, hovers)

    def group(self, lower: float, upper: float, n: int, max_act: float, lists, negative=False) -> IntervalGroup:
        acts = sorted((round_sig(float(self.rng.uniform(lower, upper)) or upper) for _ in range(n)), reverse=True)
        return IntervalGroup(round_sig(lower), round_sig(upper), round_sig(float(self.rng.uniform(0.001, 0.4))),
                             [self.example(min(max(a, lower), upper), max_act, lists, negative) for a in acts])

    def ranked(self, n: int, upper: int, extra: bool) -> Ranked:
        ids = sorted(int(i) for i in self.rng.choice(upper, size=n, replace=False))
        values = sorted(self.floats(n, -1, 1), key=abs, reverse=True)
        return Ranked(ids, values, self.floats(n, 0, 1) if extra else [])

    def histogram(self, lo: float, hi: float) -> Histogram:
        edges = [round_sig(lo + (hi - lo) * k / self.sizes.bins) for k in range(self.sizes.bins + 1)]
        return Histogram(edges, [int(c) for c in self.rng.integers(0, 5000, size=self.sizes.bins)])

    def feature(self, dictionary: str, feature: int, d_sae: int, d_in: int, *, dead: bool = False,
                negative: bool = False) -> FeatureData:
        s, rng = self.sizes, self.rng
        logit_top = TokenValues(self.tokens(s.logit_top), sorted(self.floats(s.logit_top, 0.1, 2), reverse=True))
        logit_bottom = TokenValues(self.tokens(s.logit_top), sorted(self.floats(s.logit_top, -2, -0.1)))
        # direct effects: removing the feature raises the bottom logits' tokens, lowers the top ones
        lists = (logit_bottom.token_ids[: s.hover_top], logit_top.token_ids[: s.hover_top])
        max_act = 0.0 if dead else round_sig(float(rng.uniform(1, 20)))
        width = max_act / s.n_intervals
        return FeatureData(
            dictionary=dictionary, feature=feature, dead=dead, n_tokens=32768, n_nonfinite=int(rng.random() < 0.1),
            density=0.0 if dead else round_sig(float(10 ** rng.uniform(-4, -1))), max_act=max_act,
            mean_nonzero_act=round_sig(max_act * 0.3),
            act_histogram=Histogram([], []) if dead else self.histogram(0, max_act),
            top_examples=[] if dead else [
                self.example(a, max_act, lists, False)
                for a in sorted(self.floats(s.top_examples - 1, max_act * 0.6, max_act) + [max_act], reverse=True)
            ],
            intervals=[] if dead else [
                self.group(k * width, (k + 1) * width, s.per_interval, max_act, lists) for k in range(s.n_intervals)
            ],
            negative=self.group(-max_act, -max_act / 2, s.per_interval, max_act, lists, True) if negative and not dead
            else None,
            logit_top=logit_top, logit_bottom=logit_bottom, logit_histogram=self.histogram(-2, 2),
            neuron_alignment=self.ranked(s.n_related, d_in, True),
            correlated_neurons=self.ranked(s.n_related, d_in, True),
            correlated_features=self.ranked(s.n_related, d_sae, False),
            decoder_neighbours=self.ranked(s.n_neighbours, d_sae, False),
            top_tokens=TokenValues([], []) if dead else TokenValues(self.tokens(s.n_top_tokens), sorted(
                (int(c) for c in rng.integers(1, 20, size=s.n_top_tokens)), reverse=True)),
        )


def index_rows(n: int, seed: int = 0, n_dictionaries: int = 2, vocab: int = 262_144) -> list[IndexRow]:
    """``n`` index rows shaped like real ones: 4-digit floats, 5 Zipf-drawn top tokens of a
    Gemma-sized vocabulary, a note on 1 in 50 features, 2% dead."""
    rng = np.random.default_rng(seed)
    texts = token_table(4096)
    top = rng.zipf(1.3, size=(n, 5)) % vocab
    per_dict = -(-n // n_dictionaries)
    rows = []
    for r in range(n):
        dead = rng.random() < 0.02
        rows.append(IndexRow(
            r // per_dict, r % per_dict, dead, 0.0 if dead else round_sig(float(10 ** rng.uniform(-5, -1))),
            0.0 if dead else round_sig(float(rng.uniform(0.5, 40))),
            [] if dead else [texts.get(int(t), f" tok{t}") for t in top[r]],
            "Fires on closing brackets in Python code" if r % 50 == 7 else "",
        ))
    return rows


@dataclasses.dataclass
class DictSpec:
    name: str = "sae"
    kind: str = "sae"
    hook_name: str = "blocks.6.hook_resid_post"
    d_in: int = 640
    d_sae: int = 4096
    feature_ids: tuple[int, ...] = tuple(range(8))
    dead: frozenset[int] = frozenset()
    negative: bool = False


def write_cache(cache: Path, specs: list[DictSpec], *, seed: int = 0, sizes: Sizes | None = None,
                batch_size: int = 64, texts: dict[int, str] | None = None) -> Path:
    """A complete synthetic feature cache; returns ``cache``."""
    texts = texts or token_table()
    maker = FeatureMaker(seed, vocab=len(texts), sizes=sizes)
    summaries = []
    for d, spec in enumerate(specs):
        ids = sorted(spec.feature_ids)
        for b in range(0, max(len(ids), 1), batch_size):
            batch = [maker.feature(spec.name, f, spec.d_sae, spec.d_in, dead=f in spec.dead, negative=spec.negative)
                     for f in ids[b: b + batch_size]]
            write_batch(cache, d, b // batch_size, batch)
        summaries.append(DictionarySummary(spec.name, spec.kind, spec.hook_name, spec.d_in, spec.d_sae, ids,
                                           "direct", "final LayerNorm scale frozen at its clean value"))
    write_json(cache / "tokens.json", {str(k): v for k, v in texts.items()})
    write_json(cache / "manifest.json", {
        "format": FORMAT_VERSION, "config_hash": "0123abcd", "fingerprints": {"model": "aa11", "dataset": "bb22"},
        "dictionaries": [dataclasses.asdict(s) for s in summaries], "batches": {}, "complete": True,
        "stats": {"model_passes": 4, "n_tokens": 32768, "n_sequences": 256, "n_nonfinite": 0},
        "provenance": {"model": "synthetic-model", "n_layers": 18, "d_model": 640, "sitegen_version": "0.1.0",
                       "dataset": {"paths": ["texts/*.txt"], "context_length": 128, "n_documents": 40}},
    })
    return cache


def site_config(root: Path, *, pages: str | None = None, notes: str | None = None,
                title: str = "Synthetic dashboards") -> Config:
    """A Config whose only renderer-relevant part is ``site`` (paths relative to ``root``)."""
    return Config(
        dictionaries=[DictionaryConfig(name="sae", path="sae")], dataset=DatasetConfig(paths=["texts/*.txt"]),
        site=SiteConfig(title=title, pages=pages, notes=notes), path=root / "site_config.yaml",
    )


class PageParser(HTMLParser):
    """Every element (tag, attributes) of a page, and the text of each <script>."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self.text: list[str] = []
        self._in_script = False
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        self._in_script = tag == "script"
        if self._in_script:
            self.scripts.append((dict(attrs), ""))

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] = (self.scripts[-1][0], self.scripts[-1][1] + data)
        else:
            self.text.append(data)

    def by_id(self, element_id: str) -> tuple[str, dict] | None:
        return next((e for e in self.elements if e[1].get("id") == element_id), None)


class TableParser(HTMLParser):
    def __init__(self, html: str, table_id: str):
        super().__init__(convert_charrefs=True)
        self.table_id, self.inside, self.rows, self.cell = table_id, False, [], None
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        if tag == "table" and dict(attrs).get("id") == self.table_id:
            self.inside = True
        elif self.inside and tag == "tr":
            self.rows.append([])
        elif self.inside and tag in ("td", "th"):
            self.cell = ""

    def handle_endtag(self, tag):
        if tag == "table":
            self.inside = False
        elif self.inside and tag in ("td", "th"):
            self.rows[-1].append(self.cell)
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


def table_cells(html: str, table_id: str) -> list[list[str]]:
    """Cell texts of each body row (header row left out) of the table with ``table_id``."""
    return TableParser(html, table_id).rows[1:]


def page_json(html: str) -> dict:
    """The page's one embedded JSON object."""
    blocks = [text for attrs, text in PageParser(html).scripts if attrs.get("type") == "application/json"]
    assert len(blocks) == 1, f"expected one JSON data block, found {len(blocks)}"
    return json.loads(blocks[0])


def decoded_examples(data: dict) -> list[list[dict]]:
    """The page JSON's example groups as plain dicts with token texts (inverse of the compaction)."""
    tokens, lists = data["tokens"], data["lists"]
    groups = []
    for group in data["groups"]:
        examples = []
        for seq, pos, start, ids, actives in group:
            acts, hovers = [0] * len(ids), [None] * len(ids)
            for a in actives:
                acts[a[0]] = a[1]
                if len(a) > 2:
                    up = lists[a[3]]
                    at = 4 + len(up)
                    down = lists[a[at]]
                    hovers[a[0]] = (a[2], [tokens[i] for i in up], a[4:at], [tokens[i] for i in down],
                                    a[at + 1: at + 1 + len(down)])
            examples.append({"seq": seq, "pos": pos, "start": start, "tokens": [tokens[i] for i in ids],
                             "acts": acts, "hovers": hovers})
        groups.append(examples)
    return groups


def expected_examples(fd: FeatureData, texts: dict[int, str]) -> list[list[dict]]:
    """``decoded_examples`` as it should be for ``fd``: top, intervals from the highest, negative."""
    intervals = sorted(fd.intervals, key=lambda g: -g.upper)
    groups = [fd.top_examples, *(g.examples for g in intervals), *([fd.negative.examples] if fd.negative else [])]
    return [[{
        "seq": ex.seq, "pos": ex.pos, "start": ex.start, "tokens": [texts[i] for i in ex.token_ids],
        "acts": ex.acts,
        "hovers": [None if h is None else (h.loss_effect, [texts[i] for i in h.top.token_ids], h.top.values,
                                           [texts[i] for i in h.bottom.token_ids], h.bottom.values)
                   for h in ex.hovers],
    } for ex in group] for group in groups]
