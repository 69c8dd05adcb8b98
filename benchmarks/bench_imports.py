"""Benchmark of imported NeuronRecords (``kind: neuron_records``; not a test).

Writes a synthetic folder in OpenAI's public layout (``--layers`` x ``--neurons`` files, each
``--top`` most positive and ``--random`` random records of ``--tokens`` tokens, like the public
GPT-2 records' 20 top + 50 random (here default 20 + 21) x 64 tokens), then times, best of
``--repeats``: the folder scan, the fingerprint (every file's bytes), reading and checking every
file into the cache (``build_record_cache``) and rendering the site (in-process, one worker;
``sitegen build`` uses one per core). No torch is imported. Prints per-file figures and the
extrapolation to OpenAI's GPT-2 XL folder (48 x 6,400 files) as a projection.

    python benchmarks/bench_imports.py                   # the figures in benchmarks/README.md
    python benchmarks/bench_imports.py --layers 4 --neurons 500
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sitegen.config import load_config  # noqa: E402
from sitegen.imports import build_record_cache, record_folders  # noqa: E402
from sitegen.render import render_site  # noqa: E402

WORDS = [" the", " of", " and", " to", " in", ".", ",", " is", " a", "\n", " def", " return", "(", ")"]


def write_folder(root: Path, layers: int, neurons: int, top: int, rand: int, tokens: int) -> int:
    rng = random.Random(0)

    def record() -> dict:
        toks = [rng.choice(WORDS) for _ in range(tokens)]
        acts = [0.0 if rng.random() < 0.8 else round(rng.uniform(0, 5), 4) for _ in toks]
        return {"dataclass_name": "ActivationRecord", "tokens": toks, "activations": acts}

    size = 0
    for layer in range(layers):
        (root / str(layer)).mkdir(parents=True)
        for n in range(neurons):
            rec = {
                "dataclass_name": "NeuronRecord",
                "neuron_id": {"dataclass_name": "NeuronId", "layer_index": layer, "neuron_index": n},
                "random_sample": [record() for _ in range(rand)],
                "most_positive_activation_records": [record() for _ in range(top)],
                "mean": 0.1,
                "variance": 0.5,
                "skewness": 2.0,
                "kurtosis": 9.0,
            }
            data = json.dumps(rec).encode()
            (root / str(layer) / f"{n}.json").write_bytes(data)
            size += len(data)
    return size


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--neurons", type=int, default=250)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--random", type=int, default=21)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="sitegen-bench-imports-") as tmp:
        root = Path(tmp)
        size = write_folder(root / "records", args.layers, args.neurons, args.top, args.random, args.tokens)
        n = args.layers * args.neurons
        raw = {"dictionaries": [{"name": "x", "kind": "neuron_records", "path": "records"}], "out": "site"}
        (root / "site_config.yaml").write_text(yaml.safe_dump(raw))
        cfg = load_config(root / "site_config.yaml")
        scan = best(lambda: record_folders(cfg), args.repeats)
        (folder,) = record_folders(cfg)
        fingerprint = best(folder.fingerprint, args.repeats)
        cache = root / "cache"

        def read_all() -> None:
            for p in cache.glob("features/*/*.json"):
                p.unlink()
            build_record_cache(cfg, [folder], cache)

        read = best(read_all, args.repeats)
        render = best(lambda: render_site(cache, cfg, root / "site", workers=1), args.repeats)
        pages = sorted(p.stat().st_size for p in (root / "site" / "features" / "0").glob("*.html"))
    print(f"{n:,} files ({args.layers} layers x {args.neurons}), {size / n / 1024:.1f} KB each, {size / 2**20:.1f} MB")
    for label, secs in (
        ("scan", scan),
        ("fingerprint", fingerprint),
        ("read + check + cache", read),
        ("render (1 worker)", render),
    ):
        print(f"  {label:22s} {secs:7.3f} s   {secs / n * 1000:7.3f} ms/file")
    kb = [pages[0] / 1024, pages[len(pages) // 2] / 1024, pages[-1] / 1024]
    print(f"  pages {kb[0]:.1f} / {kb[1]:.1f} / {kb[2]:.1f} KB (min / median / max)")
    per_file = scan + fingerprint + read
    print(f"projection, GPT-2 XL's 48 x 6,400 files: scan + fingerprint + read {per_file / n * 307_200 / 60:.1f} min")


if __name__ == "__main__":
    main()
