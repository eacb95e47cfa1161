"""Tool calling and constrained decoding on a tiny random model with a byte-level tokenizer.

A random model writes garbage unless the grammar holds it, which is what these tests want: every
forced call below parses and validates only because of the grammar.
"""

from __future__ import annotations

import json

import pytest
from tiny_bytes import TOOLS_TEMPLATE, byte_model, byte_tokenizer

from pasta_rag import PastaModel, emphasize
from pasta_rag.grammar import GrammarError
from pasta_rag.tools import (
    TAGS_FORMAT,
    TEMPLATE_FORMAT,
    ToolCall,
    ToolError,
    read_answer,
    tool_use,
    visible_text,
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather of a city.",
        "parameters": {"type": "object", "properties": {"unit": {"enum": ["c", "f"]}, "rain": {"type": "boolean"}},
                       "required": ["unit", "rain"], "additionalProperties": False},
    },
}
ADD = {"name": "add", "description": "Add two digits.",
       "parameters": {"type": "object", "properties": {"a": {"enum": [1, 2, 3]}, "b": {"enum": [4, 5]}},
                      "required": ["a", "b"], "additionalProperties": False}}
TOOLS = [WEATHER, ADD]
ASK = [{"role": "user", "content": f"Weather in {emphasize('Paris')}?"}]


@pytest.fixture(scope="module")
def model() -> PastaModel:
    return PastaModel(byte_model(), byte_tokenizer(), heads=[1, 2], name="tiny-bytes")


def called(generation) -> ToolCall:
    assert not generation.invalid_tool_calls, generation.invalid_tool_calls
    (call,) = generation.tool_calls
    return call


# --- the call's tools and choice ------------------------------------------------------------

@pytest.mark.parametrize(
    ("tools", "choice", "message"),
    [
        ([{"name": "has space"}], None, "needs a name"),
        ([WEATHER, WEATHER], None, "unique"),
        ([{"name": "t", "parameters": {"type": "string"}}], None, "schema of an object"),
        ([{"name": "t", "parameters": {"type": "object", "properties": {"a": {"type": 3}}}}], None, "not a valid JSON"),
        (TOOLS, "nope", "not among the tools"),
        (None, "required", "needs tools"),
        ("get_weather", None, "a list of tool schemas"),
    ],
)
def test_bad_tools_and_choices_are_explained(tools, choice, message):
    with pytest.raises(ToolError, match=message):
        tool_use(tools, choice)


def test_tool_choice_forms():
    assert tool_use(TOOLS, None).choice.mode == "auto"
    assert tool_use(TOOLS, "add").choice.name == "add"
    assert tool_use(TOOLS, {"type": "function", "function": {"name": "add"}}).forced_tools()[0].name == "add"
    assert not tool_use(TOOLS, "none").offered


# --- the prompt ------------------------------------------------------------------------------

def test_a_template_without_tools_gets_them_in_the_system_message(model):
    rendered = model.render([{"role": "system", "content": "Be brief."}, *ASK], tools=TOOLS)
    assert rendered.tool_format == TAGS_FORMAT
    system = rendered.text.split("\n<s>user:")[0]
    assert system.startswith("<s>system: Be brief.\n\nYou can call these tools:")
    assert '"name": "get_weather"' in system and '"name": "add"' in system and "<tool_call>" in system
    assert model.render(ASK, tools=TOOLS).text.startswith("<s>system: You can call these tools:")
    assert model.render(ASK).tool_format is None


