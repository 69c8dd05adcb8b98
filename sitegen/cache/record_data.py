"""RecordData: one imported NeuronRecord (``kind: neuron_records``), as plain typed data.

What neuron-explainer's ``NeuronRecord`` holds (``neuron_explainer/activations/activations.py``),
kept exactly as the file gives it (values are not rounded), so that ``sitegen export`` writes the
same record back: whole-window ``ActivationRecord``s (top, random, per quantile) and the moments
its producer computed. A file may hold token-pair records (sitegen's head export, the
neuron-viewer's attention layout): n tokens with n(n+1)/2 scalars, the n-th token's n in order.
Token strings are the file's, shown as text; there are no token ids.
"""

from __future__ import annotations

from dataclasses import dataclass

RECORDS_KIND = "neuron_records"  # DictionarySummary.kind of an imported NeuronRecord folder


@dataclass
class ActivationRecord:
    tokens: list[str]
    activations: list[float]  # [len(tokens)], or [n(n+1)/2] for token-pair records

    def is_pairs(self) -> bool:
        n = len(self.tokens)
        return n > 1 and len(self.activations) == n * (n + 1) // 2

    def token_values(self) -> list[float]:
        """One value per token: its activation, or (token pairs) its largest scalar as a query."""
        if not self.is_pairs():
            return self.activations
        out, start = [], 0
        for n in range(1, len(self.tokens) + 1):
            out.append(max(self.activations[start : start + n]))
            start += n
        return out


@dataclass
class RecordData:
    dictionary: str
    feature: int  # the site id: the layer's place among the folder's layers x per-layer size + index
    layer: int  # neuron_id.layer_index
    index: int  # neuron_id.neuron_index
    source: str  # the file, relative to the dictionary's folder (<layer>/<index>.json)
    top: list[ActivationRecord]  # most_positive_activation_records
    random: list[ActivationRecord]  # random_sample
    by_quantile: list[list[ActivationRecord]] | None  # random_sample_by_quantile
    quantile_boundaries: list[float | None] | None  # None inside: null or NaN in the file (not computed)
    mean: float | None
    variance: float | None
    skewness: float | None
    kurtosis: float | None

    def records(self) -> list[ActivationRecord]:
        return [*self.top, *self.random, *(r for b in self.by_quantile or [] for r in b)]

    def is_pairs(self) -> bool:
        """Whether the records are token-pair records (every non-trivial one is)."""
        return any(r.is_pairs() for r in self.records())

    def max_activation(self) -> float | None:
        """The largest value of any record (the top records hold the largest of the producer's
        dataset); None without records."""
        values = [v for r in self.records() for v in r.activations]
        return max(values) if values else None


def record_from_dict(d: dict) -> ActivationRecord:
    return ActivationRecord(d["tokens"], d["activations"])


def record_data_from_dict(d: dict) -> RecordData:
    by_q = d["by_quantile"]
    return RecordData(
        **{
            **d,
            "top": [record_from_dict(r) for r in d["top"]],
            "random": [record_from_dict(r) for r in d["random"]],
            "by_quantile": None if by_q is None else [[record_from_dict(r) for r in b] for b in by_q],
        }
    )
