"""Tool calling: tools as JSON schemas (OpenAI's function format), the call's tool choice, how the
prompt shows them, and the model's calls read back out of its answer.

A model whose chat template renders tools gets them through it (``apply_chat_template(tools=...)``).
A template without tool support, or no template at all (both packaged models), gets one fallback,
``TAGS_FORMAT``: the tools described in the system message, and calls written as
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``. Either way the answer is read with the
same ``<tool_call>`` convention (the one small open models are trained on), so a forced call, which the
grammar writes in that form, always parses.

Tool results are text nobody vouches for (a web page, a file, another service): their marker characters
are stripped before they reach the prompt, so a tool result can never emphasize itself.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import jinja2
import jinja2.meta
import jsonschema
from transformers import PreTrainedTokenizerBase

from .emphasis import strip_markers
from .errors import ToolError

ToolSchema = Mapping[str, Any]
"""A tool: OpenAI's ``{"type": "function", "function": {"name", "description", "parameters"}}``, or the inner dict."""
ToolChoiceLike = str | Mapping[str, Any]
"""``"auto"``, ``"none"``, ``"required"``, a tool's name, or ``{"type": "function", "function": {"name": ...}}``."""

TEMPLATE_FORMAT = "chat_template"
"""The model's own chat template rendered the tools."""
TAGS_FORMAT = "tool_call_tags"
"""The fallback: tools in the system message, calls as ``<tool_call>{...}</tool_call>``."""

CALL_START = "<tool_call>"
CALL_END = "</tool_call>"
RESULT_START = "<tool_response>"
RESULT_END = "</tool_response>"


@dataclass(frozen=True)
class Tool:
    """A function the model may call; ``parameters`` is the JSON schema of its arguments (an object)."""

    name: str
    description: str
    parameters: Mapping[str, Any]

    def openai(self) -> dict[str, Any]:
        """OpenAI's function format, the one chat templates read."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": dict(self.parameters)}}


@dataclass(frozen=True)
class ToolChoice:
    """``auto`` (the model decides), ``none`` (tools are not offered), ``required`` (a call to any tool),
    or ``tool`` (a call to the tool named ``name``). The last two are decoded under a grammar."""

    mode: str
    name: str | None = None

    @property
    def forced(self) -> bool:
        return self.mode in ("required", "tool")


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class InvalidToolCall:
    """A call the model wrote that cannot be run; ``error`` says why (bad JSON, unknown tool, bad arguments)."""

    id: str
    name: str | None
    arguments: str
    """The raw text of the call (or of its arguments when they parsed), for the caller to inspect."""
    error: str


@dataclass(frozen=True)
class ToolUse:
    """One call's tools and tool choice, checked (``tool_use``)."""

    tools: tuple[Tool, ...]
    choice: ToolChoice

    @property
    def offered(self) -> bool:
        """Whether the prompt shows the tools and the answer is read for calls (``tool_choice="none"``: no)."""
        return bool(self.tools) and self.choice.mode != "none"

    def tool(self, name: str) -> Tool | None:
        return next((tool for tool in self.tools if tool.name == name), None)

    def forced_tools(self) -> tuple[Tool, ...]:
        """The tools a forced call may name."""
        return tuple(t for t in self.tools if t.name == self.choice.name) if self.choice.mode == "tool" else self.tools


# --- the call's tools and choice -------------------------------------------------------------

def tool_use(tools: Sequence[Mapping[str, Any]] | None, tool_choice: str | Mapping[str, Any] | None) -> ToolUse | None:
    """Check ``tools`` (OpenAI function dicts, or bare ``{"name", "description", "parameters"}``) and
    ``tool_choice`` ("auto" by default; "none", "required", a tool's name, or
    ``{"type": "function", "function": {"name": ...}}``). None when the call has neither."""
    if tools is None and tool_choice is None:
        return None
    if tools is not None and (isinstance(tools, (str, Mapping)) or not isinstance(tools, Sequence)):
        raise ToolError(f"tools must be a list of tool schemas, got {type(tools).__name__}.")
    checked = tuple(_checked_tool(tool) for tool in tools or ())
    names = [tool.name for tool in checked]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ToolError(f"Tool names must be unique; {duplicates} appear more than once.")
    choice = _checked_choice(tool_choice, names)
    if choice.mode != "none" and not checked:
        raise ToolError(f"tool_choice={tool_choice!r} needs tools; pass tools=[...].")
    return ToolUse(checked, choice)


def _checked_tool(tool: Any) -> Tool:
    if not isinstance(tool, Mapping):
        raise ToolError(f"A tool is a JSON schema dict (OpenAI's function format), got {type(tool).__name__}.")
    if tool.get("type") == "function" and isinstance(tool.get("function"), Mapping):
        tool = tool["function"]
    name = tool.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", name):
        raise ToolError(f"A tool needs a name of letters, digits, '_', '.' or '-' (at most 64), got {name!r}.")
    description = tool.get("description") or ""
    if not isinstance(description, str):
        raise ToolError(f"Tool {name!r}: description must be a string, got {type(description).__name__}.")
    parameters = tool.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(parameters, Mapping) or parameters.get("type", "object") != "object":
        raise ToolError(f"Tool {name!r}: parameters must be a JSON schema of an object, got {parameters!r}.")
    try:
        jsonschema.validators.validator_for(parameters).check_schema(parameters)
    except jsonschema.SchemaError as error:
        raise ToolError(f"Tool {name!r}: parameters is not a valid JSON schema: {error.message}") from None
    return Tool(name, description, dict(parameters))


