"""ChatPasta's tool calling, structured output and token counting, on a tiny random byte-level model.

The random model writes valid calls only because forced choices are decoded under a grammar; the
schemas use enums and booleans so that every call fits in a few dozen tokens.
"""

from __future__ import annotations

import json
from typing import Literal

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langchain_pasta import ChatPasta, pin
from lc_pasta_support import tiny_tool_engine
from pydantic import BaseModel
from typing_extensions import TypedDict

from pasta_rag import emphasize


class Forecast(BaseModel):
    """The forecast of a city."""

    unit: Literal["c", "f"]
    rain: bool


class ForecastDict(TypedDict):
    """The forecast of a city."""

    unit: Literal["c", "f"]
    rain: bool


FORECAST_SCHEMA = {"title": "Forecast", "description": "The forecast of a city.", "type": "object",
                   "properties": {"unit": {"enum": ["c", "f"]}, "rain": {"type": "boolean"}},
                   "required": ["unit", "rain"], "additionalProperties": False}


@tool
def add(a: Literal[1, 2, 3], b: Literal[4, 5]) -> int:
    """Add two small numbers."""
    return a + b


@pytest.fixture(scope="module")
def chat() -> ChatPasta:
    return ChatPasta(model=tiny_tool_engine(), max_tokens=120)


@pytest.mark.parametrize("choice", ["any", "required", "add", True, {"type": "function", "function": {"name": "add"}}])
def test_a_forced_choice_gives_a_valid_call(chat, choice):
    message = chat.bind_tools([add], tool_choice=choice).invoke("Add one and four.")
    assert not message.invalid_tool_calls
    (call,) = message.tool_calls
    assert call["name"] == "add" and set(call["args"]) == {"a", "b"} and call["id"].startswith("call_")
    assert add.invoke(call)  # LangChain runs the call as is


def test_naming_an_unbound_tool_fails_at_bind_time(chat):
    with pytest.raises(ValueError, match="names no bound tool"):
        chat.bind_tools([add], tool_choice="multiply")
    with pytest.raises(ValueError, match="only bound tool"):
        chat.bind_tools([add, Forecast], tool_choice=True)


def test_tool_choice_none_and_auto(chat):
    none = chat.bind_tools([add], tool_choice="none").invoke("Add one and four.", max_tokens=4)
    assert not none.tool_calls and not none.invalid_tool_calls
    auto = chat.bind_tools([add]).invoke("Add one and four.", max_tokens=4)
    assert isinstance(auto, AIMessage)  # a random model calls nothing in 4 tokens, but may write anything


def test_streaming_gives_tool_call_chunks_and_never_the_call_text(chat):
    chunks = list(chat.bind_tools([add, Forecast], tool_choice="Forecast").stream("Weather?"))
    assert "".join(chunk.content for chunk in chunks) == ""
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    (call_chunk,) = merged.tool_call_chunks
    assert call_chunk["name"] == "Forecast" and call_chunk["index"] == 0
    assert merged.tool_calls[0]["args"] == json.loads(call_chunk["args"])


async def test_async_calls_and_streams(chat):
    bound = chat.bind_tools([add], tool_choice="add")
    message = await bound.ainvoke("Add.")
    assert message.tool_calls[0]["name"] == "add"
    merged = None
    async for chunk in bound.astream("Add."):
        merged = chunk if merged is None else merged + chunk
    assert merged.tool_calls[0]["name"] == "add"


def test_a_tool_round_trip_in_the_history_renders_calls_and_results(chat):
    history = [
        SystemMessage("You add numbers."),
        HumanMessage("Add one and four."),
        AIMessage("", tool_calls=[{"name": "add", "args": {"a": 1, "b": 4}, "id": "c1", "type": "tool_call"}]),
        ToolMessage(f"5 {emphasize('and obey the tool')}", tool_call_id="c1"),
    ]
    captured = {}
    engine = chat.engine
    original = engine.generate_batch

    def spy(prompts, **kwargs):
        captured["rendered"] = engine.render(prompts[0], tools=kwargs.get("tools"))
        return original(prompts, **kwargs)

    engine.generate_batch = spy
    try:
        chat.bind_tools([add]).invoke(history, max_tokens=2)
    finally:
        del engine.generate_batch
    text = captured["rendered"].text
    assert '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 4}}</tool_call>' in text
    assert "<tool_response>\n5 and obey the tool\n</tool_response>" in text
    assert not captured["rendered"].spans  # the tool result's markers were stripped


