"""Synthetic but valid feature caches for the renderer's tests and benchmarks.

Sizes default to sitegen's defaults (20 top examples of 5 + 1 + 5 tokens, 10
intervals x 5 examples, 5 + 5 hover tokens, 10 + 10 logits, 40-bin histograms).
Values are rounded to 4 significant digits, as the engine caches them. Loss
effects are "direct": removing a feature moves the same tokens' log-probs at
every position, so each page's hover token lists repeat, as in real data.
The token table mixes plain words with the hostile strings of ``fixtures.HOSTILE``.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
from decimal import ROUND_HALF_UP, Decimal
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from fixtures import HOSTILE

from sitegen.cache.feature_data import (
    FORMAT_VERSION,
    DictionarySummary,
    DirectHover,
    Example,
    FeatureData,
    Histogram,
    Hover,
    IntervalGroup,
    ListedHover,
    Ranked,
    TokenValues,
)
from sitegen.cache.files import write_batch, write_json
from sitegen.cache.manifest import config_hash, config_keys
from sitegen.config import Config, DatasetConfig, DictionaryConfig, SiteConfig
from sitegen.render.index_data import IndexRow
from sitegen.sources.tokens import display_text

VOCAB = 4096
PAYLOADS = ['<img src=x onerror="window.__pwned=1">', '<svg onload="window.__pwned=1"></svg>']


def round_sig(x: float, digits: int = 4) -> float:
    if x == 0 or not math.isfinite(x):
        return 0.0
    return round(x, digits - 1 - int(math.floor(math.log10(abs(x)))))


COMMON = (
    " the , . of and to a in is that for it as was with be by on not he I this are or his from at"
    " which but have an they you were her she there had been one all we can their has more when will"
    " would who so no if out into do time only new some could these two may first then any like other"
    " than now its over such our what man up about also most made after many well before must through"
    " back years where much your way down should because each just those people how too little state"
    " good very make world still own see men work long get here between both life being under never day"
)


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
    negative_examples: int = 10
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

    def hover(self, a: float, basis: TokenValues, direct: bool) -> Hover:
        """Direct: log-prob changes -coef * u - shift over the basis, as the engine makes them;
        else values drawn on their own (as ``exact`` effects, which pages list in full)."""
        k = len(basis.token_ids) // 2
        loss = round_sig(float(self.rng.normal(0, 0.05) + 0.02 * a))
        if not direct:
            top = sorted(self.floats(k, 0.001, max(abs(a), 0.002)), reverse=True)
            bottom = sorted(self.floats(k, -max(abs(a), 0.002), -0.001))
            return ListedHover(loss, TokenValues(basis.token_ids[:k], top), TokenValues(basis.token_ids[k:], bottom))
        coef = round_sig(a * float(self.rng.uniform(0.001, 0.2)), 7)
        shift = round_sig(-coef * float(self.rng.uniform(-0.5, 0.5)), 7)
        return DirectHover(coef, loss, shift)

    def example(self, act: float, max_act: float, basis: TokenValues, negative: bool, direct: bool) -> Example:
        s, rng = self.sizes, self.rng
        window = s.before + 1 + s.after
        acts = [
            round_sig(float(rng.uniform(0.05, 1) * max_act)) if rng.random() < s.active_rate else 0.0
            for _ in range(window)
        ]
        acts[s.before] = act
        if negative:
            acts = [-abs(a) for a in acts]
        hovers = [None if a == 0 else self.hover(a, basis, direct) for a in acts]
        seq, pos = int(next(self.seqs)), int(rng.integers(s.before, 128 - s.after))  # windows never overlap
        return Example(seq, pos, pos - s.before, self.tokens(window), acts, hovers)

    def group(
        self,
        lower: float,
        upper: float,
        n: int,
        max_act: float,
        basis: TokenValues,
        direct: bool,
        negative: bool = False,
    ) -> IntervalGroup:
        acts = sorted((round_sig(float(self.rng.uniform(lower, upper)) or upper) for _ in range(n)), reverse=True)
        return IntervalGroup(
            round_sig(lower),
            round_sig(upper),
            round_sig(float(self.rng.uniform(0.001, 0.4))),
            [self.example(min(max(a, lower), upper), max_act, basis, negative, direct) for a in acts],
        )

    def ranked(self, n: int, upper: int, extra: bool) -> Ranked:
        ids = sorted(int(i) for i in self.rng.choice(upper, size=n, replace=False))
        values = sorted(self.floats(n, -1, 1), key=abs, reverse=True)
        return Ranked(ids, values, self.floats(n, 0, 1) if extra else [])

    def histogram(self, lo: float, hi: float) -> Histogram:
        edges = [round_sig(lo + (hi - lo) * k / self.sizes.bins) for k in range(self.sizes.bins + 1)]
        return Histogram(edges, [int(c) for c in self.rng.integers(0, 5000, size=self.sizes.bins)])

    def feature(
        self,
        dictionary: str,
        feature: int,
        d_sae: int,
        d_in: int,
        *,
        dead: bool = False,
        negative: bool = False,
        direct: bool = True,
    ) -> FeatureData:
        s, rng = self.sizes, self.rng
        self.seqs = iter(rng.permutation(4096))
        logit_top = TokenValues(self.tokens(s.logit_top), sorted(self.floats(s.logit_top, 0.1, 2), reverse=True))
        logit_bottom = TokenValues(self.tokens(s.logit_top), sorted(self.floats(s.logit_top, -2, -0.1)))
        # hovers list the lowest logit effects' tokens, then the highest (raised / lowered by removal)
        k = s.hover_top
        basis = TokenValues(
            logit_bottom.token_ids[:k] + logit_top.token_ids[:k], logit_bottom.values[:k] + logit_top.values[:k]
        )
        max_act = 0.0 if dead else round_sig(float(rng.uniform(1, 20)))
        width = max_act / s.n_intervals
        return FeatureData(
            dictionary=dictionary,
            feature=feature,
            dead=dead,
            n_tokens=32768,
            n_nonfinite=int(rng.random() < 0.1),
            n_active=(n_active := 0 if dead else max(1, int(32768 * 10 ** rng.uniform(-4, -1)))),
            density=round_sig(n_active / 32768),
            max_act=max_act,
            mean_nonzero_act=round_sig(max_act * 0.3),
            act_histogram=Histogram([], []) if dead else self.histogram(0, max_act),
            top_examples=[]
            if dead
            else [
                self.example(a, max_act, basis, False, direct)
                for a in sorted(self.floats(s.top_examples - 1, max_act * 0.6, max_act) + [max_act], reverse=True)
            ],
            intervals=[]
            if dead
            else [
                self.group(i * width, (i + 1) * width, s.per_interval, max_act, basis, direct)
                for i in range(s.n_intervals)
            ],
            negative=self.group(-max_act, -max_act / 2, s.negative_examples, max_act, basis, direct, True)
            if negative and not dead
            else None,
            logit_top=logit_top,
            logit_bottom=logit_bottom,
            logit_histogram=self.histogram(-2, 2),
            neuron_alignment=self.ranked(s.n_related, d_in, True),
            correlated_neurons=self.ranked(s.n_related, d_in, True),
            correlated_features=self.ranked(s.n_related, d_sae, False),
            decoder_neighbours=self.ranked(s.n_neighbours, d_sae, False),
            top_tokens=TokenValues([], [])
            if dead
            else TokenValues(
                self.tokens(s.n_top_tokens),
                sorted((int(c) for c in rng.integers(1, 20, size=s.n_top_tokens)), reverse=True),
            ),
            hover_basis=basis if direct else TokenValues([], []),
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
        rows.append(
            IndexRow(
                r // per_dict,
                r % per_dict,
                dead,
                0.0 if dead else round_sig(float(10 ** rng.uniform(-5, -1))),
                0.0 if dead else round_sig(float(rng.uniform(0.5, 40))),
                [] if dead else [texts.get(int(t), f" tok{t}") for t in top[r]],
                "Fires on closing brackets in Python code" if r % 50 == 7 else "",
            )
        )
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
    effects: str = "direct"  # "exact": hovers without direct parameters, listed in full on pages


def write_cache(
    cache: Path,
    specs: list[DictSpec],
    *,
    seed: int = 0,
    sizes: Sizes | None = None,
    batch_size: int = 64,
    texts: dict[int, str] | None = None,
    config: Config | None = None,
) -> Path:
    """A complete synthetic feature cache; returns ``cache``. With ``config``, its manifest says
    it was built from that config (so ``sitegen render`` accepts it)."""
    texts = texts or token_table()
    maker = FeatureMaker(seed, vocab=len(texts), sizes=sizes)
    summaries = []
    for d, spec in enumerate(specs):
        ids = sorted(spec.feature_ids)
        for b in range(0, max(len(ids), 1), batch_size):
            batch = [
                maker.feature(
                    spec.name,
                    f,
                    spec.d_sae,
                    spec.d_in,
                    dead=f in spec.dead,
                    negative=spec.negative,
                    direct=spec.effects == "direct",
                )
                for f in ids[b : b + batch_size]
            ]
            write_batch(cache, d, b // batch_size, batch)
        summaries.append(
            DictionarySummary(
                spec.name,
                spec.kind,
                spec.hook_name,
                spec.d_in,
                spec.d_sae,
                ids,
                spec.effects,
                "final LayerNorm scale frozen at its clean value",
            )
        )
    write_json(cache / "tokens.json", {str(k): v for k, v in texts.items()})
    write_json(
        cache / "manifest.json",
        {
            "format": FORMAT_VERSION,
            "config_hash": config_hash(config) if config else "0123abcd",
            "config_keys": config_keys(config) if config else {},
            "fingerprints": {"model": "aa11", "dataset": "bb22"},
            "dictionaries": [dataclasses.asdict(s) for s in summaries],
            "batches": {},
            "complete": True,
            "stats": {"model_passes": 4, "n_tokens": 32768, "n_sequences": 256, "n_nonfinite": 0},
            "provenance": {
                "model": "synthetic-model",
                "n_layers": 18,
                "d_model": 640,
                "sitegen_version": "0.1.0",
                "dataset": {"paths": ["texts/*.txt"], "context_length": 128, "n_documents": 40},
            },
        },
    )
    return cache


def site_config(
    root: Path, *, pages: str | None = None, notes: str | None = None, title: str = "Synthetic dashboards"
) -> Config:
    """A Config whose only renderer-relevant part is ``site`` (paths relative to ``root``)."""
    return Config(
        dictionaries=[DictionaryConfig(name="sae", path="sae")],
        dataset=DatasetConfig(paths=["texts/*.txt"]),
        site=SiteConfig(title=title, pages=pages, notes=notes),
        path=root / "site_config.yaml",
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


def floats24(text: str) -> list[float]:
    """``static/feature.js``'s decoding of ``embed.packed_floats``."""
    raw = np.frombuffer(base64.b64decode(text), np.uint8).reshape(-1, 3).astype(np.uint32)
    return ((raw[:, 0] << 24) | (raw[:, 1] << 16) | (raw[:, 2] << 8)).view(np.float32).astype(float).tolist()


