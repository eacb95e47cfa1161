"""Concurrent non-streaming requests -> one ``generate_batch`` call.

A batched call decodes many prompts for not much more than the cost of one wherever the hardware has
parallelism to spare, so requests that arrive within a short window are answered together. The first request of a window
waits at most ``window_s`` for company; requests that cannot share a call (other steering or
decoding settings, other tools or response format) go into separate calls of the same window. Batches run one at a time on one
worker thread, so the event loop stays free and one batch never competes with another for the
model; streaming requests run beside them in their own threads (the core keeps each call's
steering in a ContextVar, so two threads may use one model at once).
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..batching import Generation
from ..engine import PastaModel
from .calls import CoreCall, grouped


@dataclass
class _Pending:
    call: CoreCall
    answer: asyncio.Future[Generation]
    arrived: float
    """The event loop's clock when the request came: its window runs from then, also while a batch runs."""


class Batcher:
    """Collects requests for ``window_s`` (at most ``max_batch_size`` per call) and runs them in batches."""

    def __init__(self, model: PastaModel, window_s: float = 0.01, max_batch_size: int = 16):
        if window_s < 0:
            raise ValueError(f"The batch window must be >= 0 seconds, got {window_s}.")
        if max_batch_size < 1:
            raise ValueError(f"The maximum batch size must be at least 1, got {max_batch_size}.")
        self.model = model
        self.window_s = window_s
        self.max_batch_size = max_batch_size
        self.batch_sizes: list[int] = []
        """The size of every generate_batch call so far (the tests and the benchmark read it)."""
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pasta-rag-batch")
        self._task: asyncio.Task | None = None
        self._unanswered: set[asyncio.Future[Generation]] = set()

    async def generate(self, call: CoreCall) -> Generation:
        """The answer to one call, generated in a batch with the calls that arrive with it."""
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Generation] = loop.create_future()
        self._unanswered.add(answer)
        answer.add_done_callback(self._unanswered.discard)
        await self._queue.put(_Pending(call, answer, loop.time()))
        return await answer

    async def close(self) -> None:
        """Stop collecting; requests still waiting get an error instead of waiting forever."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for answer in list(self._unanswered):
            answer.set_exception(RuntimeError("The server shut down before answering."))
        self._worker.shutdown(wait=True, cancel_futures=True)

    async def _run(self) -> None:
        while True:
            pending = await self._collect()
            waiting = [p for p in pending if not p.answer.done()]  # a client that left is not generated for
            calls = [p.call for p in waiting]
            for run in grouped(calls):
                for start in range(0, len(run), self.max_batch_size):
                    await self._generate([waiting[i] for i in run[start : start + self.max_batch_size]])

    async def _collect(self) -> list[_Pending]:
        pending = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = pending[0].arrived + self.window_s
        while len(pending) < self.max_batch_size:
            remaining = deadline - loop.time()
            try:
                pending.append(self._queue.get_nowait() if remaining <= 0 else
                               await asyncio.wait_for(self._queue.get(), remaining))
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
        return pending

    async def _generate(self, batch: list[_Pending]) -> None:
        first = batch[0].call
        prompts = [p.call.prompt for p in batch]
        emphasis = [p.call.emphasis for p in batch]
        self.batch_sizes.append(len(batch))
        try:
            answers = await asyncio.get_running_loop().run_in_executor(
                self._worker,
                lambda: self.model.generate_batch(prompts, emphasis=emphasis, steering=first.steering,
                                                  settings=first.settings, **first.decoding()),
            )
        except Exception as error:  # each waiting endpoint answers with it (the handlers hide the traceback)
            for p in batch:
                if not p.answer.done():
                    p.answer.set_exception(error)
            return
        for p, answer in zip(batch, answers):
            if not p.answer.done():
                p.answer.set_result(answer)