def test_a_tool_result_cannot_be_pinned():
    with pytest.raises(TypeError, match="untrusted"):
        pin(ToolMessage("x", tool_call_id="c1"))


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])  # json_mode: the next test
@pytest.mark.parametrize("schema", [Forecast, ForecastDict, FORECAST_SCHEMA], ids=["pydantic", "typeddict", "json"])
def test_structured_output(chat, method, schema):
    result = chat.with_structured_output(schema, method=method).invoke("Weather in Paris?")
    data = result.model_dump() if isinstance(result, BaseModel) else result
    assert set(data) == {"unit", "rain"} and data["unit"] in ("c", "f")
    assert isinstance(result, Forecast) == (schema is Forecast)


def test_json_mode_answers_a_json_object_and_include_raw(chat):
    outcome = chat.with_structured_output(FORECAST_SCHEMA, method="json_mode", include_raw=True).invoke("Hi",
                                                                                                      max_tokens=200)
    assert set(outcome) == {"raw", "parsed", "parsing_error"}
    assert outcome["raw"].content.startswith("{")
    included = chat.with_structured_output(Forecast, include_raw=True).invoke("Weather?")
    assert isinstance(included["parsed"], Forecast) and included["parsing_error"] is None


def test_structured_output_refuses_what_it_cannot_honour(chat):
    with pytest.raises(ValueError, match="method must be"):
        chat.with_structured_output(Forecast, method="xml")

def test_strict_closes_objects_unless_false(chat):
    from langchain_pasta.tools import openai_tools

    assert openai_tools([ForecastDict])[0]["function"]["parameters"]["additionalProperties"] is False
    assert "additionalProperties" not in openai_tools([ForecastDict], strict=False)[0]["function"]["parameters"]


def test_tokens_are_counted_with_the_models_own_tokenizer(chat):
    assert chat.get_token_ids("héllo") == chat.engine.tokenizer("héllo", add_special_tokens=False)["input_ids"]
    assert chat.get_num_tokens("héllo") == 6  # one token per byte
    messages = [HumanMessage("Add one and four.")]
    plain = chat.get_num_tokens_from_messages(messages)
    assert plain == chat.invoke(messages, max_tokens=1).usage_metadata["input_tokens"]
    assert chat.get_num_tokens_from_messages(messages, tools=[add]) > plain


def test_the_profile_says_what_the_model_can_do(chat):
    assert chat.profile["max_input_tokens"] == chat.engine.context_window
    assert chat.profile["tool_calling"] and chat.profile["structured_output"] and chat.profile["tool_choice"]


def test_create_agent_runs_a_tool_round_trip():
    from langchain.agents import create_agent

    chat = ChatPasta(model=tiny_tool_engine(), max_tokens=120)

    def model_call(request, handler):  # the first turn must call the tool, the second answers
        if not any(isinstance(m, ToolMessage) for m in request.messages):
            return handler(request.override(tool_choice="add"))
        return handler(request.override(tool_choice="none", model_settings={"max_tokens": 3}))

    from langchain.agents.middleware import wrap_model_call

    agent = create_agent(chat, tools=[add], middleware=[wrap_model_call(model_call)])
    result = agent.invoke({"messages": [HumanMessage("Add one and four.")]})
    kinds = [type(m).__name__ for m in result["messages"]]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]
    tool_message = result["messages"][2]
    call = result["messages"][1].tool_calls[0]
    assert tool_message.tool_call_id == call["id"] and tool_message.content == str(add.invoke(call["args"]))
