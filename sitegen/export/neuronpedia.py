"""Neuronpedia's import layout: the ``batch-<n>.json`` files SAEDashboard's Neuronpedia runner
writes (``sae_dashboard/neuronpedia``: ``NeuronpediaDashboardBatch`` / ``...Feature`` /
``...Activation``), which Neuronpedia's converter (``convert-saedashboard-to-neuronpedia-export``)
imports. Every value is the cache's, with its meaning kept; where SAEDashboard's field holds
something else than its name says, or SAEDashboard rounds, the README's "Exporting" section
says what the field holds here.

Layout: ``<dict index>/batch-<n>.json`` for each SAE or neuron dictionary; batch ``n`` holds
the built features with ids ``n * BATCH_SIZE`` to ``(n + 1) * BATCH_SIZE - 1``, by id (for a
dictionary built whole this is SAEDashboard's split). Attention-head dictionaries (no
Neuronpedia layout) and dictionaries whose hook has no layer number are skipped with a
message. Files are sorted-key JSON (orjson), the same bytes on every run::

    {"model_id": str, "layer": int, "sae_set": <dictionary name>, "sae_id_suffix": null,
     "features": [<feature>, ...]}
    feature = {"feature_index": int,
      "neuron_alignment_indices" / "_values" / "_l1": hook dims by |decoder value|, the signed
          value, |value| / the decoder row's L1 norm,
      "correlated_neurons_indices" / "_pearson" / "_l1": hook dims by Pearson r of the
          activations; "_l1" holds the cosine similarity of the activation vectors,
      "correlated_features_indices" / "_pearson" / "_l1": features by Pearson r; "_l1" holds
          the cached second score (cosine similarity) where there is one, else [],
      "neg_str" / "neg_values", "pos_str" / "pos_values": the bottom / top logit effects,
      "frac_nonzero": the exact density n_active / n_tokens (``frac_nonzero``),
      "freq_hist_data_bar_values" / "_heights": the activation histogram's bin centres and
          counts (over the non-zero activations); "logits_hist_data_bar_values" / "_heights":
          the logit-effect histogram's,
      "n_prompts_total", "n_tokens_in_prompt", "dataset": the dataset's sequences, their
          length and its name,
      "decoder_weights_dist": [], "vector": [],
      "activations": [<activation>, ...]}   # the top examples, then each interval's, highest first
    activation = {"bin_min", "bin_max", "bin_contains", "tokens", "values", "qualifying_token_index"}

Token strings are each token decoded alone (``token_strings.json``; a cache without it: the
pages' display texts).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from decimal import Decimal
from pathlib import Path

from sitegen.cache.feature_data import DictionarySummary, Example, FeatureData, Histogram, Ranked
from sitegen.cache.files import STRINGS_FILE, dumps, read_features, read_token_strings
from sitegen.cache.head_data import HEADS_KIND
from sitegen.cache.record_data import RECORDS_KIND
from sitegen.errors import SitegenError
from sitegen.export import ExportInput
from sitegen.report import log

BATCH_SIZE = 128  # SAEDashboard's NeuronpediaRunnerConfig.n_features_at_a_time default
EMBEDDED_MODEL_ID = "gemma-3-270m"  # Neuronpedia's id of the model `model: embedded` builds
TOP = -1  # SAEDashboard's bin_min and bin_contains of the top activations


def skip_reason(summary: DictionarySummary) -> str | None:
    """Why a dictionary has no Neuronpedia batches (None: it has)."""
    if summary.kind == HEADS_KIND:
        return "attention heads have no Neuronpedia layout"
    if summary.kind == RECORDS_KIND:
        return "imported NeuronRecords lack the logit effects, histograms and correlations Neuronpedia's fields hold"
    if summary.layer() is None:
        return f"hook {summary.hook_name} has no layer number, which Neuronpedia's layout needs"
    return None


def feature_path(summary: DictionarySummary, dict_index: int, feature: int) -> str | None:
    return None if skip_reason(summary) else f"{dict_index}/batch-{feature // BATCH_SIZE}.json"


def round4(x: float) -> float:
    """``x`` to 4 significant digits exactly as the engine rounds what it caches
    (``compute.rounding.round_sig``, which needs torch: the same float64 steps)."""
    if x == 0 or not math.isfinite(x):
        return x
    mag = abs(x)
    exp = min(max(math.floor(math.log10(mag)), -330), 308)
    exp += int(mag >= float(f"1e{exp + 1}")) - int(mag < float(f"1e{exp}"))
    shift = 3 - exp
    if abs(shift) > 22:
        return float(f"{x:.4g}")
    scale = float(f"1e{abs(shift)}")
    return round(x * scale) / scale if shift >= 0 else round(x / scale) * scale


def frac_nonzero(fd: FeatureData) -> float:
    """The exact density: the counted positions with an activation > 0 over the counted tokens."""
    return fd.n_active / fd.n_tokens if fd.n_tokens else 0.0


def bin_centres(h: Histogram) -> tuple[list[float], list[int]]:
    """(bin centres, counts) of a histogram; both empty when it counts nothing (as SAEDashboard
    writes a histogram without data). A centre is the float nearest the exact decimal midpoint
    of the cached edges."""
    if not sum(h.counts):
        return [], []
    mids = [float((Decimal(repr(a)) + Decimal(repr(b))) / 2) for a, b in zip(h.edges, h.edges[1:])]
    return mids, list(h.counts)


def text(texts: dict[int, str], token_id: int) -> str:
    try:
        return texts[token_id]
    except KeyError:
        raise SitegenError(f"feature cache: no text for token id {token_id}; rebuild the cache") from None


def activation(ex: Example, texts: dict[int, str], bin_min: float, bin_max: float, contains: float) -> dict:
    return {
        "bin_min": bin_min,
        "bin_max": bin_max,
        "bin_contains": contains,
        "tokens": [text(texts, t) for t in ex.token_ids],
        "values": ex.acts,
        "qualifying_token_index": ex.pos - ex.start,
    }


def activations(fd: FeatureData, texts: dict[int, str]) -> list[dict]:
    """The top examples (bin_min and bin_contains -1, bin_max the largest activation), then each
    interval's, highest first: (bin_min, bin_max] and the share of the counted tokens inside it.
    (The most negative examples of neurons are left out: the layout has no group for them.)"""
    out = [activation(ex, texts, TOP, fd.max_act, TOP) for ex in fd.top_examples]
    n_nonzero = sum(fd.act_histogram.counts)
    for g in sorted(fd.intervals, key=lambda g: -g.upper):
        contains = round4(g.fraction * n_nonzero / fd.n_tokens) if fd.n_tokens else 0.0
        out += [activation(ex, texts, g.lower, g.upper, contains) for ex in g.examples]
    return out


def ranked(r: Ranked, prefix: str, second: str, third: str) -> dict:
    return {f"{prefix}_indices": r.ids, f"{prefix}_{second}": r.values, f"{prefix}_{third}": r.extra}


def feature_json(fd: FeatureData, texts: dict[int, str], dataset: dict) -> dict:
    act_values, act_heights = bin_centres(fd.act_histogram)
    logit_values, logit_heights = bin_centres(fd.logit_histogram)
    return {
        "feature_index": fd.feature,
        **ranked(fd.neuron_alignment, "neuron_alignment", "values", "l1"),
        **ranked(fd.correlated_neurons, "correlated_neurons", "pearson", "l1"),
        **ranked(fd.correlated_features, "correlated_features", "pearson", "l1"),
        "neg_str": [text(texts, t) for t in fd.logit_bottom.token_ids],
        "neg_values": fd.logit_bottom.values,
        "pos_str": [text(texts, t) for t in fd.logit_top.token_ids],
        "pos_values": fd.logit_top.values,
        "frac_nonzero": frac_nonzero(fd),
        "freq_hist_data_bar_values": act_values,
        "freq_hist_data_bar_heights": act_heights,
        "logits_hist_data_bar_values": logit_values,
        "logits_hist_data_bar_heights": logit_heights,
        **dataset,
        "decoder_weights_dist": [],
        "vector": [],
        "activations": activations(fd, texts),
    }


def model_id(inp: ExportInput) -> str:
    """The config's model name as the manifest records it (a local folder: its name); the
    embedded default is Gemma-3-270M."""
    name = str(inp.manifest.get("provenance", {}).get("model") or Path(inp.config.model.name).name)
    return EMBEDDED_MODEL_ID if name == "embedded" else name


def dataset_fields(inp: ExportInput) -> dict:
    """n_prompts_total (sequences), n_tokens_in_prompt (their length), dataset (its hub name or
    its paths as the config gives them), from the manifest."""
    ds = inp.manifest.get("provenance", {}).get("dataset", {})
    cfg = inp.config.dataset
    name = ds.get("hf_name") or ", ".join(ds.get("paths", [])) or cfg.hf_name or ", ".join(cfg.paths)
    return {
        "n_prompts_total": int(inp.manifest.get("stats", {}).get("n_sequences", ds.get("n_sequences", 0))),
        "n_tokens_in_prompt": int(ds.get("context_length", cfg.context_length)),
        "dataset": name,
    }


def batches(features: Iterable[FeatureData], where: str) -> Iterator[tuple[int, list[FeatureData]]]:
    """(batch number, its features) of features read in id order."""
    current = -1
    group: list[FeatureData] = []
    for fd in features:
        n = fd.feature // BATCH_SIZE
        if n != current:
            if n < current:
                raise SitegenError(f"{where}: features out of id order; rebuild the cache")
            if group:
                yield current, group
            current, group = n, []
        group.append(fd)
    if group:
        yield current, group


def token_strings(inp: ExportInput) -> dict[int, str]:
    """Each token decoded alone, as the tokenizer gives it (``token_strings.json``), what
    SAEDashboard writes (its vocabulary's strings); a cache without them: the pages' display
    texts (``tokens.json``)."""
    return read_token_strings(inp.cache) if (inp.cache / STRINGS_FILE).is_file() else inp.texts


def export(inp: ExportInput, folder: Path) -> None:
    """Every SAE and neuron dictionary's batches under ``folder``."""
    head = {"model_id": model_id(inp), "sae_id_suffix": None}
    dataset, texts = dataset_fields(inp), token_strings(inp)
    for index, summary in enumerate(inp.summaries):
        reason = skip_reason(summary)
        if reason:
            log.info(f"[sitegen] neuronpedia export: '{summary.name}' skipped ({reason})")
            continue
        batch = {**head, "layer": summary.layer(), "sae_set": summary.name}
        where = f"{inp.cache}: '{summary.name}'"
        for n, fds in batches(read_features(inp.cache, index), where):
            path = folder / str(index) / f"batch-{n}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(dumps({**batch, "features": [feature_json(fd, texts, dataset) for fd in fds]}))
