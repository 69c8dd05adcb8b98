"""Dataset -> fixed-length token windows.

Text sources (.txt/.md/.py and other text files, one document per file; JSONL with
a text field, one document per line; an HF dataset when the hub is reachable) are
tokenised per document and cut into full windows of ``context_length`` tokens (BOS
first when ``prepend_bos``); a document's tail shorter than a window is dropped.
Pre-tokenised ``.npy``/``.pt`` arrays ([n, ctx] or a 1-D stream) are cut the same way.
Documents are shuffled with ``dataset.seed`` and windows taken until ``max_tokens``,
at most ``dataset.max_document_share`` of them from any one document (no cap when
there is a single document); when that cap leaves the dataset short of ``max_tokens``,
``TokenData.notice`` says so.
"""

from __future__ import annotations

import glob
import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sitegen.config import Config, DatasetConfig
from sitegen.errors import SitegenError

TOKEN_SUFFIXES = (".npy", ".pt")


@dataclass
class TokenData:
    tokens: torch.Tensor  # [n_seq, ctx] int64
    ignore: torch.Tensor  # [n_seq, ctx] bool: positions left out of every statistic (BOS)
    n_documents: int  # documents that contributed at least one window
    notice: str | None = None  # one line when dataset.max_document_share left the dataset short


def matched_files(cfg: Config) -> list[Path]:
    files: list[Path] = []
    for i, pattern in enumerate(cfg.dataset.paths):
        full = str(cfg.resolve(pattern))
        hits = sorted(Path(p) for p in glob.glob(full, recursive=True) if Path(p).is_file())
        if not hits:
            raise SitegenError(f"dataset.paths[{i}]: no file matches {full}")
        files.extend(hits)
    return files


def read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SitegenError(f"{path}: not UTF-8 text (undecodable byte at offset {err.start})") from None


def text_documents(cfg: Config, files: list[Path]) -> Iterator[str]:
    field = cfg.dataset.text_field
    for path in files:
        if path.suffix == ".jsonl":
            for n, line in enumerate(read_text(path).splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise SitegenError(f"{path}:{n}: invalid JSON ({err.msg})") from None
                if not isinstance(record, dict) or not isinstance(record.get(field), str):
                    raise SitegenError(f"{path}:{n}: no string field '{field}' (dataset.text_field)")
                yield record[field]
        else:
            yield read_text(path)


def hf_documents(cfg: Config) -> Iterator[str]:
    from sitegen.sources.model import hub_reachable

    if not hub_reachable():
        raise SitegenError(f"dataset.hf_name: '{cfg.dataset.hf_name}' needs the Hugging Face hub, which is unreachable")
    try:
        import datasets
    except ModuleNotFoundError:
        raise SitegenError(
            'dataset.hf_name: needs the datasets package: pip install "sitegen-dashboards[hub]"'
        ) from None
    stream = datasets.load_dataset(cfg.dataset.hf_name, split=cfg.dataset.hf_split, streaming=True)
    for record in stream:
        yield record[cfg.dataset.text_field]


def token_array(path: Path) -> np.ndarray:
    try:
        arr = np.load(path) if path.suffix == ".npy" else torch.load(path, weights_only=True)
    except Exception as err:
        raise SitegenError(f"{path}: cannot read token array ({type(err).__name__}: {err})") from None
    arr = np.asarray(arr.numpy() if isinstance(arr, torch.Tensor) else arr)
    if arr.ndim not in (1, 2) or not np.issubdtype(arr.dtype, np.integer):
        raise SitegenError(f"{path}: expected a 1-D or 2-D integer token array, got {arr.dtype}{list(arr.shape)}")
    return arr


def windows_of(ids: list[int] | np.ndarray, size: int) -> list[list[int]]:
    return [list(map(int, ids[i : i + size])) for i in range(0, len(ids) - size + 1, size)]


def load_tokens(cfg: Config, tokenizer, bos_id: int | None, d_vocab: int) -> TokenData:
    ds = cfg.dataset
    ctx = ds.context_length
    bos = ds.prepend_bos and bos_id is not None
    size = ctx - 1 if bos else ctx
    max_windows = ds.max_tokens // ctx
    rng = random.Random(ds.seed)
    files = matched_files(cfg) if ds.paths else []
    arrays = [f for f in files if f.suffix in TOKEN_SUFFIXES]
    if arrays and len(arrays) != len(files):
        raise SitegenError("dataset.paths: mix of token arrays and text files; use one kind")
    if arrays:
        docs: list = []
        for f in arrays:
            arr = token_array(f)
            docs.extend(arr if arr.ndim == 2 else [arr])
    else:
        if tokenizer is None:
            raise SitegenError("dataset.paths: text needs a tokenizer, and the model has none")
        docs = list(text_documents(cfg, files) if files else _take(hf_documents(cfg), max_windows * 4))
    if not docs:
        raise SitegenError("dataset: no documents found (empty dataset)")
    order = list(range(len(docs)))
    rng.shuffle(order)
    per_doc = document_cap(max_windows=max_windows, share=ds.max_document_share, n_docs=len(docs))
    windows: list[list[int]] = []
    used, longest, capped = 0, 0, 0
    for i in order:
        doc = docs[i]
        ids = doc if not isinstance(doc, str) else tokenizer(doc, add_special_tokens=False)["input_ids"]
        longest = max(longest, len(ids))
        got = windows_of(ids, size)
        if len(got) > per_doc:
            capped += 1
            got = [got[j] for j in sorted(rng.sample(range(len(got)), per_doc))]
        used += bool(got)
        windows.extend(got)
        if len(windows) >= max_windows:
            break
    if not windows:
        raise SitegenError(
            f"dataset: all {len(docs)} documents are shorter than one context window of {size} tokens "
            f"(longest has {longest}); lower dataset.context_length or add data"
        )
    notice = None
    if capped and len(windows) < max_windows:
        notice = cap_notice(ds=ds, taken=len(windows), asked=max_windows, capped=capped, per_doc=per_doc)
    windows = windows[:max_windows]
    rng.shuffle(windows)
    tokens = torch.tensor(windows, dtype=torch.int64)
    if int(tokens.max()) >= d_vocab or int(tokens.min()) < 0:
        raise SitegenError(f"dataset: token id {int(tokens.max())} is outside the model's vocabulary ({d_vocab})")
    ignore = torch.zeros_like(tokens, dtype=torch.bool)
    if bos_id is not None and bos:
        tokens = torch.cat([torch.full((len(tokens), 1), bos_id), tokens], dim=1)
        ignore = torch.cat([torch.full((len(tokens), 1), cfg.features.ignore_bos), ignore], dim=1)
    return TokenData(tokens=tokens, ignore=ignore, n_documents=used, notice=notice)


def document_cap(*, max_windows: int, share: float, n_docs: int) -> int:
    """Most windows one document may give: ``share`` of them (so a small cap still sees
    many documents), rounded up; a single document is not capped."""
    if n_docs == 1:
        return max_windows
    return max(1, math.ceil(max_windows * share))


def cap_notice(*, ds: DatasetConfig, taken: int, asked: int, capped: int, per_doc: int) -> str:
    return (
        f"dataset: {taken * ds.context_length} of max_tokens {ds.max_tokens} tokens ({taken} of {asked} windows): "
        f"{capped} document(s) had more than the {per_doc} windows dataset.max_document_share "
        f"({ds.max_document_share:g}) allows each; raise it (1 = no cap) or add documents"
    )


def _take(it: Iterator[str], n: int) -> list[str]:
    return [doc for _, doc in zip(range(n), it)]
