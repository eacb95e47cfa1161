"""Streaming: generation runs in a worker thread and hands each token to the caller as text.

``transformers``' ``generate`` is blocking and pushes tokens to a streamer; the caller wants an
iterator (and, in async code, an async iterator) that it may stop early. The worker thread runs
``generate`` under the call's steering (a ContextVar, so it is entered in that thread), a queue
carries the tokens, and closing the iterator cancels the generation at its next token.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import torch
from transformers.generation.streamers import BaseStreamer

from .batching import Generation, PreparedBatch, answer_text, finish
from .settings import SamplingSettings
from .steering import steering
from .stopping import StopOnText, safe_prefix_length
from .tools import ToolUse, read_answer, visible_text

if TYPE_CHECKING:
    from .engine import PastaModel


class TextStream(Iterator[str]):
    """The chunks of a streamed answer (an iterator of str); ``generation`` is set after the last one."""

    def __init__(self, chunks: Callable[[TextStream], Iterator[str]] | None = None) -> None:
        self.generation: Generation | None = None
        self._chunks: Iterator[str] = chunks(self) if chunks is not None else iter(())

    def __next__(self) -> str:
        return next(self._chunks)

    def close(self) -> None:
        """Stop generating (the worker thread ends at its next token)."""
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()


def stream_text(model: PastaModel, prepared: PreparedBatch, sampling: SamplingSettings) -> TextStream:
    """The answer of a one-prompt batch as text chunks; a stop string is never shown, even in part."""
    return TextStream(lambda sink: _chunks(model, prepared, sampling, sink))


def _chunks(model: PastaModel, prepared: PreparedBatch, sampling: SamplingSettings, sink: TextStream) -> Iterator[str]:
    tokens: queue.Queue = queue.Queue()
    cancel = threading.Event()
    stopper = StopOnText(model.tokenizer, prepared.batch.prompt_len, sampling.stop, cancel)
    hooks = prepared.decoding_hooks(stopper)

    def run() -> None:
        try:
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            with torch.no_grad(), steering(prepared.states):
                model.model.generate(
                    **prepared.generate_inputs(model.device),
                    **hooks,
                    streamer=QueueStreamer(tokens),
                )
        except BaseException as error:  # handed to the consumer, which re-raises it
            tokens.put(error)
        finally:
            tokens.put(None)

    worker = threading.Thread(target=run, name="pasta-rag-generate", daemon=True)
    worker.start()
    generated: list[int] = []
    shown = 0
    try:
        while (item := tokens.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            generated.extend(item)
            raw, stopped = answer_text(model, generated, sampling.stop)  # type: ignore[arg-type]
            if stopped:
                break
            text = _shown(raw[: safe_prefix_length(raw, sampling.stop)], prepared.tools)
            if len(text) > shown:
                yield text[shown:]
                shown = len(text)
        raw, _ = answer_text(model, generated, sampling.stop)  # type: ignore[arg-type]
        text = read_answer(raw, prepared.tools).text  # tool-call blocks are the Generation's, never the text's
        if len(text) > shown:
            yield text[shown:]
        sink.generation = finish(
            model, torch.tensor(generated, dtype=torch.long), prepared.prompt_tokens(0), sampling,
            prepared.steered_rows[0], prepared.tools, prepared.grammar_ends(hooks).get(0),
        )
    finally:
        cancel.set()
        if worker is not threading.current_thread():  # an unfinished stream may be garbage-collected there
            worker.join()


def _shown(text: str, tools: ToolUse | None) -> str:
    """The part of a streamed answer the caller may see; a tool call being written is held back."""
    return visible_text(text) if tools is not None and tools.offered else text


class QueueStreamer(BaseStreamer):
    """Hands generated token ids to the consuming thread; the first put is the prompt, skipped."""

    def __init__(self, tokens: queue.Queue):
        self.tokens = tokens
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.tokens.put(value.reshape(-1).tolist())

    def end(self) -> None:
        pass


T = TypeVar("T")
_DONE = object()


async def iterate_in_thread(make_iterator: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
    """Run a blocking iterator in a worker thread and yield its items without blocking the event loop.

    The thread feeds an asyncio queue; when the consumer stops early, the thread closes the iterator
    at its next item (which stops the generation).
    """
    loop = asyncio.get_running_loop()
    items: asyncio.Queue = asyncio.Queue()
    cancelled = threading.Event()

    def put(item: object) -> None:
        try:
            loop.call_soon_threadsafe(items.put_nowait, item)
        except RuntimeError:  # the loop is gone: nobody is listening
            cancelled.set()

    def produce() -> None:
        iterator = make_iterator()
        try:
            for item in iterator:
                if cancelled.is_set():
                    break
                put(item)
        except BaseException as error:  # re-raised in the consumer
            put(_Failure(error))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
            put(_DONE)

    worker = threading.Thread(target=produce, name="pasta-rag-stream", daemon=True)
    worker.start()
    try:
        while (item := await items.get()) is not _DONE:
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        cancelled.set()


@dataclass(frozen=True)
class _Failure:
    error: BaseException


class AsyncTextStream(AsyncIterator[str]):
    """``TextStream`` for async code: the chunks come without blocking the event loop."""

    def __init__(self, stream: TextStream) -> None:
        self._stream = stream
        self._items = iterate_in_thread(lambda: stream)

    @property
    def generation(self) -> Generation | None:
        """The token counts and finish reason, once the last chunk has been read."""
        return self._stream.generation

    async def __anext__(self) -> str:
        return await self._items.__anext__()

    async def aclose(self) -> None:
        """Stop generating."""
        await self._items.aclose()  # type: ignore[attr-defined]
