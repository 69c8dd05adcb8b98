"""PromptData -> what one prompt page (``prompts/<slug>.html``) shows: the
transformer-debugger's view of a prompt, precomputed by the engine (``cache/prompt_data.py``).

Two views of the same prompt, as for feature pages (``feature_page.py``):
- ``prompt_page_json``: the one JSON object the page's script (``static/prompt.js``) reads: the
  token strip (tokens, per-layer attribution, next-token predictions) and the node table,
  compact: a page-local token table (most used first), one array per node, plain JSON numbers
  (the engine caches them at 4 significant digits).
- ``prompt_page_context``: the static parts the template renders (header, metric, top
  predictions, the filters' choices, the ablations and the upstream traces).

Besides: ``PromptSite`` (what the site knows about a node: its dictionary, whether it has a
page, its note), ``prompt_appearances`` (which node pages link back to which prompts) and
``prompt_listing`` (a prompt's row in the index).

JSON schema (``v`` 1)::

    {"v": 1, "index": <prompt index>, "slug": "<slug>",
     "metric_kind": "logit_diff" | "neg_log_prob", "metric": <value>, "position": p,
     "target": <token index>, "distractor": <token index> | null,
     "tokens": [<display text>, ...],                       # page-local token table
     "prompt": [<token index> per position],
     "top": [[<token index>, ...], [<probability>, ...]],   # top predictions at position p
     "next": [[[<token index>, ...], [<probability>, ...]] per position],   # next_tokens
     "attr": [[[<attention>, <MLP>] per layer] per position],   # layer_attribution
     "dicts": [[<name>, <kind>] per dictionary of the site],    # a node's dict indexes it
     "nodes": [<node>, ...],              # PromptData.nodes in order: rank = place + 1
     "unlinked": [[<dict>, <feature>], ...],   # nodes' features without a page in the site
     "notes": [[<dict>, <feature>, "<plain-text snippet>"], ...]}   # nodes' features with a note
    node = [dict, feature, layer, head, position, key, activation, act_grad, write_norm, direct]
    layer: the dictionary's layer (a head: its own), -1 when it has none; head: the head within
    its layer, -1 but for attention heads; position: the query position for a head, whose key
    position is ``key`` (-1 but for heads)

A node's page is ``../features/<dict>/<feature>.html`` unless [dict, feature] is in
``unlinked``. Every string is text (token strings and notes are hostile): the page sets them
with ``textContent``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from sitegen.cache.feature_data import DictionarySummary, TokenValues
from sitegen.cache.head_data import HEADS_KIND
from sitegen.cache.prompt_data import METRICS, PromptData, PromptNode
from sitegen.errors import SitegenError
from sitegen.render.embed import compact_number, compact_numbers
from sitegen.render.feature_page import TokenIndex, token_text
from sitegen.render.markup import plain_snippet
from sitegen.text import visible

SCHEMA_VERSION = 1
N_LINKED = 20  # a node page links back to each prompt whose first N_LINKED nodes hold it
SNIPPET_CHARS = 60  # a prompt's text in the index and in back-links
SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")

GRADIENT_TEXT = (
    "activation × gradient of the metric w.r.t. that activation, with the final norm's scale detached "
    "(frozen at its clean value), as the transformer-debugger does; SAE latents through a hook that splices "
    "in the SAE and keeps its error term, so splicing changes nothing"
)
DEFINITIONS = [
    ("activation", "an SAE latent's or MLP neuron's activation at its token; an attention head's A[query, key]"),
    ("act × grad", GRADIENT_TEXT),
    (
        "write norm",
        "the norm of what the node writes into the residual stream (a head: ||A[query, key] v_key W_O||), "
        "through a post-sublayer norm (Gemma's ln*_post) with that norm's clean scale frozen",
    ),
    ("direct effect", "that write · the gradient of the metric w.r.t. the final residual stream"),
    (
        "ablation",
        "the node zero-ablated at its position (a head: its pair) in a re-run, the SAE error kept; "
        "its linear estimate is −act × grad",
    ),
]


def visible_text(text: str) -> str:
    """A prompt's text with control, bidi and zero-width characters made visible (\\uXXXX);
    newlines and tabs kept (the page shows it with white-space: pre-wrap)."""
    return visible(text, keep="\n\t")


def text_snippet(text: str) -> str:
    """The first SNIPPET_CHARS characters of a prompt, on one line."""
    words = " ".join(visible_text(text).split())
    return words if len(words) <= SNIPPET_CHARS else words[: SNIPPET_CHARS - 1].rstrip() + "\u2026"


def metric_text(pd: PromptData) -> str:
    if pd.metric_kind == "logit_diff":
        return f"logit difference target − distractor at position {pd.position}"
    return f"negative log-prob of the target at position {pd.position}"


def _bad(pd: PromptData, what: str) -> SitegenError:
    return SitegenError(f"prompt cache: prompt {pd.index} ('{pd.slug}'): {what}; rebuild the cache")


class PromptSite:
    """What the site knows about a prompt's nodes: their dictionaries (manifest order), which
    features have pages, and their notes."""

    def __init__(self, summaries: list[DictionarySummary], notes: dict[str, dict[int, str]]):
        self.summaries = summaries
        self.built = [set(s.feature_ids) for s in summaries]
        self.notes = notes
        self._snippets: dict[tuple[int, int], str] = {}

    def layer_head(self, n: PromptNode) -> tuple[int, int]:
        """(layer, head) of a node: -1 for a layer it has none of, head -1 but for attention heads."""
        s = self.summaries[n.dictionary]
        if s.kind == HEADS_KIND:
            return s.head_of(n.feature)
        layer = s.layer()
        return (-1 if layer is None else layer), -1

    def label(self, n: PromptNode) -> str:
        """A node as the tables name it: "feature 12", "neuron 3", "L2.H3 (query 5 ← key 4)"."""
        kind = self.summaries[n.dictionary].kind
        if kind == HEADS_KIND:
            layer, head = self.layer_head(n)
            return f"L{layer}.H{head} (query {n.position} ← key {n.key})"
        return f"{'neuron' if kind == 'neurons' else 'feature'} {n.feature}"

    def has_page(self, n: PromptNode) -> bool:
        return n.feature in self.built[n.dictionary]

    def href(self, n: PromptNode, root: str = "../") -> str | None:
        """The node's page from a page ``root`` below the site's root, None without one."""
        return f"{root}features/{n.dictionary}/{n.feature}.html" if self.has_page(n) else None

    def note(self, d: int, feature: int) -> str:
        """The plain-text snippet of a feature's note, "" without one."""
        if (d, feature) not in self._snippets:
            note = self.notes.get(self.summaries[d].name, {}).get(feature)
            self._snippets[d, feature] = plain_snippet(note) if note else ""
        return self._snippets[d, feature]

    def check(self, pd: PromptData) -> None:
        """Raise a one-line SitegenError where ``pd`` does not fit itself or this site."""
        n_pos = len(pd.token_ids)
        if not SLUG.match(pd.slug):
            raise _bad(pd, "its slug is not a file name of letters, digits, '-' and '_'")
        if pd.metric_kind not in METRICS or (pd.metric_kind == "logit_diff") != (pd.distractor is not None):
            raise _bad(pd, f"metric {pd.metric_kind!r} with distractor {pd.distractor!r}")
        if not 0 <= pd.position < n_pos or len(pd.next_tokens) != n_pos or len(pd.layer_attribution) != n_pos:
            raise _bad(pd, f"its position, next tokens or layer attribution do not fit its {n_pos} tokens")
        if any(len(layer) != 2 for per in pd.layer_attribution for layer in per):
            raise _bad(pd, "a layer's attribution is not [attention, MLP]")
        if len({len(per) for per in pd.layer_attribution}) > 1:
            raise _bad(pd, "its positions have different numbers of layers")
        tvs = [pd.top_predictions, *pd.next_tokens]
        if any(len(tv.token_ids) != len(tv.values) for tv in tvs):
            raise _bad(pd, "a prediction list has token ids and values of different lengths")
        for n in [*pd.nodes, *(u.node for t in pd.traces for u in t.upstream)]:
            if not 0 <= n.dictionary < len(self.summaries):
                raise _bad(pd, f"a node of dictionary {n.dictionary}, which the site does not have")
            s = self.summaries[n.dictionary]
            if not 0 <= n.feature < s.d_sae:
                raise _bad(pd, f"a node of feature {n.feature}, outside '{s.name}' ({s.d_sae})")
            if s.kind == HEADS_KIND:
                fits = 0 <= n.key <= n.position < n_pos
            else:
                fits = 0 <= n.position < n_pos and n.key == -1
            if not fits:
                raise _bad(pd, f"a node of '{s.name}' at position {n.position}, key {n.key} does not fit its tokens")
        if any(not 0 <= i < len(pd.nodes) for i in [*(a.node for a in pd.ablations), *(t.node for t in pd.traces)]):
            raise _bad(pd, "an ablation or trace names a node the table does not have")
        if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in _numbers(pd)):
            raise _bad(pd, "it holds a NaN or infinite number, or a null")


