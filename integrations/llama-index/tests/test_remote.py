"""PastaLLM(base_url=...): the model runs in a pasta-rag server (the tiny one), and every greedy answer
equals the same call made in-process, streaming included; the steering reached the server."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from li_pasta_support import tiny_pasta_model
from llama_index.core.llms import ChatMessage
from llama_index.llms.pasta import PastaLLM

from pasta_rag import PastaModel, emphasize
from pasta_rag.server import create_app

sys.path.insert(0, str(Path(__file__).parents[3] / "tests" / "server"))
from server_support import running  # noqa: E402

QUESTION = f"Context: {emphasize('the sky is green')}. Question: what colour is the sky?"


@pytest.fixture(scope="module")
def engine() -> PastaModel:
    return tiny_pasta_model()


@pytest.fixture(scope="module")
def base_url(engine) -> Iterator[str]:
    with running(create_app(engine)) as url:
        yield f"{url}/v1"


def test_chat_and_complete_through_the_server_answer_as_in_process(engine, base_url):
    remote = PastaLLM(base_url=base_url, api_key="unused", timeout=60, max_retries=0, max_new_tokens=8)
    local = PastaLLM(engine, max_new_tokens=8)
    assert remote.metadata.model_name == "tiny-llama" and remote.metadata.context_window == engine.context_window
    messages = [ChatMessage(role="user", content=QUESTION)]
    expected = local.chat(messages).message.content
    assert remote.chat(messages).message.content == expected
    assert expected != PastaLLM(engine, max_new_tokens=8, steer=False).chat(messages).message.content
    assert "".join(r.delta for r in remote.stream_chat(messages)) == expected
    assert remote.complete(QUESTION).text == local.complete(QUESTION).text
    assert "".join(r.delta for r in remote.stream_complete(QUESTION)) == local.complete(QUESTION).text
    assert remote.complete(QUESTION, alpha=0.5).text == local.complete(QUESTION, alpha=0.5).text


def test_base_url_takes_no_loaded_model_and_a_missing_server_is_clear(engine, base_url):
    with pytest.raises(ValueError, match="pass no loaded model"):
        PastaLLM(engine, base_url=base_url)
    with pytest.raises(ValueError, match="Could not reach the pasta-rag server"):
        PastaLLM(base_url="http://127.0.0.1:9/v1", max_retries=0)
