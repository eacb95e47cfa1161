"""PastaLLM on the core's tiny random model."""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_pasta import PastaLLM, emphasize
from lc_pasta_support import sent
from pydantic import ValidationError

PROMPT = "Question: where is the tower?\nAnswer:"
MARKED = f"Context: {emphasize('The tower is in Rome.')}\n{PROMPT}"


@pytest.fixture
def llm(tiny_engine) -> PastaLLM:
    return PastaLLM(model=tiny_engine, max_tokens=8)


def test_plain_prompt_is_the_plain_model(llm, tiny_engine):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert llm.invoke(PROMPT) == tiny_engine.generate(PROMPT, steer=False, max_new_tokens=8).text


def test_markers_and_emphasis_steer(llm, tiny_engine):
    assert llm.invoke(MARKED) == tiny_engine.generate(MARKED, max_new_tokens=8).text
    assert llm.invoke(PROMPT, emphasis=["tower"]) == tiny_engine.generate(PROMPT, emphasis=["tower"], max_new_tokens=8).text
    result = llm.generate([MARKED, PROMPT])
    assert [g[0].generation_info["steered"] for g in result.generations] == [True, False]
    assert result.llm_output["token_usage"]["completion_tokens"] == 16


def test_chat_template_option(tiny_engine):
    llm = PastaLLM(model=tiny_engine, max_tokens=8, chat_template=True)
    core = [{"role": "user", "content": MARKED}]
    assert llm.invoke(MARKED) == tiny_engine.generate(core, max_new_tokens=8).text


def test_batch_is_one_padded_batch(llm, tiny_engine, monkeypatch):
    expected = [g.text for g in tiny_engine.generate_batch([MARKED, PROMPT, "Hi"], steer=True, max_new_tokens=8)]
    sizes: list[int] = []
    original = tiny_engine.generate_batch
    monkeypatch.setattr(tiny_engine, "generate_batch", lambda p, **k: sizes.append(len(p)) or original(p, **k))
    assert llm.batch([MARKED, PROMPT, "Hi"]) == expected
    assert asyncio.run(llm.abatch([MARKED, PROMPT, "Hi"])) == expected
    assert sizes == [3, 3]


def test_stream_stop_and_callbacks(llm, tiny_engine):
    class Tokens(BaseCallbackHandler):
        def __init__(self) -> None:
            self.tokens: list[str] = []

        def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
            self.tokens.append(token)

    full = llm.invoke(PROMPT)
    stop = full[2:5]
    expected = full[: full.find(stop)]
    handler = Tokens()
    assert "".join(llm.stream(PROMPT, config={"callbacks": [handler]})) == full == "".join(handler.tokens)
    assert llm.invoke(PROMPT, stop=[stop]) == "".join(llm.stream(PROMPT, stop=[stop])) == expected

    async def run() -> tuple[str, str]:
        return await llm.ainvoke(PROMPT, stop=[stop]), "".join([c async for c in llm.astream(PROMPT, stop=[stop])])

    assert asyncio.run(run()) == (expected, expected)
    streaming = PastaLLM(model=tiny_engine, max_tokens=8, streaming=True)
    assert streaming.invoke(PROMPT) == full
    assert asyncio.run(streaming.ainvoke(PROMPT)) == full


def test_steer_generated_field_and_call_option(llm, tiny_engine, monkeypatch):
    expected = tiny_engine.generate(MARKED, max_new_tokens=8, steer_generated=True).text
    seen: list[Any] = []
    generate_batch, stream = tiny_engine.generate_batch, tiny_engine.stream
    monkeypatch.setattr(tiny_engine, "generate_batch",
                        lambda p, **k: seen.append(sent(k, "steer_generated")) or generate_batch(p, **k))
    monkeypatch.setattr(tiny_engine, "stream", lambda p, **k: seen.append(sent(k, "steer_generated")) or stream(p, **k))
    chosen = PastaLLM(model=tiny_engine, max_tokens=8, steer_generated=True)
    assert chosen.invoke(MARKED) == "".join(chosen.stream(MARKED)) == expected
    assert llm.invoke(MARKED, steer_generated=True) == "".join(llm.stream(MARKED, steer_generated=True)) == expected
    assert seen == [True, True, True, True]
    assert chosen._identifying_params["steer_generated"] is True
    with pytest.raises(ValidationError, match="steer_generated"):
        PastaLLM(model=tiny_engine, steer_generated="yes")  # a lax bool would take "yes" as True
    with pytest.raises(ValueError, match="steer_generated must be True, False or None"):
        llm.invoke(MARKED, steer_generated="yes")


def test_errors(llm, tiny_engine):
    with pytest.raises(ValidationError, match="unknown parameter"):
        PastaLLM(model=tiny_engine, max_lenght=3)
    with pytest.raises(TypeError, match="unknown call option"):
        llm.invoke(PROMPT, foo=1)
    assert llm._llm_type == "pasta" and llm._get_ls_params()["ls_model_type"] == "llm"
