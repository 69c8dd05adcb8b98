"""Rebuild the bundled default corpus, data/corpus/corpus.jsonl, from the Python
standard library of the interpreter that runs this script (made with CPython 3.11.7).

Three kinds of text, all under the PSF License 2.0 (see data/corpus/README.md):
- docs:  the reference-manual topics shipped as ``pydoc_data.topics`` (English prose);
- prose: module docstrings of the standard library (English prose);
- code:  standard-library Python source files.

Usage: python scripts/build_corpus.py [--max-mb 3]
"""

from __future__ import annotations

import argparse
import ast
import json
import sysconfig
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "data" / "corpus" / "corpus.jsonl"
CODE_MODULES = sorted(
    """abc argparse ast base64 bisect calendar cmd codecs collections/__init__ colorsys
    configparser contextlib copy csv dataclasses datetime decimal difflib dis enum
    filecmp fnmatch fractions functools getopt gettext glob graphlib gzip hashlib heapq
    hmac html/parser http/cookies imaplib inspect ipaddress json/decoder json/encoder
    keyword linecache locale logging/__init__ mailbox mimetypes numbers operator
    optparse os pathlib pickle pprint queue quopri random re/_parser reprlib sched
    secrets selectors shlex shutil smtplib socket statistics string struct subprocess
    tarfile tempfile textwrap threading timeit tokenize traceback turtle typing uuid
    warnings wave weakref zipfile zipimport""".split()
)


def documents(max_bytes: int) -> list[dict[str, str]]:
    from pydoc_data.topics import topics

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs = [
        {"source": f"pydoc_data.topics:{name}", "kind": "docs", "text": text.strip()}
        for name, text in sorted(topics.items())
    ]
    prose, code = [], []
    for name in CODE_MODULES:
        path = stdlib / f"{name}.py"
        source = path.read_text(encoding="utf-8")
        doc = ast.get_docstring(ast.parse(source))
        if doc and len(doc) > 200:
            prose.append({"source": f"stdlib:{name}.py docstring", "kind": "prose", "text": doc})
        code.append({"source": f"stdlib:{name}.py", "kind": "code", "text": source})
    out, size = [], 0
    for doc in docs + prose + code:  # code last: the byte cap trims code first
        size += len(doc["text"].encode())
        if size > max_bytes:
            break
        out.append(doc)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-mb", type=float, default=3.0)
    args = parser.parse_args()
    docs = documents(int(args.max_mb * 1e6))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(doc, ensure_ascii=False, sort_keys=True) + "\n")
    kinds = {k: sum(d["kind"] == k for d in docs) for k in ("docs", "prose", "code")}
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB, {len(docs)} documents: {kinds})")


if __name__ == "__main__":
    main()