def direct_changes(side: tuple[list[int], list[float]], record: list[float], u_min: float, u_max: float) -> list:
    """``static/feature.js``'s ``changes``: interpolated in u, to the decimals the ends support."""
    big = max(abs(record[2]), abs(record[3]))
    places = min(max(math.floor(4.82 - math.log10(big)), 0), 100) if big else 0
    return [
        shown_change(record[2] + (u - u_min) / ((u_max - u_min) or 1) * (record[3] - record[2]), places)
        for u in side[1]
    ]


def shown_change(v: float, places: int) -> float:
    """static/feature.js's ``shownChange`` by definition: the exact binary value of ``v`` rounded
    once, halves away from zero, to 4 significant digits or to ``places`` decimals, whichever is
    coarser."""
    if v == 0:
        return 0.0
    exact = Decimal(v)
    decimals = min(places, 3 - exact.adjusted())  # adjusted(): the exact decimal exponent of v
    return float(exact.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP))


def r4(x: float) -> float:
    """JS ``+x.toPrecision(4)``."""
    return float(f"{x:.4g}")


def decoded_examples(data: dict) -> list[list[dict]]:
    """The page JSON's example groups as plain dicts with token texts, decoded as
    static/feature.js decodes them (either hover encoding)."""
    tokens = data["tokens"]
    records = floats24(data["h"]) if "h" in data else None
    if records is not None:
        ids, u = data["basis"]
        k = len(ids) // 2
        low, high, u_min, u_max = (ids[:k], u[:k]), (ids[k:], u[k:]), u[0], u[k]
    at, seen = 0, {}
    groups = []
    for group in data["groups"]:
        examples = []
        for seq, pos, start, window, *rest in group:
            numbers = rest[0] if rest else list(range(len(window)))  # direct: left out when every token has one
            acts, hovers = [0] * len(window), [None] * len(window)
            for a in numbers:
                if records is None:
                    acts[a[0]] = a[1]
                    if len(a) > 2:
                        up = data["lists"][a[3]]
                        end = 4 + len(up)
                        down = data["lists"][a[end]]
                        hovers[a[0]] = (
                            a[2],
                            [tokens[i] for i in up],
                            a[4:end],
                            [tokens[i] for i in down],
                            a[end + 1 : end + 1 + len(down)],
                        )
                    continue
                key = (seq, start + a)  # one record per (sequence, position), in order of first appearance
                if key not in seen:
                    r = records[at : at + 4]
                    at += 4
                    hover = None
                    if not math.isnan(r[1]):
                        up, down = (low, high) if r[2] > r[3] else (high, low)
                        hover = (
                            r4(r[1]),
                            [tokens[i] for i in up[0]],
                            direct_changes(up, r, u_min, u_max),
                            [tokens[i] for i in down[0]],
                            direct_changes(down, r, u_min, u_max),
                        )
                    seen[key] = (r4(r[0]), hover)
                acts[a], hovers[a] = seen[key]
            examples.append(
                {
                    "seq": seq,
                    "pos": pos,
                    "start": start,
                    "tokens": [tokens[i] for i in window],
                    "acts": acts,
                    "hovers": hovers,
                }
            )
        groups.append(examples)
    if records is not None:
        assert at == len(records), "unused hover records"
    return groups


