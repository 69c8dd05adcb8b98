"""FeatureData: every number one feature's dashboard shows, as plain typed data.

Produced by ``sitegen.compute`` and consumed by ``sitegen.render``; this module and the
rest of ``sitegen.cache`` import no torch. Token ids are kept as ints; the renderer turns
them into strings through ``tokens.json``. Floats are rounded to the precision a page
shows before caching. Serialisation: ``cache.files.write_batch`` /
``cache.files.feature_data_from_dict``: the JSON of a dataclass is its fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sitegen.hooks import hook_layer

FORMAT_VERSION = 6  # 6: NeuronRecord data (FeatureData.records, HeadRecord.pairs), prompts, sequences.json


@dataclass
class Histogram:
    edges: list[float]  # [bins + 1], increasing
    counts: list[int]  # [bins]


@dataclass
class TokenValues:
    """Tokens with one value each, e.g. the top logit effects."""

    token_ids: list[int]
    values: list[float]


@dataclass
class DirectHover:
    """What removing the feature at this position does to the next-token prediction there,
    on the direct path (``effects: direct`` without a logit soft-cap): the final residual
    loses activation * direction, the final norm's scale (and a post-norm's) frozen at its
    clean value, so every log-prob change is -coef * u[t] - shift, with u the feature's
    logit effects. Pages list the changes at ``FeatureData.hover_basis``'s tokens."""

    coef: float  # activation / frozen norm scale(s) (7 significant digits)
    loss_effect: float  # change in next-token loss (nats); < 0: the feature hurt, > 0: it helped
    shift: float  # change of the log-sum-exp of the logits (7 significant digits)


@dataclass
class ListedHover:
    """What removing the feature at this position does to the next-token prediction there,
    with its listed tokens (``effects: exact``: the model re-run with the feature removed at
    this position only, the SAE error kept; or ``direct`` under a logit soft-cap)."""

    loss_effect: float  # change in next-token loss (nats); < 0: the feature hurt, > 0: it helped
    top: TokenValues  # largest log-prob increases when the feature is removed
    bottom: TokenValues  # largest log-prob decreases when the feature is removed


Hover = DirectHover | ListedHover


@dataclass
class Example:
    """A context window around one selected (sequence, position)."""

    seq: int  # sequence index in the tokenised dataset
    pos: int  # position of the selected activation within the sequence
    start: int  # position of the first shown token
    token_ids: list[int]  # [window]
    acts: list[float]  # [window] feature activation at each shown token (0 where not counted: BOS, NaN/inf)
    # [window] None where the activation is 0 or there is no next token to predict
    hovers: list[Hover | None]


@dataclass
class IntervalGroup:
    """An activation interval (lower, upper] and random examples from it; or, as
    ``FeatureData.negative``, [lower = most negative, upper = 0) and the most negative examples."""

    lower: float  # exclusive (negative group: inclusive)
    upper: float  # inclusive (negative group: exclusive)
    fraction: float  # share of all non-zero activations inside
    examples: list[Example]


@dataclass
class Ranked:
    """Top-k other indices (hook dimensions or features) with a score, and an optional second score."""

    ids: list[int]
    values: list[float]
    extra: list[float] = field(default_factory=list)  # e.g. cosine beside Pearson, or L1 share


@dataclass
class SequenceActivations:
    """A feature over one whole sequence: its non-zero activations (every other position is 0,
    ignored positions such as BOS included)."""

    seq: int
    positions: list[int]  # ascending
    values: list[float]


@dataclass
class NeuronRecords:
    """What neuron-explainer's NeuronRecord holds, over every counted token of the dataset:
    moments of the activation (zeros included; population variance, skewness as the third
    standardised moment, kurtosis as the fourth minus 3), the ``top`` sequences by their largest
    activation (ties: the earlier sequence), a seeded ``random`` sample of sequences, and the
    sequences' largest activations cut at ``quantile_boundaries`` (the records config's quantiles
    of them, linear interpolation) with a seeded sample per bin (``by_quantile``: below the first
    boundary, between boundaries, from the last one)."""

    mean: float
    variance: float
    skewness: float
    kurtosis: float
    top: list[SequenceActivations]
    random: list[SequenceActivations]
    quantile_boundaries: list[float]
    by_quantile: list[list[SequenceActivations]]

    def sequences(self) -> set[int]:
        return {r.seq for r in (*self.top, *self.random, *(r for b in self.by_quantile for r in b))}


