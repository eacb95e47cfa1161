"""ChatPasta / PastaLLM with ``base_url``: the model runs in a pasta-rag server (the tiny one), and every
greedy answer equals the same call made in-process, streaming included; the steering reached the server."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_core.documents import Document
from langchain_core.messages import HumanMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_pasta import ChatPasta, PastaLLM, format_docs
from lc_pasta_support import tiny_engine

from pasta_rag import PastaModel, emphasize
from pasta_rag.server import create_app

sys.path.insert(0, str(Path(__file__).parents[3] / "tests" / "server"))
from server_support import running  # noqa: E402

DOCS = [Document(page_content="The sky is green."), Document(page_content="Grass is blue.")]
PROMPT = ChatPromptTemplate.from_messages([("human", "Context: {context}\nQuestion: {question}")])
QUESTION = f"Context: {emphasize('the sky is green')}. Question: what colour is the sky?"


@pytest.fixture(scope="module")
def engine() -> PastaModel:
    return tiny_engine()


@pytest.fixture(scope="module")
def base_url(engine) -> Iterator[str]:
    with running(create_app(engine, model_id="tiny")) as url:
        yield f"{url}/v1"


def test_chat_pasta_through_the_server_answers_as_in_process(engine, base_url):
    remote = ChatPasta(base_url=base_url, api_key="unused", timeout=60, max_retries=0, max_tokens=8)
    local = ChatPasta(model=engine, max_tokens=8)
    assert remote.model_name == "tiny" and remote._identifying_params["base_url"] == base_url
    chain = {"context": lambda q: format_docs(DOCS), "question": lambda q: q} | PROMPT
    remote_answer, local_answer = (chain | remote).invoke("What colour is the sky?"), \
        (chain | local).invoke("What colour is the sky?")
    assert remote_answer.content == local_answer.content
    assert remote_answer.usage_metadata == local_answer.usage_metadata
    unsteered = (chain | ChatPasta(model=engine, max_tokens=8, steer=False)).invoke("What colour is the sky?")
    assert unsteered.content != remote_answer.content  # the marked documents steered the server's model
    streamed = list((chain | remote).stream("What colour is the sky?"))
    assert "".join(chunk.content for chunk in streamed) == local_answer.content
    assert sum(streamed[1:], streamed[0]).usage_metadata == local_answer.usage_metadata


def test_call_options_and_batches_travel(engine, base_url):
    remote = ChatPasta(base_url=base_url, max_retries=0, max_tokens=8)
    local = ChatPasta(model=engine, max_tokens=8)
    messages = [HumanMessage(QUESTION)]
    assert remote.invoke(messages, alpha=0.5).content == local.invoke(messages, alpha=0.5).content
    questions = [[HumanMessage(QUESTION)], [HumanMessage(f"Answer from {emphasize('grass is blue')}:")]]
    assert [m.content for m in remote.batch(questions)] == [m.content for m in local.batch(questions)]


def test_pasta_llm_through_the_server(engine, base_url):
    remote = PastaLLM(base_url=base_url, max_retries=0, max_tokens=6)
    local = PastaLLM(model=engine, max_tokens=6)
    assert remote.invoke(QUESTION) == local.invoke(QUESTION)
    assert "".join(remote.stream(QUESTION)) == local.invoke(QUESTION)
    assert PastaLLM(base_url=base_url, max_retries=0, max_tokens=6, streaming=True).invoke(QUESTION) == \
        local.invoke(QUESTION)


def test_a_server_that_is_not_there_or_another_model_is_a_clear_error(base_url):
    with pytest.raises(ValueError, match="Could not reach the pasta-rag server"):
        ChatPasta(base_url="http://127.0.0.1:9/v1", max_retries=0)
    with pytest.raises(ValueError, match="not 'other'"):
        ChatPasta(base_url=base_url, model="other", max_retries=0)