def _numbers(pd: PromptData) -> Iterator[float]:
    """Every float of ``pd`` (a NaN written to the cache reads back as None)."""
    yield pd.metric
    for tv in (pd.top_predictions, *pd.next_tokens):
        yield from tv.values
    yield from (x for per in pd.layer_attribution for layer in per for x in layer)
    for n in (*pd.nodes, *(u.node for t in pd.traces for u in t.upstream)):
        yield from (n.activation, n.act_grad, n.write_norm, n.direct)
    yield from (x for a in pd.ablations for x in (a.change, a.estimate))
    yield from (u.act_grad for t in pd.traces for u in t.upstream)


def check_prompts(prompts: list[PromptData], site: PromptSite) -> None:
    """Every prompt fits the site, and no two share a slug (one page each)."""
    slugs: set[str] = set()
    for pd in prompts:
        site.check(pd)
        if pd.slug in slugs:
            raise _bad(pd, "another prompt has the same slug")
        slugs.add(pd.slug)


def _node_row(n: PromptNode, site: PromptSite) -> list:
    layer, head = site.layer_head(n)
    numbers = compact_numbers([n.activation, n.act_grad, n.write_norm, n.direct])
    return [n.dictionary, n.feature, layer, head, n.position, n.key, *numbers]


def _predictions(tv: TokenValues, tokens: TokenIndex) -> list:
    return [[tokens.index[i] for i in tv.token_ids], compact_numbers(tv.values)]


