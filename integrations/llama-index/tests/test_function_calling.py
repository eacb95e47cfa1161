"""PastaLLM as a LlamaIndex FunctionCallingLLM, on a tiny random byte-level model: forced calls are
decoded under the core's grammar, so they parse even though the model is random."""


import asyncio
from typing import Literal

import pytest
from llama_index.core.base.llms.types import ChatMessage, MessageRole, ToolCallBlock
from llama_index.core.tools import FunctionTool
from llama_index.llms.pasta import PastaLLM
from tiny_bytes import byte_model, byte_tokenizer

from pasta_rag import PastaModel, emphasize


def add(a: Literal[1, 2, 3], b: Literal[4, 5]) -> int:
    """Add two small numbers."""
    return a + b


def weather(unit: Literal["c", "f"], rain: bool) -> str:
    """The weather, in a unit."""
    return f"18 {unit}"


ADD = FunctionTool.from_defaults(add)
WEATHER = FunctionTool.from_defaults(weather)


@pytest.fixture(scope="module")
def llm() -> PastaLLM:
    model = byte_model()
    model.config.max_position_embeddings = 4096  # the tools' descriptions need room
    return PastaLLM(model=PastaModel(model, byte_tokenizer(), heads=[1, 2]), max_new_tokens=120)


def test_it_is_a_function_calling_model(llm):
    assert llm.metadata.is_function_calling_model


def test_a_required_call_is_returned_as_a_tool_selection(llm):
    response = llm.chat_with_tools([ADD, WEATHER], user_msg="Add one and four.", tool_required=True)
    (selection,) = llm.get_tool_calls_from_response(response)
    assert selection.tool_name in ("add", "weather") and selection.tool_id.startswith("call_")
    tool = {"add": ADD, "weather": WEATHER}[selection.tool_name]
    assert tool.call(**selection.tool_kwargs).raw_output is not None


def test_a_named_tool_choice_and_a_streamed_call(llm):
    response = llm.chat_with_tools([ADD, WEATHER], user_msg="Weather?", tool_choice="weather")
    assert llm.get_tool_calls_from_response(response)[0].tool_name == "weather"
    chunks = list(llm.stream_chat_with_tools([ADD], user_msg="Add.", tool_required=True))
    assert all(chunk.message.content in ("", None) for chunk in chunks)  # the call's text is never streamed
    assert llm.get_tool_calls_from_response(chunks[-1])[0].tool_name == "add"


def test_async_calls(llm):
    response = asyncio.run(llm.achat_with_tools([ADD], user_msg="Add.", tool_required=True))
    assert llm.get_tool_calls_from_response(response)[0].tool_name == "add"


def test_no_call_is_an_error_unless_allowed(llm):
    response = llm.chat_with_tools([ADD], user_msg="Hi", tool_choice="none", max_new_tokens=3)
    assert llm.get_tool_calls_from_response(response, error_on_no_tool_call=False) == []
    with pytest.raises(ValueError, match="called no tool"):
        llm.get_tool_calls_from_response(response)


def test_tool_turns_of_the_history_reach_the_model(llm):
    seen = {}
    original = llm.pasta_model.generate

    def spy(prompt, **kwargs):
        seen["text"] = llm.pasta_model.render(prompt, tools=kwargs.get("tools")).text
        return original(prompt, **kwargs)

    history = [
        ChatMessage(role=MessageRole.USER, content="Add one and four."),
        ChatMessage(role=MessageRole.ASSISTANT,
                    blocks=[ToolCallBlock(tool_call_id="c1", tool_name="add", tool_kwargs={"a": 1, "b": 4})]),
        ChatMessage(role=MessageRole.TOOL, content=f"5 {emphasize('obey')}", additional_kwargs={"tool_call_id": "c1"}),
    ]
    llm.pasta_model.generate = spy
    try:
        llm.chat_with_tools([ADD], chat_history=history, max_new_tokens=2)
    finally:
        del llm.pasta_model.generate
    assert '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 4}}</tool_call>' in seen["text"]
    assert "<tool_response>\n5 obey\n</tool_response>" in seen["text"]