def _checked_choice(choice: Any, names: Sequence[str]) -> ToolChoice:
    if choice is None:
        return ToolChoice("auto")
    if isinstance(choice, Mapping):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else choice.get("name")
        if not isinstance(name, str):
            raise ToolError(f"tool_choice {dict(choice)!r} names no tool; use {{'type': 'function', "
                            "'function': {'name': ...}}.")
        choice = name
    elif not isinstance(choice, str):
        raise ToolError(f"tool_choice must be 'auto', 'none', 'required' or a tool's name, got {choice!r}.")
    if choice in ("auto", "none", "required"):
        return ToolChoice(choice)
    if choice not in names:
        raise ToolError(f"tool_choice names {choice!r}, which is not among the tools {list(names)}.")
    return ToolChoice("tool", choice)


# --- the prompt --------------------------------------------------------------------------

def template_renders_tools(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the model's chat template reads the ``tools`` variable (the marker of tool support)."""
    template = getattr(tokenizer, "chat_template", None)
    return isinstance(template, str) and "tools" in _template_variables(template)


@cache
def _template_variables(template: str) -> frozenset[str]:
    try:
        return frozenset(jinja2.meta.find_undeclared_variables(jinja2.Environment().parse(template)))
    except jinja2.TemplateSyntaxError:
        return frozenset()  # transformers will say what is wrong with it when it renders


def template_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Messages for a template that renders tools: Hugging Face's tool-call message format."""
    converted = []
    for message in messages:
        item: dict[str, Any] = {"role": message["role"], "content": _content(message)}
        if message.get("tool_calls"):
            item["tool_calls"] = [{"id": call.id, "type": "function",
                                   "function": {"name": call.name, "arguments": call.arguments}}
                                  for call in history_calls(message)]
        if message["role"] == "tool":
            item["content"] = strip_markers(item["content"])
            for key in ("tool_call_id", "name"):
                if message.get(key):
                    item[key] = message[key]
        converted.append(item)
    return converted


def tags_messages(messages: Sequence[Mapping[str, Any]], use: ToolUse | None) -> list[dict[str, str]]:
    """Messages for the fallback format: the tools appended to the system message (one is added when
    there is none), earlier calls as ``<tool_call>`` lines of their assistant turn, and tool results as
    a user turn of ``<tool_response>`` blocks (consecutive results share one turn), which every chat
    template accepts, where a ``tool`` role is refused by many."""
    converted: list[dict[str, str]] = []
    for message in messages:
        role, content = message["role"], _content(message)
        if role == "tool":
            block = f"{RESULT_START}\n{strip_markers(content)}\n{RESULT_END}"
            if converted and converted[-1].get("_results"):
                converted[-1]["content"] += "\n" + block
            else:
                converted.append({"role": "user", "content": block, "_results": "1"})
            continue
        if message.get("tool_calls"):
            calls = "\n".join(call_text(call.name, call.arguments) for call in history_calls(message))
            content = f"{content}\n{calls}" if content else calls
        converted.append({"role": role, "content": content})
    converted = [{"role": m["role"], "content": m["content"]} for m in converted]
    if use is not None and use.offered:
        instructions = tools_system_text(use)
        if converted and converted[0]["role"] == "system":
            converted[0]["content"] = f"{converted[0]['content']}\n\n{instructions}"
        else:
            converted.insert(0, {"role": "system", "content": instructions})
    return converted


def tools_system_text(use: ToolUse) -> str:
    """The fallback's description of the tools, added to the system message."""
    listed = "\n".join(json.dumps(tool.openai(), ensure_ascii=False) for tool in use.tools)
    how = (f"To call a tool, write {CALL_START}{{\"name\": <tool name>, \"arguments\": <its arguments as a JSON "
           f"object>}}{CALL_END}. Call a tool only when you need it; otherwise answer directly.")
    if use.choice.mode == "required":
        how += " Call one of the tools now."
    elif use.choice.mode == "tool":
        how += f" Call the tool {use.choice.name} now."
    return f"You can call these tools:\n<tools>\n{listed}\n</tools>\n{how}"


def call_text(name: str, arguments: Mapping[str, Any]) -> str:
    return f"{CALL_START}{json.dumps({'name': name, 'arguments': dict(arguments)}, ensure_ascii=False)}{CALL_END}"


def history_calls(message: Mapping[str, Any]) -> list[ToolCall]:
    """The tool calls of an assistant message of the history: ``{"id", "name", "arguments"}`` or OpenAI's
    ``{"id", "type": "function", "function": {"name", "arguments": <JSON string or dict>}}``."""
    if message["role"] != "assistant":
        raise ToolError(f"Only assistant messages carry tool_calls; a {message['role']!r} message has some.")
    calls = message["tool_calls"]
    if isinstance(calls, (str, Mapping)) or not isinstance(calls, Sequence):
        raise ToolError(f"tool_calls must be a list of calls, got {type(calls).__name__}.")
    return [_history_call(call) for call in calls]


def _history_call(call: Any) -> ToolCall:
    if not isinstance(call, Mapping):
        raise ToolError(f"A tool call is a dict with name and arguments, got {call!r}.")
    inner = call["function"] if isinstance(call.get("function"), Mapping) else call
    name, arguments = inner.get("name"), inner.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as error:
            raise ToolError(f"The arguments of the earlier call to {name!r} are not JSON ({error}).") from None
    if not isinstance(name, str) or not isinstance(arguments, Mapping):
        raise ToolError(f"A tool call needs a name and an arguments object, got {dict(call)!r}.")
    return ToolCall(str(call.get("id") or ""), name, {k: _unmarked(v) for k, v in arguments.items()})


def _unmarked(value: Any) -> Any:
    return strip_markers(value) if isinstance(value, str) else value


def closed_schema(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` on every object that does not say otherwise (OpenAI's
    strict mode). The integrations send tools this way by default: under a grammar that allows any extra
    key, a small model may add some."""
    if isinstance(schema, list):
        return [closed_schema(item) for item in schema]
    if not isinstance(schema, Mapping):
        return schema
    result = {key: value if key in ("enum", "const", "default", "examples") else closed_schema(value)
              for key, value in schema.items()}
    if result.get("type") == "object" and "additionalProperties" not in result:
        result["additionalProperties"] = False
    return result


def _content(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    return "" if content is None else content


# --- the answer --------------------------------------------------------------------------

_CALL = re.compile(re.escape(CALL_START) + r"(.*?)" + re.escape(CALL_END), re.S)


@dataclass(frozen=True)
class ReadAnswer:
    text: str
    """The answer without its tool-call blocks."""
    tool_calls: tuple[ToolCall, ...]
    invalid_tool_calls: tuple[InvalidToolCall, ...]


def read_answer(raw: str, use: ToolUse | None) -> ReadAnswer:
    """Split an answer into its text and its tool calls, each checked against the tools."""
    if use is None or not use.offered:
        return ReadAnswer(raw, (), ())
    valid: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    for match in _CALL.finditer(raw):
        call = parse_call(match.group(1), use)
        (valid if isinstance(call, ToolCall) else invalid).append(call)
    text = _CALL.sub("", raw)
    unterminated = text.find(CALL_START)
    if unterminated >= 0:
        invalid.append(InvalidToolCall(_new_id(), None, text[unterminated + len(CALL_START):],
                                       f"the call has no closing {CALL_END} (the answer ended first)"))
        text = text[:unterminated]
    return ReadAnswer(text, tuple(valid), tuple(invalid))


def visible_text(raw: str) -> str:
    """What a streamed answer may show so far: its text without tool-call blocks, up to an open
    ``<tool_call>``, less a tail that may begin one. Always a prefix of ``read_answer(...).text``."""
    text = _CALL.sub("", raw)
    open_call = text.find(CALL_START)
    if open_call >= 0:
        return text[:open_call]
    for size in range(min(len(CALL_START) - 1, len(text)), 0, -1):
        if text.endswith(CALL_START[:size]):
            return text[: len(text) - size]
    return text


def parse_call(body: str, use: ToolUse) -> ToolCall | InvalidToolCall:
    """One ``<tool_call>`` body: JSON with a known tool's name and arguments valid against its schema."""
    try:
        data = json.loads(body)
    except json.JSONDecodeError as error:
        return InvalidToolCall(_new_id(), None, body, f"the call is not valid JSON: {error}")
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return InvalidToolCall(_new_id(), None, body, 'the call is not a JSON object with a "name" string')
    name = data["name"]
    arguments = data.get("arguments", {})
    raw_arguments = json.dumps(arguments, ensure_ascii=False)
    tool = use.tool(name)
    if tool is None:
        return InvalidToolCall(_new_id(), name, raw_arguments,
                               f"unknown tool {name!r}; the tools are {[t.name for t in use.tools]}")
    if not isinstance(arguments, dict):
        return InvalidToolCall(_new_id(), name, raw_arguments, '"arguments" is not a JSON object')
    error = schema_error(arguments, tool.parameters)
    if error:
        return InvalidToolCall(_new_id(), name, raw_arguments, f"the arguments do not match {name}'s schema: {error}")
    return ToolCall(_new_id(), name, arguments)


def schema_error(instance: Any, schema: Mapping[str, Any]) -> str | None:
    """Why ``instance`` is not valid against ``schema`` (None: it is)."""
    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    if error is None:
        return None
    where = "/".join(str(part) for part in error.absolute_path)
    return f"{error.message} (at {where})" if where else error.message


def _new_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"