def prompt_page_json(pd: PromptData, site: PromptSite, texts: dict[int, str]) -> dict:
    used: Counter = Counter(pd.token_ids)
    used.update(pd.top_predictions.token_ids)
    for tv in pd.next_tokens:
        used.update(tv.token_ids)
    used.update([pd.target] + ([] if pd.distractor is None else [pd.distractor]))
    tokens = TokenIndex(used, texts)
    features = sorted({(n.dictionary, n.feature) for n in pd.nodes})
    return {
        "v": SCHEMA_VERSION,
        "index": pd.index,
        "slug": pd.slug,
        "metric_kind": pd.metric_kind,
        "metric": compact_number(pd.metric),
        "position": pd.position,
        "target": tokens.index[pd.target],
        "distractor": None if pd.distractor is None else tokens.index[pd.distractor],
        "tokens": tokens.texts,
        "prompt": [tokens.index[i] for i in pd.token_ids],
        "top": _predictions(pd.top_predictions, tokens),
        "next": [_predictions(tv, tokens) for tv in pd.next_tokens],
        "attr": [[compact_numbers(layer) for layer in per] for per in pd.layer_attribution],
        "dicts": [[s.name, s.kind] for s in site.summaries],
        "nodes": [_node_row(n, site) for n in pd.nodes],
        "unlinked": [[d, f] for d, f in features if f not in site.built[d]],
        "notes": [[d, f, note] for d, f in features if (note := site.note(d, f))],
    }


def linked_pages(data: dict) -> list[str]:
    """The node pages a prompt page's JSON links to (relative to the page), for ``sitegen check``."""
    unlinked = {(d, f) for d, f in data["unlinked"]}
    pairs = dict.fromkeys((n[0], n[1]) for n in data["nodes"])
    return [f"../features/{d}/{f}.html" for d, f in pairs if (d, f) not in unlinked]


@dataclass
class NodeCell:
    """A node as a static table shows it."""

    dictionary: str
    label: str
    href: str | None
    note: str  # plain text, "" without a note
    layer: int  # -1: none
    position: int
    token: str  # the text of the token at ``position``


@dataclass
class AblationRow:
    node: NodeCell
    rank: int  # 1-based place in the node table
    change: float
    estimate: float
    difference: float  # change - estimate
    flipped: bool  # the estimate has the other sign than the true change
    bars: tuple[float, float]  # change and estimate as fractions of the largest |value| of the table


