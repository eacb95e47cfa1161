"""Shared set-up of the langchain-pasta tests: the core's tiny test models, offline mode, markers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))  # lc_pasta_support
sys.path.insert(0, str(HERE.parents[2] / "tests"))  # the core's tiny.py


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "real_model: uses a packaged real model (slower; loads it once per session)")


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector, name, obj):
    """Run this folder's coroutine tests (ours and langchain-tests' standard ones) under pytest-asyncio,
    as LangChain's own repositories do with asyncio_mode=auto, without changing the mode for other folders."""
    import inspect

    if inspect.iscoroutinefunction(obj) and name.startswith("test") and HERE in Path(str(collector.path)).parents:
        pytest.mark.asyncio(obj)
    return None


@pytest.fixture(scope="session")
def tiny_engine():
    from lc_pasta_support import tiny_engine as make

    return make()


@pytest.fixture(scope="session")
def real_engine():
    """The default model (SmolLM2-135M-Instruct), loaded once for the whole session."""
    from lc_pasta_support import real_engine as load

    return load()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A standard-suite class that names ``only`` (a set of test names) runs just those tests, and the
    tests its ``expected_failures`` names (by name, or with their parameters) are xfail with the reason."""
    keep, drop = [], []
    for item in items:
        cls = getattr(item, "cls", None)
        only = getattr(cls, "only", None)
        name = getattr(item, "originalname", item.name)
        reasons = getattr(cls, "expected_failures", {})
        reason = reasons.get(item.name) or reasons.get(name)
        if reason:
            item.add_marker(pytest.mark.xfail(reason=reason, strict=False))
        (drop if only is not None and name not in only else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
