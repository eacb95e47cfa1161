"""A core stream -> server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``.

The stream runs in its own thread (``PastaModel.astream``), so the event loop and the batcher go on
serving other requests. When the client goes away the server cancels this generator; closing the
core stream then stops the generation at its next token instead of decoding for nobody.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable

from pydantic import BaseModel

from ..errors import PastaError
from ..streaming import AsyncTextStream
from .answers import finish_reason, tool_call_deltas
from .calls import CoreCall
from .errors import from_core, internal_error
from .schemas import (
    ChatCompletionChunk,
    ChunkChoice,
    Completion,
    CompletionChoice,
    Delta,
    DeltaToolCall,
    PastaReport,
    Usage,
)

log = logging.getLogger("pasta_rag.server")

DONE = "data: [DONE]\n\n"


def event(body: BaseModel | dict) -> str:
    """One SSE event; a chunk's ``pasta`` report appears only on the chunk that finishes the answer."""
    data = body.model_dump(mode="json") if isinstance(body, BaseModel) else body
    if data.get("pasta", True) is None:
        del data["pasta"]
    return f"data: {json.dumps(data)}\n\n"


Chunk = Callable[..., BaseModel]
"""Builds one chunk: ``chunk(text=..., finish_reason=..., usage=..., pasta=..., first=..., tool_calls=...)``."""


def chat_chunks(completion_id: str, created: int, model: str) -> Chunk:
    def chunk(text: str | None = None, finish_reason: str | None = None, usage: Usage | None = None,
              pasta: PastaReport | None = None, first: bool = False, last: bool = False,
              tool_calls: list[DeltaToolCall] | None = None) -> BaseModel:
        delta = Delta(role="assistant" if first else None, content=text, tool_calls=tool_calls)
        choices = [] if last else [ChunkChoice(delta=delta, finish_reason=finish_reason)]
        return ChatCompletionChunk(id=completion_id, created=created, model=model, choices=choices, usage=usage,
                                   pasta=pasta)

    return chunk


def completion_chunks(completion_id: str, created: int, model: str) -> Chunk:
    def chunk(text: str | None = None, finish_reason: str | None = None, usage: Usage | None = None,
              pasta: PastaReport | None = None, first: bool = False, last: bool = False,
              tool_calls: None = None) -> BaseModel:  # a text completion has no tools (its request refuses them)
        choices = [] if last else [CompletionChoice(text=text or "", finish_reason=finish_reason)]
        return Completion(id=completion_id, created=created, model=model, choices=choices, usage=usage, pasta=pasta)

    return chunk


async def sse(stream: AsyncTextStream, call: CoreCall, chunk: Chunk, include_usage: bool) -> AsyncIterator[str]:
    """The events of one streamed answer: its text chunks, its tool calls (the core never streams the
    text of a call: they come whole, once the answer is done), the finish reason (with what was
    steered), the usage when asked for (``stream_options.include_usage``), then ``[DONE]``."""
    try:
        yield event(chunk(text="", first=True))
        async for text in stream:
            yield event(chunk(text=text))
        generation = stream.generation
        for delta in tool_call_deltas(generation):
            yield event(chunk(tool_calls=delta))
        yield event(chunk(finish_reason=finish_reason(generation), pasta=call.report))
        if include_usage:
            usage = Usage(prompt_tokens=generation.prompt_tokens, completion_tokens=generation.completion_tokens,
                          total_tokens=generation.prompt_tokens + generation.completion_tokens)
            yield event(chunk(usage=usage, last=True))
        yield DONE
    except PastaError as error:  # the status line has gone out: the error travels as an event, as OpenAI's do
        yield event(from_core(error).body())
    except Exception:
        log.exception("A streamed generation failed")
        yield event(internal_error().body())
    finally:
        await stream.aclose()
