"""Whole output folders (a site, an export) written atomically: into a temporary folder next
to the target, moved into place only when complete, so a failure leaves a previous one as it
was."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def replace_folder(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``; an existing ``target`` is renamed aside first and
    deleted only once the new folder is in place."""
    if not target.exists():
        os.rename(new, target)
        return
    old = target.with_name(f".{target.name}.old-{secrets.token_hex(4)}")
    os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_folder(target: Path, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` into a fresh temporary folder next to ``target``, then move it into place
    (``replace_folder``); on any failure the temporary folder is removed and ``target`` is left
    untouched. Returns ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        tmp.chmod(0o755)
        write(tmp)
        replace_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