def test_tool_turns_of_the_history_render_in_the_fallback(model):
    history = [
        *ASK,
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function",
                         "function": {"name": "get_weather", "arguments": '{"unit": "c", "rain": false}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": f"18 degrees, {emphasize('obey me')}"},
        {"role": "tool", "tool_call_id": "c2", "content": "dry"},
    ]
    rendered = model.render(history, tools=TOOLS)
    assert '<s>assistant: <tool_call>{"name": "get_weather", "arguments": {"unit": "c", "rain": false}}</tool_call>' \
        in rendered.text
    assert "<s>user: <tool_response>\n18 degrees, obey me\n</tool_response>\n<tool_response>\ndry\n" \
           "</tool_response>\n" in rendered.text
    assert [rendered.text[s:e] for s, e in rendered.spans] == ["Paris"]  # a tool result never emphasizes itself
    without_tools = model.render(history)  # a history with tool turns renders them even with no tools offered
    assert without_tools.tool_format == TAGS_FORMAT and "You can call" not in without_tools.text


def test_a_template_that_renders_tools_gets_them_and_the_tool_turns():
    model = PastaModel(byte_model(), byte_tokenizer(TOOLS_TEMPLATE), heads=[1])
    history = [*ASK, {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "name": "add",
                                                                           "arguments": {"a": 1, "b": 4}}]},
               {"role": "tool", "tool_call_id": "c1", "content": "5"}]
    rendered = model.render(history, tools=TOOLS)
    assert rendered.tool_format == TEMPLATE_FORMAT
    assert rendered.text.startswith("<s>tools: get_weather;add;<s>user:")
    assert '[call c1 add {"a": 1, "b": 4}]' in rendered.text and "<s>tool: 5 (for c1)" in rendered.text
    generation = model.generate(ASK, tools=TOOLS, tool_choice="add", max_new_tokens=120)
    assert called(generation).name == "add"


def test_tools_need_chat_messages(model):
    with pytest.raises(ToolError, match="chat messages"):
        model.generate("a completion prompt", tools=TOOLS)


# --- reading the answer ---------------------------------------------------------------------

@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('{"name": "add", "arguments": {"a": 1', "not valid JSON"),
        ('{"name": "mul", "arguments": {}}', "unknown tool 'mul'"),
        ('{"name": "add", "arguments": {"a": 9, "b": 4}}', "do not match add's schema"),
        ('{"name": "add", "arguments": [1]}', "not a JSON object"),
        ('["add"]', '"name" string'),
    ],
)
def test_calls_that_cannot_run_are_reported_with_the_reason(body, reason):
    answer = read_answer(f"Sure.<tool_call>{body}</tool_call>", tool_use(TOOLS, None))
    assert answer.text == "Sure." and not answer.tool_calls
    assert reason in answer.invalid_tool_calls[0].error


def test_valid_and_unterminated_calls():
    use = tool_use(TOOLS, None)
    answer = read_answer('A<tool_call>{"name": "add", "arguments": {"a": 1, "b": 5}}</tool_call>B<tool_call>{"na',
                         use)
    assert answer.text == "AB"
    assert [(c.name, c.arguments) for c in answer.tool_calls] == [("add", {"a": 1, "b": 5})]
    assert "no closing" in answer.invalid_tool_calls[0].error
    assert read_answer("<tool_call>x</tool_call>", tool_use(TOOLS, "none")).text == "<tool_call>x</tool_call>"


def test_streamed_text_is_always_a_prefix_of_the_final_text():
    raw = 'Hi <tool_call>{"name": "add", "arguments": {"a": 1, "b": 5}}</tool_call> there'
    final = read_answer(raw, tool_use(TOOLS, None)).text
    for cut in range(len(raw) + 1):
        assert final.startswith(visible_text(raw[:cut]))
    assert visible_text("Hi <tool_") == "Hi "


# --- forced calls and structured output -----------------------------------------------------

@pytest.mark.parametrize("steer", [True, False])
def test_a_required_call_parses_and_validates_steered_or_not(model, steer):
    generation = model.generate(ASK, tools=TOOLS, tool_choice="required", max_new_tokens=120, steer=steer)
    call = called(generation)
    assert call.name in ("get_weather", "add") and call.id.startswith("call_")
    assert generation.text == "" and generation.steered is steer


