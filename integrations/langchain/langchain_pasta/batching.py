"""Real batching through LangChain's own ``batch``: generate every input in one padded batch first, then
let LangChain run each input as usual (callbacks, tracing, cache), each finding its answer here."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pasta_rag import Generation

if TYPE_CHECKING:
    from ._common import CoreRequest


@dataclass
class Prefetched:
    """Results of one real batch, handed to the per-input calls LangChain's ``batch`` makes.

    LangChain's ``batch`` runs one ``invoke`` per input (with its callbacks, tracing and cache). To
    batch for real without re-implementing that, ``batch`` first generates every input in one padded
    batch, then lets LangChain run as usual: each ``_generate`` finds its answer here instead of
    generating it again.
    """

    results: dict[str, list[Generation]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, key: str, generation: Generation) -> None:
        with self.lock:
            self.results.setdefault(key, []).append(generation)

    def take(self, key: str) -> Generation | None:
        with self.lock:
            found = self.results.get(key)
            return found.pop(0) if found else None


_PREFETCHED: ContextVar[Prefetched | None] = ContextVar("langchain_pasta_prefetched", default=None)


def prefetch(generate: Callable[[list[CoreRequest]], list[Generation]], requests: Sequence[CoreRequest]) -> Prefetched:
    """Generate the requests in as few padded batches as their settings allow."""
    groups: dict[str, list[CoreRequest]] = {}
    for request in requests:
        groups.setdefault(request.batch_key(), []).append(request)
    prefetched = Prefetched()
    for group in groups.values():
        for request, generation in zip(group, generate(group)):
            prefetched.add(request.key(), generation)
    return prefetched


def current_prefetched() -> Prefetched | None:
    return _PREFETCHED.get()


def use_prefetched(prefetched: Prefetched):
    return _PREFETCHED.set(prefetched)


def reset_prefetched(token) -> None:
    _PREFETCHED.reset(token)
