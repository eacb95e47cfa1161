"""Fixtures of the server tests: a tiny random model, the app on it (TestClient), and it behind uvicorn."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).parent))

from server_support import MODEL, running  # noqa: E402
from tiny import char_tokenizer, tiny_model  # noqa: E402

from pasta_rag import PastaModel  # noqa: E402
from pasta_rag.server import create_app  # noqa: E402


@pytest.fixture(scope="session")
def model() -> PastaModel:
    return PastaModel(tiny_model("llama"), char_tokenizer(), heads=[1, 2], name=MODEL)


@pytest.fixture
def client(model) -> Iterator[TestClient]:
    with TestClient(create_app(model)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def live_url(model) -> Iterator[str]:
    with running(create_app(model)) as url:
        yield url
