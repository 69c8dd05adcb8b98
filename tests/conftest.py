import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def tiny_config(tmp_path):
    """Path of a site_config.yaml over a tiny seeded model, SAE and token dataset."""
    from fixtures import write_project

    return write_project(tmp_path)


@pytest.fixture
def pools(monkeypatch) -> list[int]:
    """The worker count of every page-rendering pool started (sitegen.render.pages_pool)."""
    from sitegen.render import pages_pool

    started = []
    real = pages_pool.ProcessPoolExecutor

    def recording(n_workers, **kwargs):
        started.append(n_workers)
        return real(n_workers, **kwargs)

    monkeypatch.setattr(pages_pool, "ProcessPoolExecutor", recording)
    return started
