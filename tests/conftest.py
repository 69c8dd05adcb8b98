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
