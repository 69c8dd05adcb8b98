"""site_config.yaml -> typed dataclasses, one small config class per component.

Every problem becomes one ``SitegenError`` line naming the file, the key and what
is wrong (unknown keys get the closest valid key suggested). Relative paths are
resolved against the config file's folder.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from sitegen.errors import SitegenError


@dataclass
class ModelConfig:
    name: str = "embedded"  # "embedded" | a TransformerLens name | a local checkpoint folder
    architecture: str | None = None  # HF class of a local HF checkpoint (default: its config.json's)
    device: str = "cpu"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"


@dataclass
class DictionaryConfig:
    name: str
    kind: Literal["sae", "neurons", "attention_heads", "neuron_records"] = "sae"
    # kind sae: a SAELens-format folder (cfg.json + sae_weights.safetensors); kind neuron_records:
    # a folder of NeuronRecord files <layer>/<index>.json (sitegen/imports.py), no model needed
    path: str | None = None
    release: str | None = None  # SAELens release + id (needs the hub)
    id: str | None = None
    layer: int | None = None  # neurons: the MLP layer; attention_heads: one layer; neuron_records: one of the folder's
    layers: list[int] | str | None = None  # for kind: attention_heads, several layers, or "all"
    features: list[int] | str | None = None  # ids, or "start:stop"; default all


@dataclass
class DatasetConfig:
    paths: list[str] = field(default_factory=list)  # files or globs: .txt .md .py .jsonl .npy .pt
    hf_name: str | None = None  # a hub dataset (needs the hub)
    hf_split: str = "train"
    text_field: str = "text"  # JSONL / HF field holding the text
    context_length: int = 128
    max_tokens: int = 65536
    prepend_bos: bool = True
    seed: int = 0
    max_document_share: float = 0.0625  # most of the windows one document may give (1 = no cap)


@dataclass
class FeaturesConfig:
    """How the feature data is computed (defaults as in the issue tracker's spec)."""

    feature_batch_size: int = 256
    token_batch_size: int = 32  # sequences per model pass batch
    activation_cache_mb: int = 2048  # memory for hook activations + activation stores; beyond: memmaps
    histogram_bins: int = 40
    top_examples: int = 20
    context_before: int = 5
    context_after: int = 5
    whole_sequence: bool = False  # show whole sequences instead of windows
    n_intervals: int = 10
    examples_per_interval: int = 5
    negative_examples: int = 10  # the most negative activations, for dictionaries that can go negative
    logit_top: int = 10
    logit_histogram_bins: int = 40
    hover_top: int = 5
    effects: Literal["direct", "exact", "none"] = "direct"
    n_related: int = 3  # neuron alignment / correlated neurons / correlated features
    n_neighbours: int = 5
    n_top_tokens: int = 5
    ignore_bos: bool = True


@dataclass
class RecordsConfig:
    """NeuronRecord data of each feature (neuron-explainer's layout; ``sitegen export``)."""

    top: int = 20  # sequences with the largest activation: a multiple of 4 (train / calibration / valid / test)
    random: int = 21  # seeded sample of sequences: a multiple of 3 (calibration / valid / test)
    quantiles: list[float] = field(default_factory=lambda: [0.5, 0.9, 0.99, 0.999])  # of sequences' max activations
    per_quantile: int = 5  # seeded sample of sequences per quantile bin


@dataclass
class HeadsConfig:
    """Attention-head records (dictionaries of kind ``attention_heads``)."""

    top_records: int = 12  # distinct sequences with the largest pair scalar (a multiple of 4: NeuronRecord splits)
    random_records: int = 6  # seeded sample of sequences (a multiple of 3)
    top_keys: int = 8  # keys kept per shown query token (the rest is summed)
    rank_by: Literal["write_norm", "pattern"] = "write_norm"  # the pair scalar top records are ranked by


@dataclass
class PromptConfig:
    """A prompt page: the metric is the logit difference target - distractor at ``position``, or
    the target's negative log-prob there without a distractor."""

    text: str
    target: str  # one token's text, e.g. " Paris"
    distractor: str | None = None  # one token's text
    position: int | None = None  # token position (BOS counted; negative: from the end); default the last
    note: str | None = None  # Markdown shown on the prompt's page (sanitised)


@dataclass
class AttributionConfig:
    """The prompt pages' node tables."""

    nodes: int = 100  # rows kept: the top this many by each of |act x grad|, |direct|, write norm, |activation|
    ablations: int = 20  # top nodes by |act x grad| re-run zero-ablated
    traced: int = 3  # top nodes traced one step upstream
    upstream: int = 10  # upstream nodes shown per traced node


@dataclass
class SiteConfig:
    title: str = "sitegen dashboards"
    pages: str | None = None  # folder of Markdown site pages (pages/*.md)
    notes: str | None = None  # YAML: {dictionary: {feature_id: markdown}}
    # explanation files or folders, each a path or {path, format, dictionary} (render/explanations.py)
    explanations: list[str | dict[str, Any]] = field(default_factory=list)
    # formats also written inside the site, at export/<format>/ (sitegen.export.FORMATS)
    export: list[Literal["neuron-records", "neuronpedia"]] = field(default_factory=list)


@dataclass
class ExecutorConfig:
    """Where the build runs (``compute/executors.py``). The work is cut the same way on every
    executor: ``token_shards`` ranges of sequences (each its own model pass and encode; it
    decides the order of the streamed float64 sums, so it is a key of the cache), and
    ``feature_shards`` groups of feature batches. Only the executor's own settings (kind,
    address, resources, workers, storage) leave the cache's bytes unchanged."""

    kind: Literal["local", "ray"] = "local"
    address: str | None = None  # ray: "auto", "ray://host:port", or absent: start a local instance
    token_shards: int = 1
    feature_shards: int = 1
    workers: int | None = None  # ray: actors (default: as many as the cluster's CPUs allow, at most the shards)
    num_cpus: float = 1.0  # ray: per actor
    num_gpus: float = 0.0  # ray: per actor
    storage: str | None = None  # shard outputs, on a folder every node reads and writes (default: in the cache)


@dataclass
class Config:
    dictionaries: list[DictionaryConfig]
    dataset: DatasetConfig = field(default_factory=DatasetConfig)  # not needed when nothing needs the model
    model: ModelConfig = field(default_factory=ModelConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    records: RecordsConfig = field(default_factory=RecordsConfig)
    prompts: list[PromptConfig] = field(default_factory=list)
    attribution: AttributionConfig = field(default_factory=AttributionConfig)
    site: SiteConfig = field(default_factory=SiteConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    out: str = "site"
    cache: str = ".sitegen-cache"  # feature-data cache (resumable builds; `sitegen render` reads it)
    seed: int = 0
    path: Path = field(default=Path("site_config.yaml"), metadata={"internal": True})

    def needs_model(self) -> bool:
        """Whether the build runs the model: every kind but imported NeuronRecords does, and prompts do."""
        return bool(self.prompts) or any(d.kind != "neuron_records" for d in self.dictionaries)

    def resolve(self, relative: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        p = Path(relative).expanduser()
        return p if p.is_absolute() else (self.path.parent / p)


POSITIVE = {
    "context_length",
    "max_tokens",
    "feature_batch_size",
    "token_batch_size",
    "activation_cache_mb",
    "histogram_bins",
    "top_examples",
    "n_intervals",
    "logit_top",
    "logit_histogram_bins",
    "hover_top",
    "n_related",
    "n_neighbours",
    "n_top_tokens",
    "top_records",
    "top_keys",
    "nodes",
    "upstream",
    "token_shards",
    "feature_shards",
    "workers",
}
NON_NEGATIVE = {
    "context_before",
    "context_after",
    "examples_per_interval",
    "negative_examples",
    "layer",
    "seed",
    "random_records",
    "ablations",
    "traced",
    "top",
    "random",
    "per_quantile",
}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return {str: "a string", int: "an integer", bool: "true/false", float: "a number"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except SitegenError:
                continue
        raise SitegenError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise SitegenError(f"{where}: must be one of {_type_name(tp)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise SitegenError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        return [_coerce(v, typing.get_args(tp)[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass_from(tp, value, where)
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(tp, True)
    if not ok:
        raise SitegenError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return float(value) if tp is float else value


def _dataclass_from(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise SitegenError(f"{where}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (valid: {', '.join(fields)})"
            raise SitegenError(f"{where}.{key}: unknown key{hint}")
        value = _coerce(value, hints[key], f"{where}.{key}")
        if key in POSITIVE and isinstance(value, int) and value <= 0:
            raise SitegenError(f"{where}.{key}: must be > 0, got {value}")
        if key in NON_NEGATIVE and isinstance(value, int) and value < 0:
            raise SitegenError(f"{where}.{key}: must be >= 0, got {value}")
        kwargs[key] = value
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise SitegenError(f"{where}: missing required key '{missing[0]}'")
    return cls(**kwargs)


def _check(cfg: Config, where: str) -> None:
    if not cfg.dictionaries:
        raise SitegenError(f"{where}.dictionaries: name at least one dictionary")
    seen: set[str] = set()
    for i, d in enumerate(cfg.dictionaries):
        key = f"{where}.dictionaries[{i}]"
        if d.name in seen:
            raise SitegenError(f"{key}.name: duplicate dictionary name '{d.name}'")
        seen.add(d.name)
        if d.kind == "neurons" and d.layer is None:
            raise SitegenError(f"{key}.layer: kind 'neurons' needs the MLP layer")
        if d.kind == "attention_heads":
            if (d.layer is None) == (d.layers is None):
                raise SitegenError(f"{key}: kind 'attention_heads' needs 'layer' (one) or 'layers' (a list or \"all\")")
            if isinstance(d.layers, str) and d.layers != "all":
                raise SitegenError(f'{key}.layers: expected a list of layers or "all", got {d.layers!r}')
            if isinstance(d.layers, list) and (not d.layers or min(d.layers) < 0):
                raise SitegenError(f"{key}.layers: expected layers >= 0, got {d.layers!r}")
        elif d.layers is not None:
            raise SitegenError(f"{key}.layers: only kind 'attention_heads' takes 'layers'")
        if d.kind == "neuron_records" and not d.path:
            raise SitegenError(f"{key}.path: kind 'neuron_records' needs 'path' (a folder of <layer>/<index>.json)")
        if d.kind == "neuron_records" and (d.release or d.id):
            raise SitegenError(f"{key}: kind 'neuron_records' reads 'path' only (no 'release'/'id')")
        if d.kind == "sae" and not d.path and not (d.release and d.id):
            raise SitegenError(f"{key}: kind 'sae' needs 'path' (SAELens folder) or 'release' + 'id'")
        if d.path and not cfg.resolve(d.path).is_dir():
            raise SitegenError(f"{key}.path: folder not found: {cfg.resolve(d.path)}")
        if isinstance(d.features, str):
            parts = d.features.split(":")
            if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
                raise SitegenError(f"{key}.features: expected ids or 'start:stop', got {d.features!r}")
    rc = cfg.records
    if rc.top % 4:
        raise SitegenError(f"{where}.records.top: {rc.top} is not a multiple of 4 (neuron-explainer's 4 splits)")
    if rc.random % 3:
        raise SitegenError(f"{where}.records.random: {rc.random} is not a multiple of 3 (neuron-explainer's 3 splits)")
    hc = cfg.heads  # a head's NeuronRecord export holds its page's records
    if hc.top_records % 4:
        raise SitegenError(
            f"{where}.heads.top_records: {hc.top_records} is not a multiple of 4 (neuron-explainer's 4 splits)"
        )
    if hc.random_records % 3:
        raise SitegenError(
            f"{where}.heads.random_records: {hc.random_records} is not a multiple of 3 (neuron-explainer's 3 splits)"
        )
    if any(not 0 < q < 1 for q in rc.quantiles) or rc.quantiles != sorted(set(rc.quantiles)):
        raise SitegenError(f"{where}.records.quantiles: expected increasing values in (0, 1), got {rc.quantiles}")
    for i, pc in enumerate(cfg.prompts):
        if not pc.text.strip():
            raise SitegenError(f"{where}.prompts[{i}].text: the prompt is empty")
        if not pc.target:
            raise SitegenError(f"{where}.prompts[{i}].target: give the target token's text")
    ex = cfg.executor
    if ex.num_cpus < 0 or ex.num_gpus < 0:
        raise SitegenError(f"{where}.executor: num_cpus and num_gpus must be >= 0, got {ex.num_cpus}, {ex.num_gpus}")
    ds = cfg.dataset
    if cfg.needs_model() and not ds.paths and not ds.hf_name:
        raise SitegenError(f"{where}.dataset: give 'paths' (local files) or 'hf_name'")
    if ds.max_tokens < ds.context_length:
        raise SitegenError(
            f"{where}.dataset.max_tokens: {ds.max_tokens} is below one context window ({ds.context_length} tokens)"
        )
    if not 0 < ds.max_document_share <= 1:
        raise SitegenError(
            f"{where}.dataset.max_document_share: must be > 0 and <= 1 (the fraction of the windows "
            f"one document may give; 1 = no cap), got {ds.max_document_share}"
        )
    for key in ("pages", "notes"):
        value = getattr(cfg.site, key)
        if value and not cfg.resolve(value).exists():
            raise SitegenError(f"{where}.site.{key}: not found: {cfg.resolve(value)}")
    out = cfg.resolve(cfg.out)
    if out.exists() and not out.is_dir():
        raise SitegenError(f"{where}.out: {out} exists and is not a folder")


def feature_ids(spec: list[int] | str | None, d_sae: int, where: str) -> list[int]:
    """The ids a dictionary's ``features:`` selects among ``d_sae`` (default: all)."""
    if spec is None:
        return list(range(d_sae))
    if isinstance(spec, str):
        start, stop = (int(p) for p in spec.split(":"))
        ids = list(range(start, min(stop, d_sae) if stop > start else start))
        if start >= d_sae or not ids:
            raise SitegenError(f"{where}.features: range {spec!r} is empty or outside 0..{d_sae - 1}")
        return ids
    bad = [i for i in spec if not 0 <= i < d_sae]
    if bad:
        raise SitegenError(f"{where}.features: id {bad[0]} is out of range 0..{d_sae - 1}")
    return sorted(set(spec))


def load_config(path: str | Path) -> Config:
    """Parse and check a site config; raises SitegenError with a one-line message."""
    path = Path(path)
    if not path.is_file():
        raise SitegenError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise SitegenError(f"{path}: YAML syntax error{at}: {problem}") from None
    except UnicodeDecodeError as err:
        raise SitegenError(f"{path}: not UTF-8 text ({err.reason})") from None
    where = path.name
    if raw is None:
        raise SitegenError(f"{where}: the config is empty")
    cfg = _dataclass_from(Config, raw, where)
    cfg.path = path.resolve()
    _check(cfg, where)
    return cfg
