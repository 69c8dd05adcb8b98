"""Feature pages rendered in a process pool (sitegen/render/pages_pool.py): the same site, byte
for byte, as in one process, and the same one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from site_fixtures import DictSpec, site_config, write_cache

from sitegen.cache.files import batch_files, read_batch, write_batch
from sitegen.errors import SitegenError
from sitegen.render import pages_pool, render_site

# several batch files per dictionary (batch_size=3), so results must be put back in order
SPECS = [
    DictSpec(name="sae", d_sae=64, feature_ids=tuple(range(0, 40, 3)), dead=frozenset({6, 21})),
    DictSpec(name="mlp", kind="neurons", hook_name="blocks.6.mlp.hook_post", d_sae=2048, feature_ids=(0, 1)),
    DictSpec(name="signed", d_sae=64, feature_ids=(5, 9, 11, 12), negative=True),
    DictSpec(name="exact", d_sae=16, feature_ids=(0, 1, 2, 3, 4), effects="exact"),
]


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def project(tmp_path) -> tuple[Path, object]:
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "about.md").write_text("# About\n\nsynthetic\n")
    (tmp_path / "pages" / "guide.md").write_text("# Guide\n\nhover tokens\n")
    (tmp_path / "notes.yaml").write_text("sae:\n  3: 'a *note*'\n  39: another\nsigned:\n  9: signed note\n")
    write_cache(tmp_path / "cache", SPECS, batch_size=3)
    return tmp_path / "cache", site_config(tmp_path, pages="pages", notes="notes.yaml")


@pytest.mark.parametrize("method", ["auto", "spawn"])  # auto: forkserver on Linux
def test_pool_render_is_byte_identical_to_sequential(tmp_path, project, pools, monkeypatch, method):
    cache, cfg = project
    sequential = tree(render_site(cache, cfg, tmp_path / "sequential", workers=1))
    assert pools == []
    if method != "auto":
        monkeypatch.setattr(pages_pool, "start_method", lambda: method)
    pooled = tree(render_site(cache, cfg, tmp_path / "pooled", workers=2))
    assert pools == [2]
    assert len(sequential) == 6 + 14 + 2 + 4 + 5  # .nojekyll, index + its data, 404, about, guide; pages
    assert pooled.keys() == sequential.keys()
    assert [name for name in sequential if pooled[name] != sequential[name]] == []


def test_small_sites_and_single_cores_render_in_process(tmp_path, project, pools, monkeypatch):
    cache, cfg = project
    render_site(cache, cfg, tmp_path / "site")  # 25 pages: fewer than MIN_POOL_PAGES
    assert pools == []
    assert pages_pool.pool_size(25, 9, None) == 1
    assert pages_pool.pool_size(64, 9, None) == min(pages_pool.available_cpus(), 9)
    assert pages_pool.pool_size(10, 9, 4) == 4 and pages_pool.pool_size(10_000, 3, 8) == 3
    assert pages_pool.pool_size(10_000, 0, None) == 1
    monkeypatch.setattr(pages_pool, "available_cpus", lambda: 1)
    assert pages_pool.pool_size(10_000, 40, None) == 1


def unlisted_feature(cache: Path) -> None:
    path = batch_files(cache, 0)[1]
    features = read_batch(path)
    features[1].feature = 41  # not in the manifest
    write_batch(cache, 0, 1, features)


def missing_token(cache: Path) -> None:
    fd = read_batch(batch_files(cache, 2)[0])[1]
    texts = orjson.loads((cache / "tokens.json").read_bytes())
    del texts[str(fd.top_tokens.token_ids[0])]
    (cache / "tokens.json").write_bytes(orjson.dumps(texts))


def unreadable_batch(cache: Path) -> None:
    batch_files(cache, 0)[2].write_text("[{")


def missing_batch(cache: Path) -> None:
    batch_files(cache, 0)[3].unlink()


def two_errors(cache: Path) -> None:
    """The earlier batch's error is the one raised."""
    unreadable_batch(cache)
    path = batch_files(cache, 3)[0]
    path.write_text(json.dumps([{"feature": 0}]))


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (unlisted_feature, "feature 41 of 'sae' is cached but not listed in the manifest"),
        (missing_token, "tokens.json: no display text for token id"),
        (unreadable_batch, "00002.json: unreadable cache file"),
        (missing_batch, "'sae' lists 14 features but 11 are cached"),
        (two_errors, "00002.json: unreadable cache file"),
    ],
)
def test_worker_errors_are_the_sequential_one_line_errors(tmp_path, project, pools, corrupt, message):
    cache, cfg = project
    corrupt(cache)
    errors = []
    for workers in (1, 2):
        with pytest.raises(SitegenError, match=message) as err:
            render_site(cache, cfg, tmp_path / "site", workers=workers)
        errors.append(err.value)
    assert pools == [2]
    assert str(errors[1]) == str(errors[0]) and "\n" not in str(errors[1])
    shown = errors[1].__cause__ or (None if errors[1].__suppress_context__ else errors[1].__context__)
    assert shown is None  # no worker traceback chained to it
    # the workers had stopped when the temporary folder was removed: nothing left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "notes.yaml", "pages"]
