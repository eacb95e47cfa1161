"""A core Generation -> OpenAI's answer shapes: the assistant message, its finish reason, and the
stream deltas of its tool calls."""

from __future__ import annotations

import json

from ..batching import Generation
from ..tools import ToolCall as CoreToolCall
from .schemas import AssistantMessage, DeltaFunction, DeltaToolCall, FunctionCall, InvalidToolCall, ToolCall


def finish_reason(answer: Generation) -> str:
    """``tool_calls`` when the model called a tool and ended by itself (OpenAI's), else the core's ``stop`` /
    ``length``: a call the grammar closed early for want of tokens may have its last argument cut short, and
    OpenAI says ``length`` for such a call too."""
    return "tool_calls" if answer.tool_calls and answer.finish_reason == "stop" else answer.finish_reason


def assistant_message(answer: Generation) -> AssistantMessage:
    """The answer's text (None when it is tool calls only), its calls, and the calls that cannot run."""
    calls = [tool_call(call) for call in answer.tool_calls]
    invalid = [InvalidToolCall(id=call.id, name=call.name, arguments=call.arguments, error=call.error)
               for call in answer.invalid_tool_calls]
    return AssistantMessage(content=None if calls and not answer.text else answer.text,
                            tool_calls=calls or None, invalid_tool_calls=invalid or None)


def tool_call(call: CoreToolCall) -> ToolCall:
    return ToolCall(id=call.id, function=FunctionCall(name=call.name, arguments=arguments(call)))


def arguments(call: CoreToolCall) -> str:
    return json.dumps(call.arguments, ensure_ascii=False)


def tool_call_deltas(answer: Generation) -> list[list[DeltaToolCall]]:
    """The calls as OpenAI streams them, one delta per chunk: a call's id and name (with empty
    arguments), then its arguments; ``index`` says which call a piece belongs to."""
    deltas = []
    for index, call in enumerate(answer.tool_calls):
        deltas.append([DeltaToolCall(index=index, id=call.id, type="function",
                                     function=DeltaFunction(name=call.name, arguments=""))])
        deltas.append([DeltaToolCall(index=index, function=DeltaFunction(arguments=arguments(call)))])
    return deltas
