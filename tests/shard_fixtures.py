"""Tiny sharded projects and helpers shared by the executor tests."""

from __future__ import annotations

from pathlib import Path

import yaml
from fixtures import write_project

from sitegen.compute import build_feature_cache
from sitegen.config import load_config
from sitegen.render import render_site
from sitegen.sources import load_sources


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def sharded_project(root: Path, seed: int, effects: str = "direct") -> Path:
    """SAE, neurons and attention heads of a tiny model; 24 sequences in 6 model batches, cut
    into 3 token shards; 7 feature batches in 2 feature shards."""
    config = write_project(root, seed=seed, n_seq=24)
    cfg = yaml.safe_load(config.read_text())
    cfg["dictionaries"].append({"name": "heads", "kind": "attention_heads", "layers": "all"})
    cfg["features"].update({"token_batch_size": 4, "feature_batch_size": 12, "effects": effects})
    cfg["executor"] = {"token_shards": 3, "feature_shards": 2}
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return config


def local_build(config: Path, name: str) -> tuple[dict, dict]:
    cfg = load_config(config)
    root = config.parent / name
    build_feature_cache(load_sources(cfg), root / "cache", progress=False)
    render_site(root / "cache", cfg, root / "site", workers=1)
    return tree(root / "cache"), tree(root / "site")


class StopAfter:
    """An executor that stops the build after one stage (as Ctrl-C would)."""

    def __init__(self, inner, stage: str):
        self.inner, self.stage = inner, stage

    def map(self, name, fn, bp, items, progress):
        out = self.inner.map(name, fn, bp, items, progress)
        if name == self.stage:
            raise KeyboardInterrupt
        return out
