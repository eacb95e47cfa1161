"""Tools, tool_choice and response_format through the server, with the real ``openai`` client.

The model is a tiny random one with a byte-level tokenizer: it writes garbage unless the grammar
holds it, so a forced call that parses and validates proves the grammar ran behind the server.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import jsonschema
import openai
import pytest
from server_support import running
from tiny_bytes import byte_model, byte_tokenizer

from pasta_rag import PastaModel, emphasize
from pasta_rag.remote import RemoteModel
from pasta_rag.server import create_app

MODEL = "tiny-bytes"
WEATHER_PARAMETERS = {"type": "object", "properties": {"unit": {"enum": ["c", "f"]}, "rain": {"type": "boolean"}},
                      "required": ["unit", "rain"], "additionalProperties": False}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The weather of a city.",
                                      "parameters": WEATHER_PARAMETERS}},
    {"type": "function", "function": {"name": "add", "description": "Add two digits.", "parameters": {
        "type": "object", "properties": {"a": {"enum": [1, 2, 3]}, "b": {"enum": [4, 5]}},
        "required": ["a", "b"], "additionalProperties": False}}},
]
ASK = [{"role": "user", "content": f"Weather in {emphasize('Paris')}?"}]
FORCED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture(scope="module")
def model() -> PastaModel:
    return PastaModel(byte_model(), byte_tokenizer(), heads=[1, 2], name=MODEL)


@pytest.fixture(scope="module")
def base_url(model) -> Iterator[str]:
    with running(create_app(model)) as url:
        yield f"{url}/v1"


@pytest.fixture(scope="module")
def client(base_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)


def test_a_forced_call_parses_validates_and_equals_the_in_process_call(client, model):
    completion = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice=FORCED,
                                                max_tokens=120)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, WEATHER_PARAMETERS)
    expected = model.generate(ASK, tools=TOOLS, tool_choice=FORCED, max_new_tokens=120)
    assert arguments == expected.tool_calls[0].arguments
    assert completion.model_extra["pasta"]["steered"] is True


def test_required_picks_one_of_the_tools(client):
    completion = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required",
                                                max_tokens=120)
    (call,) = completion.choices[0].message.tool_calls
    assert call.function.name in ("get_weather", "add")


def test_streamed_tool_call_chunks_reassemble_to_the_same_call(client):
    common = {"model": MODEL, "messages": ASK, "tools": TOOLS, "tool_choice": FORCED, "max_tokens": 120}
    whole = client.chat.completions.create(**common).choices[0].message.tool_calls[0]
    chunks = list(client.chat.completions.create(**common, stream=True))
    calls: dict[int, dict] = {}
    for chunk in chunks:
        for piece in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            call = calls.setdefault(piece.index, {"id": None, "name": "", "arguments": ""})
            call["id"] = piece.id or call["id"]
            call["name"] += piece.function.name or ""
            call["arguments"] += piece.function.arguments or ""
    assert list(calls) == [0] and calls[0]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
    assert json.loads(calls[0]["arguments"]) == json.loads(whole.function.arguments)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ""


NOTE = {"type": "function", "function": {"name": "note", "description": "Write a note.", "parameters": {
    "type": "object", "properties": {"text": {"type": "string"}, "tag": {"type": "string"}},
    "required": ["text", "tag"], "additionalProperties": False}}}


@pytest.mark.parametrize("stream", [False, True])
def test_a_call_closed_early_for_want_of_tokens_finishes_with_length(client, stream):
    """The random byte model never closes a free string: the grammar closes ``text`` when the budget runs low,
    so the call parses but its text may be cut, which OpenAI reports as ``length``, not ``tool_calls``."""
    common = {"model": MODEL, "messages": ASK, "tools": [NOTE], "max_tokens": 90,
              "tool_choice": {"type": "function", "function": {"name": "note"}}}
    if stream:
        chunks = list(client.chat.completions.create(**common, stream=True))
        reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert reasons == ["length"]
        assert any(c.choices[0].delta.tool_calls for c in chunks if c.choices)
    else:
        choice = client.chat.completions.create(**common).choices[0]
        assert choice.finish_reason == "length"
        assert set(json.loads(choice.message.tool_calls[0].function.arguments)) == {"text", "tag"}


def test_a_json_schema_response_validates(client, model):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"enum": [1, 2]}},
              "required": ["ok", "n"], "additionalProperties": False}
    response_format = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema}}
    completion = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=40,
                                                response_format=response_format)
    answer = json.loads(completion.choices[0].message.content)
    jsonschema.validate(answer, schema)
    assert completion.choices[0].message.content == model.generate(ASK, max_new_tokens=40,
                                                                   response_format=response_format).text
    json_object = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=120,
                                                 response_format={"type": "json_object"})
    assert isinstance(json.loads(json_object.choices[0].message.content), dict)


def test_a_history_with_a_call_and_its_result_is_accepted(client, model):
    history = [*ASK,
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"unit": "c", "rain": false}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "18 C, dry"}]
    completion = client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, max_tokens=6)
    assert completion.choices[0].message.content == model.generate(history, tools=TOOLS, max_new_tokens=6).text


def test_sampling_extras_are_honoured(client, model):
    """vLLM's top_k, repetition_penalty and min_tokens; each changes this model's answer."""
    penalized = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=12,
                                               extra_body={"repetition_penalty": 3.0, "min_tokens": 12})
    expected = model.generate(ASK, max_new_tokens=12, repetition_penalty=3.0, min_new_tokens=12).text
    assert penalized.choices[0].message.content == expected != model.generate(ASK, max_new_tokens=12).text
    sampled = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=12, temperature=1.0, seed=0,
                                             extra_body={"top_k": 2})
    expected = model.generate(ASK, max_new_tokens=12, temperature=1.0, seed=0, top_k=2).text
    assert sampled.choices[0].message.content == expected != model.generate(ASK, max_new_tokens=12, temperature=1.0,
                                                                             seed=0).text


@pytest.mark.parametrize(("fields", "param", "message"), [
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_time"}}}, "tool_choice",
     "'get_time', which is not among the tools"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools", "needs a name"),
    ({"tools": [{"type": "function", "function": {"name": "strange", "parameters": {
        "type": "object", "not": {"required": ["x"]}}}}], "tool_choice": "required"}, "tools", "tool 'strange'.*not"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "odd", "schema": {"type": "object",
                                                                                           "not": {}}}}},
     "response_format", "response_format 'odd'"),
    ({"response_format": {"type": "yaml"}}, "response_format", "response_format must be"),
    ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "response_format", "not both"),
    ({"extra_body": {"min_tokens": 9}}, None, "min_new_tokens must be between 0 and max_new_tokens"),
])
def test_bad_tool_requests_are_400s_naming_the_part(client, fields, param, message):
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=8, **fields)
    assert re.search(message, raised.value.body["message"]) and raised.value.body["param"] == param


def test_tools_that_do_not_fit_the_window_say_how_many_tokens_they_take(client):
    many = [{"type": "function", "function": {"name": f"tool_{i}", "description": "x" * 200}} for i in range(5)]
    with pytest.raises(openai.BadRequestError, match=r"The tools' descriptions take \d+ of the prompt's \d+ tokens"):
        client.chat.completions.create(model=MODEL, messages=ASK, tools=many, max_tokens=8)


def test_tool_messages_must_answer_a_call(client):
    with pytest.raises(openai.BadRequestError, match="tool_call_id") as raised:
        client.chat.completions.create(model=MODEL, max_tokens=4,
                                       messages=[*ASK, {"role": "tool", "content": "42"}])
    assert raised.value.body["param"] == "messages.1"


def test_tools_and_response_format_through_remote_model(base_url, model):
    """What ChatPasta.bind_tools / with_structured_output send with base_url: the same calls as in-process."""
    remote = RemoteModel(base_url, max_retries=0)
    expected = model.generate(ASK, tools=TOOLS, tool_choice="add", max_new_tokens=120)
    answer = remote.generate(ASK, tools=TOOLS, tool_choice="add", max_new_tokens=120)
    assert [(c.name, c.arguments) for c in answer.tool_calls] == [(c.name, c.arguments) for c in expected.tool_calls]
    stream = remote.stream(ASK, tools=TOOLS, tool_choice="add", max_new_tokens=120)
    assert "".join(stream) == "" and stream.generation.tool_calls[0].arguments == expected.tool_calls[0].arguments
    assert remote.generate(ASK, max_new_tokens=120, response_format={"type": "json_object"}).text == model.generate(
        ASK, max_new_tokens=120, response_format={"type": "json_object"}).text
