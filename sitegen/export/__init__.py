"""Exports: the feature cache in other tools' layouts. Like ``sitegen render``, an export reads
only the cache (no torch, no model).

- ``sitegen export --format F [--out DIR]`` writes one format's files to a folder, built in a
  temporary folder next to it and moved into place when complete (``export_to``); only an
  empty folder or an earlier sitegen export (``MARKER`` at its top) is replaced.
- ``site.export: [F, ...]`` writes them inside the site too, at ``export/<format>/``
  (``write_format``), and each feature page links the file holding it.

A format is a module with two functions: ``export(inp, folder)`` (writes the format's files
under ``folder``; the ``Format`` protocol) and ``feature_path(summary, dict_index, feature)`` (the path,
relative to ``folder``, of the file holding one feature, for the page's "download JSON" link;
None where the format has no file for that dictionary). ``FORMATS`` maps each format's name to
its module, imported on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

from sitegen.cache.feature_data import DictionarySummary
from sitegen.config import Config
from sitegen.errors import SitegenError

# format name -> module (the names ``site.export`` takes, in sitegen/config.py's SiteConfig)
FORMAT_MODULES = {
    "neuron-records": "sitegen.export.neuron_records",
    "neuronpedia": "sitegen.export.neuronpedia",
}
MARKER = ".sitegen-export"  # at the top of every export folder: the format's name


@dataclass
class ExportInput:
    """What every exporter reads: the cache folder, its manifest, the dictionaries' summaries,
    the token texts of ``tokens.json`` and the config."""

    cache: Path
    manifest: dict
    summaries: list[DictionarySummary]
    texts: dict[int, str]
    config: Config

    @classmethod
    def read(cls, cache: Path, cfg: Config, manifest: dict) -> ExportInput:
        from sitegen.cache.files import dictionary_summaries, read_token_table

        return cls(cache, manifest, dictionary_summaries(manifest), read_token_table(cache), cfg)


class Format(Protocol):
    def export(self, inp: ExportInput, folder: Path) -> None: ...

    def feature_path(self, summary: DictionarySummary, dict_index: int, feature: int) -> str | None: ...


class Formats(Mapping[str, Format]):
    """Format name -> its module, imported when first looked up."""

    def __getitem__(self, name: str) -> Format:
        module = FORMAT_MODULES[name]
        try:
            return cast(Format, importlib.import_module(module))
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
            raise SitegenError(f"{name} export: {module} is not part of this sitegen") from None

    def __contains__(self, name: object) -> bool:
        return name in FORMAT_MODULES

    def __iter__(self) -> Iterator[str]:
        return iter(FORMAT_MODULES)

    def __len__(self) -> int:
        return len(FORMAT_MODULES)


FORMATS: Mapping[str, Format] = Formats()


def check_format(name: str | None, where: str = "--format") -> str:
    """``name`` if it is a format's, else a one-line SitegenError."""
    if name is None or name not in FORMAT_MODULES:
        raise SitegenError(f"{where}: must be one of {', '.join(FORMAT_MODULES)}, got {name!r}")
    return name


def site_formats(cfg: Config) -> list[str]:
    """The formats ``site.export`` lists, each once, in its order."""
    return [check_format(name, "site.export") for name in dict.fromkeys(cfg.site.export)]


def write_format(name: str, inp: ExportInput, folder: Path) -> None:
    """Format ``name``'s files under ``folder`` (created), with the export marker."""
    exporter = FORMATS[name]
    folder.mkdir(parents=True, exist_ok=True)
    exporter.export(inp, folder)
    (folder / MARKER).write_bytes(f"{name}\n".encode())


def is_replaceable(folder: Path) -> bool:
    """An existing folder may be replaced by an export when it is empty or an export we made."""
    if not folder.exists():
        return True
    if not folder.is_dir():
        return False
    return not any(folder.iterdir()) or (folder / MARKER).is_file()


def export_to(name: str, inp: ExportInput, out: Path) -> Path:
    """Format ``name``'s export at ``out``, written atomically (a failure leaves a previous one
    untouched); returns ``out``."""
    from sitegen.folders import write_folder

    if not is_replaceable(out):
        raise SitegenError(
            f"{out}: exists and is not an export made by sitegen (no {MARKER}); remove it or choose another --out"
        )
    return write_folder(out, lambda tmp: write_format(name, inp, tmp))
