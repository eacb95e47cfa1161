"""The core's answers as LlamaIndex responses: whole ones with their token usage, and streamed deltas.

A streamed response is closed when its consumer stops early; closing the core's stream is what
stops the generation thread, so every adapter here closes it on the way out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

from llama_index.core.base.llms.types import ChatMessage, ChatResponse, CompletionResponse, MessageRole

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
    info = _usage(generation)
    return ChatResponse(
        message=ChatMessage(role=MessageRole.ASSISTANT, content=generation.text),
        raw=info,
        additional_kwargs=dict(info["usage"]),
    )


def completion_delta(text: str, delta: str) -> CompletionResponse:
    return CompletionResponse(text=text, delta=delta)


def chat_delta(text: str, delta: str) -> ChatResponse:
    return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=delta)


def stream_responses(chunks: TextStream | Iterator[str], respond: Callable[[str, str], R]) -> Iterator[R]:
    """One response per chunk, each holding the text so far and its delta."""
    text = ""
    try:
        for delta in chunks:
            text += delta
            yield respond(text, delta)
    finally:
        chunks.close()  # type: ignore[union-attr]


async def astream_responses(chunks: AsyncTextStream, respond: Callable[[str, str], R]) -> AsyncIterator[R]:
    """``stream_responses`` over the core's async stream (the event loop is never blocked)."""
    text = ""
    try:
        async for delta in chunks:
            text += delta
            yield respond(text, delta)
    finally:
        await chunks.aclose()