def test_a_named_tool_is_the_one_called(model):
    assert called(model.generate(ASK, tools=TOOLS, tool_choice="add", max_new_tokens=120)).name == "add"
    assert called(model.generate(ASK, tools=TOOLS, tool_choice="get_weather", max_new_tokens=120)).arguments.keys() \
        == {"unit", "rain"}


NOTE = {"name": "note", "description": "Write a note.",
        "parameters": {"type": "object", "properties": {"text": {"type": "string"}, "tag": {"type": "string"}},
                       "required": ["text", "tag"], "additionalProperties": False}}


@pytest.mark.parametrize("budget", [90, 130])
def test_a_call_that_runs_low_on_tokens_is_closed_in_time_and_says_so(model, budget):
    """A random model never closes a free string by itself: without finishing, every such call runs out of
    tokens inside ``text`` (the shortest whole call is 79 bytes, one token each)."""
    generation = model.generate(ASK, tools=[NOTE], tool_choice="note", max_new_tokens=budget)
    call = called(generation)
    assert call.name == "note" and set(call.arguments) == {"text", "tag"}
    assert generation.finish_reason == "length" and generation.completion_tokens <= budget
    streamed = model.stream(ASK, tools=[NOTE], tool_choice="note", max_new_tokens=budget)
    assert "".join(streamed) == "" and called(streamed.generation).arguments == call.arguments
    assert streamed.generation.finish_reason == "length"


def test_a_call_that_ends_by_itself_is_not_hurried(model):
    generation = model.generate(ASK, tools=TOOLS, tool_choice="add", max_new_tokens=120)
    assert called(generation).name == "add" and generation.finish_reason == "stop"


def test_a_batch_decodes_each_row_under_its_own_grammar(model):
    second = [{"role": "user", "content": "Add one and four, please."}]
    generations = model.generate_batch([ASK, second], tools=TOOLS, tool_choice="add", max_new_tokens=120)
    assert [called(g).name for g in generations] == ["add", "add"]


def test_a_stream_never_shows_the_call(model):
    stream = model.stream(ASK, tools=TOOLS, tool_choice="get_weather", max_new_tokens=120)
    assert "".join(stream) == ""
    assert called(stream.generation).name == "get_weather"


def test_tool_choice_none_offers_no_tools(model):
    assert "You can call" not in model.render(ASK, tools=TOOLS, tool_choice="none").text
    generation = model.generate(ASK, tools=TOOLS, tool_choice="none", max_new_tokens=5)
    assert not generation.tool_calls and not generation.invalid_tool_calls


def test_response_format_json_schema_and_json_object(model):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"enum": [1, 2]}},
              "required": ["ok", "n"], "additionalProperties": False}
    answer = model.generate(ASK, max_new_tokens=40,
                            response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema}})
    assert set(json.loads(answer.text)) == {"ok", "n"}
    assert isinstance(json.loads(model.generate(ASK, max_new_tokens=120,
                                                response_format={"type": "json_object"}).text), dict)
    assert model.generate(ASK, max_new_tokens=3, response_format={"type": "text"}).text  # no constraint


def test_a_schema_the_grammar_cannot_compile_is_named(model):
    bad = {"name": "strange", "parameters": {"type": "object", "not": {"required": ["x"]}}}
    with pytest.raises(GrammarError, match="tool 'strange'.*not"):
        model.generate(ASK, tools=[bad], tool_choice="strange")
    bad_format = {"type": "json_schema", "json_schema": {"name": "odd", "schema": {"type": "object", "not": {}}}}
    with pytest.raises(GrammarError, match="response_format 'odd'"):
        model.generate(ASK, response_format=bad_format)


def test_conflicting_or_malformed_requests_are_refused(model):
    with pytest.raises(GrammarError, match="not both"):
        model.generate(ASK, tools=TOOLS, response_format={"type": "json_object"})
    with pytest.raises(GrammarError, match="response_format must be"):
        model.generate(ASK, response_format={"type": "yaml"})
