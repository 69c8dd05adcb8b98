"""PromptData: what one prompt page shows (the transformer-debugger's node table, precomputed),
as plain typed data (no torch).

The metric is the logit difference target - distractor at the chosen position, or, without a
distractor, the target's negative log-prob there (``metric_kind``). Every gradient is of that
metric, with the final norm's scale detached (frozen at its clean value), as the
transformer-debugger does; SAE latents are read through a hook that splices the SAE in with its
error term kept, so the model's output is unchanged.

A node is one unit at one position: an SAE latent or an MLP neuron at a token, or an attention
head's pair (query position, key position), as the transformer-debugger keeps attention heads.
"""

from __future__ import annotations

from dataclasses import dataclass

from sitegen.cache.feature_data import TokenValues

METRICS = ("logit_diff", "neg_log_prob")


@dataclass
class PromptNode:
    dictionary: int  # the dictionary's index in the site (its pages: features/<dictionary>/<feature>.html)
    feature: int  # feature, neuron or head id in that dictionary
    position: int  # token position (an attention head: the query position)
    key: int  # an attention head: the key position; -1 otherwise
    activation: float  # latent / neuron activation; attention head: the attention probability A[query, key]
    act_grad: float  # activation x d metric / d activation
    write_norm: float  # norm of what the node writes into the residual stream (head: ||A v_key W_O||)
    direct: float  # that write . d metric / d final residual stream (the direct effect)


@dataclass
class Ablation:
    """A node zero-ablated at its position (its pair, for a head) in a re-run, SAE error kept."""

    node: int  # index into PromptData.nodes
    change: float  # the metric with the node ablated minus the clean metric
    estimate: float  # the linear estimate of that change: -act_grad


@dataclass
class Upstream:
    """An earlier node (earlier layer, same or earlier position) by its activation x gradient of
    the traced node's activation."""

    node: PromptNode  # its act_grad, write_norm and direct are towards the metric, as in the table
    act_grad: float  # activation x d (traced node's activation) / d activation


@dataclass
class Trace:
    node: int  # index into PromptData.nodes
    upstream: list[Upstream]  # by |act_grad| descending


@dataclass
class PromptData:
    index: int  # the prompt's place in the config's prompts
    slug: str  # prompts/<slug>.html
    text: str
    token_ids: list[int]  # the prompt's tokens (with BOS when the dataset prepends it)
    position: int  # the position whose next-token prediction the metric reads
    target: int  # token id
    distractor: int | None  # token id
    metric_kind: str  # one of METRICS
    metric: float
    top_predictions: TokenValues  # at ``position``: the most likely next tokens, probabilities
    next_tokens: list[TokenValues]  # per position: its top next-token predictions, probabilities
    # per position, per layer: [attention output . gradient, MLP output . gradient] (the summed
    # act x grad of the layer's attention and MLP at that token)
    layer_attribution: list[list[list[float]]]
    nodes: list[PromptNode]  # the kept rows of the node table, by |act_grad| descending
    ablations: list[Ablation]  # the top nodes by |act_grad|
    traces: list[Trace]  # the top nodes by |act_grad| traced one step upstream

    def token_ids_used(self) -> set[int]:
        ids = {*self.token_ids, self.target, *self.top_predictions.token_ids}
        if self.distractor is not None:
            ids.add(self.distractor)
        for tv in self.next_tokens:
            ids.update(tv.token_ids)
        return ids