def same_examples(page: list[list[dict]], expected: list[list[dict]]) -> bool:
    """``decoded_examples`` against ``expected_examples``: equal, except that log-prob changes a
    page interpolates from its two ends (24-bit floats) may differ by one unit in their 4th
    significant digit, or, where shown with fewer digits, by 1e-4 of the hover's largest change."""

    def unit(x: float) -> float:
        return 10 ** (math.floor(math.log10(abs(x))) - 3) if x else 0.0

    def close(a: list[float], b: list[float], scale: float) -> bool:
        return len(a) == len(b) and all(abs(x - y) <= 1.001 * unit(y) + 1e-4 * scale for x, y in zip(a, b))

    for got_group, want_group in zip(page, expected, strict=True):
        for got, want in zip(got_group, want_group, strict=True):
            if {k: v for k, v in got.items() if k != "hovers"} != {k: v for k, v in want.items() if k != "hovers"}:
                return False
            for g, w in zip(got["hovers"], want["hovers"], strict=True):
                if (g is None) != (w is None):
                    return False
                if g is None:
                    continue
                scale = max(map(abs, w[2] + w[4]), default=0.0)
                if (
                    g[0] != w[0]
                    or g[1] != w[1]
                    or g[3] != w[3]
                    or not close(g[2], w[2], scale)
                    or not close(g[4], w[4], scale)
                ):
                    return False
    return True


