"""Rebuild data/neuron-records/, the NeuronRecord folder the default site imports
(``kind: neuron_records``, pages without a model): neurons of a layer the default site does not
build, from the embedded Gemma-3-270M over the bundled corpus, written by sitegen's own build
and ``neuron-records`` export (so the files are exactly what ``sitegen export`` writes).

Usage: python scripts/make_record_sample.py [--layer 12] [--neurons 0:8]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "data" / "neuron-records"


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", type=int, default=12)
    parser.add_argument("--neurons", default="0:8")
    args = parser.parse_args()
    from sitegen.cache.manifest import read_manifest
    from sitegen.compute import build_feature_cache
    from sitegen.config import load_config
    from sitegen.export import ExportInput, export_to
    from sitegen.sources import load_sources

    name = f"gemma3-270m-mlp-l{args.layer}"
    with tempfile.TemporaryDirectory(prefix="sitegen-records-") as tmp:
        raw = {
            "model": {"name": "embedded"},
            "dictionaries": [{"name": name, "kind": "neurons", "layer": args.layer, "features": args.neurons}],
            "dataset": {"paths": [str(ROOT / "data" / "corpus" / "corpus.jsonl")], "max_tokens": 16384},
            "features": {"effects": "none"},  # records need no effects
            "records": {"top": 8, "random": 6, "per_quantile": 2},  # small files: 8 x ~40 KB
            "cache": str(Path(tmp) / "cache"),
        }
        config = Path(tmp) / "site_config.yaml"
        config.write_text(yaml.safe_dump(raw, sort_keys=False))
        cfg = load_config(config)
        cache = cfg.resolve(cfg.cache)
        build_feature_cache(load_sources(cfg), cache)
        export = export_to("neuron-records", ExportInput.read(cache, cfg, read_manifest(cache)), Path(tmp) / "export")
        shutil.rmtree(OUT / name, ignore_errors=True)
        shutil.copytree(export / name, OUT / name)
    print(f"wrote {sum(1 for _ in (OUT / name).rglob('*.json'))} NeuronRecords to {OUT / name}")


if __name__ == "__main__":
    main()