@dataclass
class UpstreamRow:
    node: NodeCell
    activation: float
    act_grad: float  # of the traced node's activation
    metric_act_grad: float  # towards the metric, as in the node table


@dataclass
class TraceView:
    node: NodeCell
    rank: int
    act_grad: float  # the traced node's, towards the metric
    upstream: list[UpstreamRow]


@dataclass
class Choice:
    value: int
    label: str


def prompt_page_context(pd: PromptData, site: PromptSite, texts: dict[int, str]) -> dict:
    def cell(n: PromptNode) -> NodeCell:
        return NodeCell(
            site.summaries[n.dictionary].name,
            site.label(n),
            site.href(n),
            site.note(n.dictionary, n.feature),
            site.layer_head(n)[0],
            n.position,
            token_text(texts, pd.token_ids[n.position]),
        )

    scale = max((abs(x) for a in pd.ablations for x in (a.change, a.estimate)), default=0.0)
    ablations = [
        AblationRow(
            cell(pd.nodes[a.node]),
            a.node + 1,
            a.change,
            a.estimate,
            compact_number(float(f"{a.change - a.estimate:.4g}")),
            a.change * a.estimate < 0,
            (a.change / scale, a.estimate / scale) if scale else (0.0, 0.0),
        )
        for a in pd.ablations
    ]
    traces = [
        TraceView(
            cell(pd.nodes[t.node]),
            t.node + 1,
            pd.nodes[t.node].act_grad,
            [
                UpstreamRow(cell(u.node), u.node.activation, u.act_grad, u.node.act_grad)
                for u in sorted(t.upstream, key=lambda u: -abs(u.act_grad))
            ],
        )
        for t in pd.traces
    ]
    in_table = sorted({n.dictionary for n in pd.nodes})
    return {
        "p": pd,
        "text": visible_text(pd.text),
        "metric_text": metric_text(pd),
        "target": token_text(texts, pd.target),
        "distractor": None if pd.distractor is None else token_text(texts, pd.distractor),
        "position_token": token_text(texts, pd.token_ids[pd.position]),
        "top_predictions": [
            (token_text(texts, i), v) for i, v in zip(pd.top_predictions.token_ids, pd.top_predictions.values)
        ],
        "definitions": DEFINITIONS,
        "n_layers": len(pd.layer_attribution[0]) if pd.layer_attribution else 0,
        "dict_choices": [Choice(d, site.summaries[d].name) for d in in_table],
        "layer_choices": sorted({site.layer_head(n)[0] for n in pd.nodes}),
        "position_choices": [
            Choice(p, token_text(texts, pd.token_ids[p])) for p in sorted({n.position for n in pd.nodes})
        ],
        "n_nodes": len(pd.nodes),
        "ablations": ablations,
        "traces": traces,
    }


@dataclass
class Appearance:
    """A prompt whose node table's first N_LINKED rows hold a node of this page's feature."""

    slug: str
    text: str  # the prompt's snippet
    ranks: list[int]  # 1-based places in the node table, ascending


def prompt_appearances(prompts: list[PromptData], site: PromptSite) -> dict[tuple[int, int], list[Appearance]]:
    """(dictionary, feature) -> the prompts it appears in, in prompt order (built features only)."""
    out: dict[tuple[int, int], list[Appearance]] = {}
    for pd in prompts:
        ranks: dict[tuple[int, int], list[int]] = {}
        for rank, n in enumerate(pd.nodes[:N_LINKED], start=1):
            if 0 <= n.dictionary < len(site.summaries) and site.has_page(n):
                ranks.setdefault((n.dictionary, n.feature), []).append(rank)
        for key, rs in ranks.items():
            out.setdefault(key, []).append(Appearance(pd.slug, text_snippet(pd.text), rs))
    return out


@dataclass
class PromptListing:
    """A prompt's row in the index."""

    slug: str
    text: str  # snippet
    metric_text: str
    metric: float
    target: str
    distractor: str | None


def prompt_listing(pd: PromptData, texts: dict[int, str]) -> PromptListing:
    return PromptListing(
        pd.slug,
        text_snippet(pd.text),
        metric_text(pd),
        pd.metric,
        token_text(texts, pd.target),
        None if pd.distractor is None else token_text(texts, pd.distractor),
    )
