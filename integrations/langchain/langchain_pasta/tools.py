"""LangChain's tool calling and structured output in the core's terms.

``bind_tools`` turns LangChain tools (BaseTool, functions, pydantic models, TypedDicts, JSON schemas)
into the core's OpenAI function schemas and LangChain's tool choices (``"any"``, ``True``, a name)
into the core's; ``with_structured_output`` picks the core mechanism per method: a forced call
(``function_calling``), or a JSON grammar (``json_schema``, ``json_mode``). Both forced paths are
decoded under a grammar in the core, so the model's output parses.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.messages.tool import InvalidToolCall, ToolCall, ToolCallChunk
from langchain_core.output_parsers import JsonOutputKeyToolsParser, JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import PydanticToolsParser
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass

from pasta_rag import Generation
from pasta_rag.tools import closed_schema

ToolLike = Mapping[str, Any] | type | Callable | BaseTool

STRUCTURED_METHODS = ("json_schema", "function_calling", "json_mode")


def openai_tools(tools: Sequence[ToolLike], strict: bool | None = None) -> list[dict[str, Any]]:
    """The tools in OpenAI's function format; unless ``strict=False``, their objects take only the keys
    they list (OpenAI's strict mode): a small model under a grammar that allows any extra key may add some."""
    if isinstance(tools, (str, Mapping)) or not isinstance(tools, Sequence):
        raise TypeError(f"bind_tools takes a list of tools, got {type(tools).__name__}.")
    converted = [convert_to_openai_tool(tool) for tool in tools]
    if strict is not False:
        for item in converted:
            item["function"]["parameters"] = closed_schema(item["function"].get("parameters", {"type": "object"}))
    return converted


def core_tool_choice(choice: Any, tools: Sequence[Mapping[str, Any]]) -> str | None:
    """LangChain's tool_choice as the core's: "auto", "none", "required" or a bound tool's name.

    "any" and "required" force a call to some tool; ``True`` forces the only bound tool; a name (or
    ``{"type": "function", "function": {"name": ...}}``) must be one of the bound tools, checked here,
    at bind time, rather than at the first call.
    """
    names = [tool["function"]["name"] for tool in tools]
    if choice is None or choice is False:
        return None
    if choice is True:
        if len(names) != 1:
            raise ValueError(f"tool_choice=True forces the only bound tool, but {len(names)} are bound {names}; "
                             "name the one to call.")
        return names[0]
    if isinstance(choice, Mapping):
        function = choice.get("function")
        choice = function.get("name") if isinstance(function, Mapping) else choice.get("name")
    if choice in ("auto", "none"):
        return choice
    if choice in ("any", "required"):
        return "required"
    if isinstance(choice, str) and choice in names:
        return choice
    raise ValueError(f"tool_choice={choice!r} names no bound tool; the tools are {names} (or pass 'auto', 'any', "
                     "'required' or 'none').")


def message_of(generation: Generation, **fields: Any) -> AIMessage:
    """The answer as an AIMessage: its text, valid calls as ``tool_calls``, the others as ``invalid_tool_calls``."""
    return AIMessage(
        content=generation.text,
        tool_calls=[ToolCall(name=c.name, args=c.arguments, id=c.id, type="tool_call") for c in generation.tool_calls],
        invalid_tool_calls=[InvalidToolCall(name=c.name, args=c.arguments, id=c.id, error=c.error,
                                            type="invalid_tool_call") for c in generation.invalid_tool_calls],
        **fields,
    )


def call_chunks(generation: Generation) -> AIMessageChunk | None:
    """A stream's tool calls, as ``tool_call_chunks`` of one chunk (the core holds a call back until it
    is complete). LangChain rebuilds calls from chunk arguments, so a call whose arguments are JSON but
    break the schema reads as a tool call in the merged stream; ``invoke`` reports it invalid."""
    calls = [*generation.tool_calls, *generation.invalid_tool_calls]
    if not calls:
        return None
    chunks = [ToolCallChunk(name=call.name, id=call.id, index=index, type="tool_call_chunk",
                            args=json.dumps(call.arguments) if isinstance(call.arguments, dict) else call.arguments)
              for index, call in enumerate(calls)]
    return AIMessageChunk(content="", tool_call_chunks=chunks)


def structured_runnable(
    model: Any, schema: Mapping[str, Any] | type, method: str, include_raw: bool, strict: bool | None,
    kwargs: Mapping[str, Any],
) -> Runnable:
    """``with_structured_output``: the bound model and the parser of its answer."""
    if kwargs:
        raise TypeError(f"with_structured_output got unknown argument(s) {sorted(kwargs)}.")
    if method not in STRUCTURED_METHODS:
        raise ValueError(f"method must be one of {list(STRUCTURED_METHODS)}, got {method!r}.")
    if schema is None:
        raise ValueError("with_structured_output needs a schema (a pydantic model, a TypedDict or a JSON schema).")
    is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
    trace = {"ls_structured_output_format": {"kwargs": {"method": method}, "schema": convert_to_json_schema(schema)}}
    if method == "function_calling":
        (tool,) = openai_tools([schema], strict)
        name = tool["function"]["name"]
        bound = model.bind_tools([tool], tool_choice=name, **trace)
        parser: Runnable = (PydanticToolsParser(tools=[schema], first_tool_only=True) if is_pydantic  # type: ignore[list-item]
                            else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True))
    else:
        if method == "json_schema":
            json_schema = convert_to_json_schema(schema)
            json_schema = json_schema if strict is False else closed_schema(json_schema)
            response_format = {"type": "json_schema",
                               "json_schema": {"name": json_schema.get("title", "output"), "schema": json_schema}}
        else:
            response_format = {"type": "json_object"}
        bound = model.bind(response_format=response_format, **trace)
        parser = PydanticOutputParser(pydantic_object=schema) if is_pydantic else JsonOutputParser()  # type: ignore[arg-type]
    if not include_raw:
        return bound | parser
    parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
    fallback = RunnablePassthrough.assign(parsed=lambda _: None)
    return RunnableMap(raw=bound) | parsed.with_fallbacks([fallback], exception_key="parsing_error")
