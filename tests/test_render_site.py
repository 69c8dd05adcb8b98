"""Whole-site behaviour: byte-identical re-renders, atomic replacement, check_site."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from site_fixtures import DictSpec, site_config, write_cache

from sitegen.errors import SitegenError
from sitegen.render import check_site, render_site
from sitegen.render.site import SiteWriter

SPECS = [
    DictSpec(feature_ids=(0, 1, 2, 5), dead=frozenset({2})),
    DictSpec(name="mlp", kind="neurons", hook_name="blocks.6.mlp.hook_post", feature_ids=(3,)),
]


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def project(tmp_path) -> tuple[Path, object]:
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "about.md").write_text("# About\n\nsynthetic\n")
    (tmp_path / "notes.yaml").write_text("sae:\n  1: 'a *note*'\n")
    write_cache(tmp_path / "cache", SPECS)
    return tmp_path / "cache", site_config(tmp_path, pages="pages", notes="notes.yaml")


def test_rerender_is_byte_identical(tmp_path, project):
    cache, cfg = project
    first = tree_digest(render_site(cache, cfg, tmp_path / "a"))
    second = tree_digest(render_site(cache, cfg, tmp_path / "nested" / "b"))
    assert first == second and len(first) == 10
    assert tree_digest(render_site(cache, cfg, tmp_path / "a")) == first  # replacing in place


def test_failed_render_leaves_previous_site(tmp_path, project, monkeypatch):
    cache, cfg = project
    out = render_site(cache, cfg, tmp_path / "site")
    before = tree_digest(out)

    def fail_midway(self, listings):
        raise RuntimeError("disk full")

    monkeypatch.setattr(SiteWriter, "write_pages", fail_midway)  # after the feature pages and index
    with pytest.raises(RuntimeError, match="disk full"):
        render_site(cache, cfg, out)
    assert tree_digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "notes.yaml", "pages", "site"]


def test_replacing_a_site_leaves_no_leftovers(tmp_path, project):
    cache, cfg = project
    out = tmp_path / "site"
    render_site(cache, cfg, out)
    (out / "stale.html").write_text("old")
    render_site(cache, cfg, out)
    assert not (out / "stale.html").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "notes.yaml", "pages", "site"]


def test_refuses_to_replace_a_folder_it_did_not_make(tmp_path, project):
    cache, cfg = project
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "thesis.tex").write_text("precious")
    with pytest.raises(SitegenError, match="not a site made by sitegen"):
        render_site(cache, cfg, tmp_path / "docs")
    assert (tmp_path / "docs" / "thesis.tex").read_text() == "precious"
    (tmp_path / "empty").mkdir()
    assert render_site(cache, cfg, tmp_path / "empty") == tmp_path / "empty"


def test_missing_cache_is_a_one_line_error(tmp_path, project):
    _, cfg = project
    with pytest.raises(SitegenError, match="no feature cache here"):
        render_site(tmp_path / "nowhere", cfg, tmp_path / "site")


def test_check_site_finds_broken_links(tmp_path, project):
    cache, cfg = project
    site = render_site(cache, cfg, tmp_path / "site")
    assert check_site(site) == []
    tampered = tmp_path / "tampered"
    shutil.copytree(site, tampered)
    page = tampered / "features" / "0" / "0.html"
    page.write_text(page.read_text(encoding="utf-8").replace('href="1.html"', 'href="missing.html"'), encoding="utf-8")
    (tampered / "features" / "0" / "5.html").unlink()
    about = tampered / "about.html"
    about.write_text(
        about.read_text(encoding="utf-8").replace(
            "</main>", '<a href="/abs.html">x</a><a href="javascript:alert(1)">y</a></main>'
        )
    )
    problems = check_site(tampered)
    assert "features/0/0.html: broken link 'missing.html' (no features/0/missing.html)" in problems
    assert any(p.startswith("features/0/2.html: broken link '5.html'") for p in problems)  # its "next" link
    assert any("index-data.js: lists feature 5 of dictionary 0" in p for p in problems)
    assert any("about.html: absolute link '/abs.html'" in p for p in problems)
    assert any("about.html: javascript: URL" in p for p in problems)
    assert check_site(tmp_path / "nothing") == [f"{tmp_path / 'nothing'}: not a folder"]