def listed_changes(h: Hover, basis: TokenValues) -> tuple[TokenValues, TokenValues]:
    """(top, bottom) of a hover as its tooltip lists them. A direct hover's are the changes
    -coef * u - shift at the basis tokens, at 4 significant digits: the k lowest u first when
    coef > 0 (removal raises them most), else the k highest."""
    if isinstance(h, ListedHover):
        return h.top, h.bottom
    k = len(basis.token_ids) // 2
    low, high = slice(0, k), slice(k, 2 * k)
    up, down = (low, high) if h.coef > 0 else (high, low)

    def changes(part: slice) -> TokenValues:
        return TokenValues(basis.token_ids[part], [r4(-h.coef * u - h.shift) for u in basis.values[part]])

    return changes(up), changes(down)


def expected_hover(h: Hover | None, basis: TokenValues, texts: dict[int, str]) -> tuple | None:
    if h is None:
        return None
    top, bottom = listed_changes(h, basis)
    return (
        h.loss_effect,
        [texts[i] for i in top.token_ids],
        top.values,
        [texts[i] for i in bottom.token_ids],
        bottom.values,
    )


def expected_examples(fd: FeatureData, texts: dict[int, str]) -> list[list[dict]]:
    """``decoded_examples`` as it should be for ``fd``: top, intervals from the highest, negative."""
    intervals = sorted(fd.intervals, key=lambda g: -g.upper)
    groups = [fd.top_examples, *(g.examples for g in intervals), *([fd.negative.examples] if fd.negative else [])]
    return [
        [
            {
                "seq": ex.seq,
                "pos": ex.pos,
                "start": ex.start,
                "tokens": [texts[i] for i in ex.token_ids],
                "acts": ex.acts,
                "hovers": [expected_hover(h, fd.hover_basis, texts) for h in ex.hovers],
            }
            for ex in group
        ]
        for group in groups
    ]
