"""The core's answers as LlamaIndex responses: whole ones with their token usage, and streamed deltas.

A streamed response is closed when its consumer stops early; closing the core's stream is what
stops the generation thread, so every adapter here closes it on the way out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    MessageRole,
    TextBlock,
    ToolCallBlock,
)

from pasta_rag import AsyncTextStream, Generation, TextStream

R = TypeVar("R")


def _usage(generation: Generation) -> dict[str, Any]:
    return {
        "usage": {
            "prompt_tokens": generation.prompt_tokens,
            "completion_tokens": generation.completion_tokens,
            "total_tokens": generation.prompt_tokens + generation.completion_tokens,
        },
        "finish_reason": generation.finish_reason,
        "steered": generation.steered,
    }


def completion_response(generation: Generation) -> CompletionResponse:
    info = _usage(generation)
    return CompletionResponse(text=generation.text, raw=info, additional_kwargs=dict(info["usage"]))


def chat_response(generation: Generation) -> ChatResponse:
    """The answer; its tool calls as ``ToolCallBlock``s, the calls that cannot run (with the reason) in
    ``raw["invalid_tool_calls"]``."""
    info = _usage(generation)
    if generation.invalid_tool_calls:
        info["invalid_tool_calls"] = [{"id": c.id, "name": c.name, "arguments": c.arguments, "error": c.error}
                                      for c in generation.invalid_tool_calls]
    blocks: list = [TextBlock(text=generation.text)] if generation.text or not generation.tool_calls else []
    blocks += [ToolCallBlock(tool_call_id=c.id, tool_name=c.name, tool_kwargs=c.arguments)
               for c in generation.tool_calls]
    return ChatResponse(
        message=ChatMessage(role=MessageRole.ASSISTANT, blocks=blocks),
        raw=info,
        additional_kwargs=dict(info["usage"]),
    )


def completion_delta(text: str, delta: str) -> CompletionResponse:
    return CompletionResponse(text=text, delta=delta)


def chat_delta(text: str, delta: str) -> ChatResponse:
    return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=delta)


def stream_responses(chunks: TextStream | Iterator[str], respond: Callable[[str, str], R],
                     last: Callable[[Generation], R] | None = None) -> Iterator[R]:
    """One response per chunk, each holding the text so far and its delta; then, with ``last``, one
    for the finished answer (its tool calls), when the stream has any."""
    text = ""
    try:
        for delta in chunks:
            text += delta
            yield respond(text, delta)
    finally:
        chunks.close()  # type: ignore[union-attr]
    generation = getattr(chunks, "generation", None)
    if last is not None and generation is not None and (generation.tool_calls or generation.invalid_tool_calls):
        yield last(generation)


async def astream_responses(chunks: AsyncTextStream, respond: Callable[[str, str], R],
                            last: Callable[[Generation], R] | None = None) -> AsyncIterator[R]:
    """``stream_responses`` over the core's async stream (the event loop is never blocked)."""
    text = ""
    try:
        async for delta in chunks:
            text += delta
            yield respond(text, delta)
    finally:
        await chunks.aclose()
    generation = getattr(chunks, "generation", None)
    if last is not None and generation is not None and (generation.tool_calls or generation.invalid_tool_calls):
        yield last(generation)


def last_chat_delta(generation: Generation) -> ChatResponse:
    """A stream's closing response: the whole answer with its tool calls, and no new text."""
    response = chat_response(generation)
    response.delta = ""
    return response
