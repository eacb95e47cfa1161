import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _own_profiled_head_sets(tmp_path_factory, monkeypatch):
    """Every test reads and writes profiled head sets in a folder of its own, never the user's cache."""
    monkeypatch.setenv("PASTA_RAG_HEAD_SETS", str(tmp_path_factory.mktemp("head_sets")))
