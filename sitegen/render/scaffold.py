"""``sitegen init DIR``: a starter project that builds, checks and publishes its site."""

from __future__ import annotations

from pathlib import Path

from sitegen.errors import SitegenError

SCAFFOLD = Path(__file__).parent / "scaffold"
# project path -> file shipped in sitegen/render/scaffold/
FILES = {
    "site_config.yaml": "site_config.yaml",
    "pages/about.md": "about.md",
    "texts/example.txt": "example.txt",
    ".github/workflows/sitegen.yml": "sitegen.yml",
}


def scaffold_project(dir: Path) -> None:
    """Write a commented ``site_config.yaml``, ``pages/about.md``, an example text and a
    GitHub Actions workflow into ``dir``; never overwrites an existing file."""
    dir = Path(dir)
    existing = [name for name in FILES if (dir / name).exists()]
    if existing:
        raise SitegenError(f"{dir / existing[0]}: already exists; sitegen init does not overwrite files")
    for name, source in FILES.items():
        target = dir / name
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes((SCAFFOLD / source).read_bytes())
        except OSError as err:
            raise SitegenError(f"{target}: cannot write ({err.strerror or err})") from None