@dataclass
class FeatureData:
    dictionary: str
    feature: int
    dead: bool  # never > 0 on the counted tokens
    n_tokens: int  # counted tokens (ignored positions and NaN/inf excluded)
    n_nonfinite: int  # positions whose activation was NaN/inf (excluded)
    n_active: int  # counted tokens with activation > 0 (density = n_active / n_tokens, exactly)
    density: float  # fraction of counted tokens with activation > 0 (4 significant digits)
    max_act: float
    mean_nonzero_act: float
    act_histogram: Histogram  # over non-zero activations
    top_examples: list[Example]
    intervals: list[IntervalGroup]  # equal-width over (0, max]
    negative: IntervalGroup | None  # most-negative activations, for dictionaries that can go negative
    logit_top: TokenValues  # decoder direction through the unembedding
    logit_bottom: TokenValues
    logit_histogram: Histogram  # over the whole vocabulary
    neuron_alignment: Ranked  # hook dims by |decoder value|; extra = share of the L1 norm
    correlated_neurons: Ranked  # hook dims by Pearson r; extra = cosine similarity
    correlated_features: Ranked  # features of the whole dictionary by Pearson r
    decoder_neighbours: Ranked  # features by cosine similarity of decoder directions
    # tokens most often at the positions of the feature's top 1% positive activations (at least
    # top_examples positions; ties in activation by position); values = counts
    top_tokens: TokenValues
    # the logit effects u at the tokens direct hovers list: the hover_top lowest (u ascending),
    # then the hover_top highest (u descending), 7 significant digits; empty without direct hovers
    hover_basis: TokenValues = field(default_factory=lambda: TokenValues([], []))
    records: NeuronRecords | None = None  # neuron-explainer's record data (sitegen export)

    def examples(self) -> list[Example]:
        """Every shown example: top, intervals, negative."""
        groups = [*self.intervals, *([self.negative] if self.negative else [])]
        return [*self.top_examples, *(ex for g in groups if g is not None for ex in g.examples)]

    def token_ids(self) -> set[int]:
        """Every token id the feature's page shows (``tokens.json`` must have their texts)."""
        ids = {
            *self.top_tokens.token_ids,
            *self.logit_top.token_ids,
            *self.logit_bottom.token_ids,
            *self.hover_basis.token_ids,
        }
        for ex in self.examples():
            ids.update(ex.token_ids)
            for h in ex.hovers:
                if isinstance(h, ListedHover):
                    ids.update(h.top.token_ids, h.bottom.token_ids)
        return ids


@dataclass
class DictionarySummary:
    name: str
    kind: str  # "sae" | "neurons" | "attention_heads"
    hook_name: str
    d_in: int  # attention heads: d_head
    d_sae: int  # attention heads: len(layers) * heads per layer
    feature_ids: list[int]  # the features built into the site
    effects: str  # "direct" | "exact" | "none"
    norm_note: str  # how the final norm is handled for logit/loss effects, shown on pages
    layers: list[int] = field(default_factory=list)  # attention heads, imported records: the layers, in id order

    def head_of(self, feature: int) -> tuple[int, int]:
        """(layer, head) of an attention-head dictionary's id; (layer, index) of an imported
        NeuronRecord folder's (ids are numbered alike: layer slot x per-layer size + index)."""
        per_layer = self.d_sae // len(self.layers)
        return self.layers[feature // per_layer], feature % per_layer

    def layer(self) -> int | None:
        """The one layer a dictionary reads (None: several or none)."""
        if self.layers:
            return self.layers[0] if len(self.layers) == 1 else None
        return hook_layer(self.hook_name)
