"""Forced tool calls and structured output on the packaged default model (SmolLM2-135M-Instruct), whose
chat template has no tool support: the fallback format, decoded under the grammar."""

from __future__ import annotations

import json

import pytest

from pasta_rag import PastaModel
from pasta_rag.tools import TAGS_FORMAT

pytestmark = pytest.mark.real_model

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city"]}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two integers.",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                   "required": ["a", "b"]}}}


@pytest.fixture(scope="module")
def model() -> PastaModel:
    return PastaModel.shared("default")


def test_the_default_model_uses_the_fallback_format(model):
    assert model.render([{"role": "user", "content": "Hi"}], tools=[WEATHER]).tool_format == TAGS_FORMAT


@pytest.mark.parametrize(("question", "tool", "arguments"), [
    ("What's the weather in Paris?", "get_weather", {"city": "Paris"}),
    ("What is 3 plus 4?", "add", {"a": 3, "b": 4}),
])
def test_a_forced_call_of_the_default_model_parses_and_validates(model, question, tool, arguments):
    generation = model.generate([{"role": "user", "content": question}], tools=[WEATHER, ADD],
                                tool_choice="required", max_new_tokens=48, steer=False)
    assert not generation.invalid_tool_calls
    (call,) = generation.tool_calls
    assert call.name == tool and call.arguments.items() >= arguments.items()


def test_structured_output_of_the_default_model(model):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"]}
    generation = model.generate([{"role": "user", "content": "Ann is 31. Give her name and age as JSON."}],
                                response_format={"type": "json_schema", "json_schema": {"schema": schema}},
                                max_new_tokens=40, steer=False)
    assert json.loads(generation.text) == {"name": "Ann", "age": 31}
