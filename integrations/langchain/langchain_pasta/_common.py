"""What ChatPasta and PastaLLM share: the loaded engine, the generation fields, per-call options.

The LangChain classes are thin: they turn LangChain's inputs into a core prompt
(a string or role/content dicts), decide whether anything is emphasized, and
hand the call to ``pasta_rag.PastaModel``. Everything about steering lives in
the core.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pasta_rag import Generation, PastaModel, SamplingSettings, has_markers, strip_markers
from pasta_rag.errors import PastaError
from pasta_rag.heads import HeadSet
from pasta_rag.prompts import Prompt
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, model_validator

# --- loading -------------------------------------------------------------------------------

_ENGINES: dict[tuple, PastaModel] = {}
_ENGINES_LOCK = threading.Lock()


def load_engine(model: str | os.PathLike = "default", **load_kwargs: Any) -> PastaModel:
    """Load a core model once per process and share it.

    Every ChatPasta / PastaLLM created with the same name (and the same loading options) gets
    the same ``PastaModel``: a chain that builds several model objects, or a test suite that
    builds one per test, loads the weights once. Head set, alpha, steer_generated and generated_alpha are not loading
    options: they are applied per call, so instances with different head sets still share the weights.
    """
    key = (os.fspath(model), tuple(sorted((k, repr(v)) for k, v in load_kwargs.items())))
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            _ENGINES[key] = PastaModel.from_pretrained(model, **load_kwargs)
        return _ENGINES[key]


# --- fields shared by the chat model and the LLM -------------------------------------------

IGNORED_REMOTE_PARAMS = frozenset({"api_key", "base_url", "timeout", "request_timeout", "max_retries"})
"""Accepted and ignored so that code written for a hosted model runs unchanged: a local model has no
endpoint, key or network timeout."""

CALL_OPTIONS = frozenset(
    {
        "emphasis",
        "spans",
        "steer",
        "heads",
        "alpha",
        "steer_generated",
        "generated_alpha",
        "temperature",
        "max_tokens",
        "max_new_tokens",
        "top_p",
        "top_k",
        "repetition_penalty",
        "seed",
        "model",
        "stream",  # LangChain's own per-call streaming switch; it never reaches the core
    }
)


class PastaFields(BaseModel):
    """Fields and option handling common to ``ChatPasta`` and ``PastaLLM``."""

    model_config = ConfigDict(populate_by_name=True, protected_namespaces=(), arbitrary_types_allowed=True)

    model_name: str = Field(default="default", alias="model")
    """What to load: ``"default"`` (SmolLM2-135M-Instruct, shipped in a wheel), ``"gemma3-270m"``, a
    .gguf file, a model folder or a hub id. Loaded once per process and shared (see ``load_engine``)."""
    engine: PastaModel | None = Field(default=None, exclude=True)
    """An already-loaded ``pasta_rag.PastaModel``; pass the same one to several instances to share it.
    Passing a PastaModel as ``model=`` does the same."""
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Loading options for ``PastaModel.from_pretrained`` (``device``, ``dtype``, ``attn_implementation``...)."""

    heads: Any = None
    """The head set to steer: a ``pasta_rag.HeadSet``, ``{"layer": [heads]}``, a list of layers or a JSON
    file, or the name of a set shipped for the model: "context" (retrieved passages, the default) or
    "instructions" (emphasized instructions, e.g. a pinned system prompt). None: the context set."""
    alpha: StrictFloat | None = None  # strict: a bool or a string is refused, not read as a number
    """Attention scale of non-emphasized prompt tokens in the steered heads (0 < alpha <= 1, smaller
    steers harder). None: the alpha the head set was chosen with (else 0.01, the paper's)."""
    steer_generated: StrictBool | None = None
    """Also push down, in the steered heads, attention to the tokens generated so far (the paper leaves
    them alone; small models then tend to repeat themselves). None: what the head set was chosen with
    (else False)."""
    generated_alpha: StrictFloat | None = None
    """With steer_generated, the attention scale of generated tokens in the steered heads (> 0). None: the
    one the head set was chosen with (else alpha)."""
    steer: bool = True
    """False runs the plain model even when text is emphasized (for side-by-side comparisons)."""

    temperature: float = 0.0
    """0 is greedy decoding."""
    max_tokens: int = 256
    """The most new tokens per answer (transformers' max_new_tokens)."""
    top_p: float = 1.0
    top_k: int | None = None
    repetition_penalty: float = 1.0
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    """Stop strings; several tokens each is fine. A per-call ``stop`` replaces these."""
    seed: int | None = None
    streaming: bool = False
    """Generate through ``stream`` even on ``invoke`` (callbacks get each token)."""

    @model_validator(mode="before")
    @classmethod
    def _check_init_arguments(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        values = {k: v for k, v in values.items() if k not in IGNORED_REMOTE_PARAMS}
        if isinstance(values.get("model"), PastaModel):
            if values.get("engine") is not None:
                raise ValueError("Pass the loaded PastaModel as model= or as engine=, not both.")
            values["engine"] = values.pop("model")
        if "max_new_tokens" in values:
            if "max_tokens" in values:
                raise ValueError("Pass max_tokens or max_new_tokens, not both (they are the same setting).")
            values["max_tokens"] = values.pop("max_new_tokens")
        known = set()
        for name, info in cls.model_fields.items():
            known.add(name)
            if info.alias:
                known.add(info.alias)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"{cls.__name__} got unknown parameter(s) {unknown}. Generation settings are "
                "temperature, max_tokens, top_p, top_k, repetition_penalty, stop, seed; steering settings are "
                "heads, alpha, steer_generated, generated_alpha, steer; loading options go in model_kwargs."
            )
        return values

    @model_validator(mode="after")
    def _load_and_check(self) -> PastaFields:
        if self.engine is None:
            self.engine = load_engine(self.model_name, **self.model_kwargs)
        elif "model_name" not in self.model_fields_set:
            self.model_name = self.engine.name
        if self.alpha is not None and not self.alpha > 0:
            raise ValueError(f"alpha must be > 0 (the paper uses 0.01; smaller steers harder), got {self.alpha}.")
        if self.generated_alpha is not None and not self.generated_alpha > 0:
            raise ValueError(f"generated_alpha must be > 0 (None: the head set's, else alpha), got {self.generated_alpha}.")
        _check_sampling(self.temperature, self.max_tokens, self.top_p, self.top_k)
        if self.heads is not None:
            self.heads = _resolved_heads(self.heads, self.engine)
        return self

    # --- per call ------------------------------------------------------------------------

    @property
    def _engine(self) -> PastaModel:
        assert self.engine is not None  # set by the validator
        return self.engine

    def _sampling(self, stop: Sequence[str] | None, options: Mapping[str, Any]) -> SamplingSettings:
        """The decoding settings of one call: the fields, overridden by per-call options."""
        stop = self.stop if stop is None else stop
        if isinstance(stop, str):
            stop = [stop]
        settings = SamplingSettings(
            max_new_tokens=options.get("max_tokens", options.get("max_new_tokens", self.max_tokens)),
            temperature=options.get("temperature", self.temperature),
            top_p=options.get("top_p", self.top_p),
            top_k=options.get("top_k", self.top_k),
            repetition_penalty=options.get("repetition_penalty", self.repetition_penalty),
            stop=tuple(stop or ()),
            seed=options.get("seed", self.seed),
        )
        _check_sampling(settings.temperature, settings.max_new_tokens, settings.top_p, settings.top_k)
        return settings

    def _call_options(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Validate the per-call keyword arguments (``invoke(..., emphasis=[...])`` or ``.bind(...)``)."""
        unknown = sorted(set(kwargs) - CALL_OPTIONS)
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unknown call option(s) {unknown}; it accepts {sorted(CALL_OPTIONS)}. "
                "(Tool calling is not supported by this local model.)"
            )
        model = kwargs.get("model")
        if model is not None and model not in (self.model_name, self._engine.name):
            raise ValueError(
                f"This {type(self).__name__} serves the loaded model {self.model_name!r}, not {model!r}; "
                f"create another {type(self).__name__}(model={model!r}) for that one."
            )
        emphasis = kwargs.get("emphasis")
        if isinstance(emphasis, str):
            emphasis = [emphasis]
        if emphasis is not None and not all(isinstance(e, str) for e in emphasis):
            raise TypeError(f"emphasis must be a list of substrings of the prompt, got {emphasis!r}.")
        return {**kwargs, "emphasis": list(emphasis) if emphasis else None}

    def _core_request(self, prompt: Prompt, marked_text: str, stop: Sequence[str] | None, kwargs: Mapping[str, Any]):
        options = self._call_options(kwargs)
        emphasized = bool(options["emphasis"] or options.get("spans") or has_markers(marked_text))
        steer = bool(options.get("steer", self.steer)) and emphasized
        heads = options.get("heads", self.heads)
        alpha = options.get("alpha", self.alpha)
        steer_generated = options.get("steer_generated", self.steer_generated)  # the core checks it
        generated_alpha = options.get("generated_alpha", self.generated_alpha)  # and this one
        return CoreRequest(
            prompt=prompt,
            emphasis=options["emphasis"],
            spans=options.get("spans"),
            steer=steer,
            heads=_resolved_heads(heads, self._engine) if heads is not None else None,
            alpha=alpha,
            steer_generated=steer_generated,
            generated_alpha=generated_alpha,
            settings=self._sampling(stop, options),
        )

    def _generate_requests(self, requests: Sequence[CoreRequest]) -> list[Generation]:
        """Run requests with the same settings as one left-padded batch; prefetched results are reused."""
        prefetched = _PREFETCHED.get()
        if prefetched is not None and len(requests) == 1:
            found = prefetched.take(requests[0].key())
            if found is not None:
                return [found]
        first = requests[0]
        # One batch may mix steered and unsteered requests: an unsteered row carries no emphasis at all,
        # and the core steers only rows with emphasized tokens.
        return self._engine.generate_batch(
            [r.prompt if r.steer else _without_markers(r.prompt) for r in requests],
            emphasis=[r.emphasis if r.steer else None for r in requests],
            spans=[r.spans if r.steer else None for r in requests],
            steer=any(r.steer for r in requests),
            heads=first.heads,
            alpha=first.alpha,
            steer_generated=first.steer_generated,
            generated_alpha=first.generated_alpha,
            settings=first.settings,
        )

    def _stream_request(self, request: CoreRequest, finished: list[Generation] | None = None) -> Iterator[str]:
        """The answer's text chunks; the core's final Generation (exact counts) is appended to ``finished``."""
        chunks = self._engine.stream(
            request.prompt,
            emphasis=request.emphasis,
            spans=request.spans,
            steer=request.steer,
            heads=request.heads,
            alpha=request.alpha,
            steer_generated=request.steer_generated,
            generated_alpha=request.generated_alpha,
            max_new_tokens=request.settings.max_new_tokens,
            temperature=request.settings.temperature,
            top_p=request.settings.top_p,
            top_k=request.settings.top_k,
            repetition_penalty=request.settings.repetition_penalty,
            stop=request.settings.stop,
            seed=request.settings.seed,
        )
        try:
            yield from chunks
        finally:
            chunks.close()  # stops the generation thread when the consumer stops early
        if finished is not None and chunks.generation is not None:
            finished.append(chunks.generation)

    def _streamed_usage(self, request: CoreRequest, text: str, finished: Sequence[Generation] = ()) -> Generation:
        """Token counts and finish reason of a streamed answer: the core's own when the stream ran to its
        end; otherwise the prompt is counted by tokenizing the rendered prompt (exact) and the answer by
        re-tokenizing its text."""
        if finished:
            return finished[-1]
        engine = self._engine
        rendered = engine.render(request.prompt, emphasis=request.emphasis, spans=request.spans)
        prompt_tokens = len(engine.tokenizer(rendered.text, add_special_tokens=rendered.add_special_tokens)["input_ids"])
        completion_tokens = len(engine.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0
        finish = "length" if completion_tokens >= request.settings.max_new_tokens else "stop"
        return Generation(text, prompt_tokens, completion_tokens, finish, request.steer)

    def _settings_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "heads": _describe_heads(self.heads, self._engine),
            "alpha": self.alpha if self.alpha is not None else self._engine.alpha,
            "steer_generated": (
                self.steer_generated if self.steer_generated is not None else self._engine.steer_generated
            ),
            "generated_alpha": (
                self.generated_alpha if self.generated_alpha is not None else self._engine.generated_alpha
            ),
            "steer": self.steer,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "repetition_penalty": self.repetition_penalty,
            "stop": self.stop,
            "seed": self.seed,
        }


def _without_markers(prompt: Prompt) -> Prompt:
    if isinstance(prompt, str):
        return strip_markers(prompt)
    return [{**message, "content": strip_markers(message["content"])} for message in prompt]


@dataclass(frozen=True)
class CoreRequest:
    """One core call: the prompt and every option, resolved."""

    prompt: Prompt
    emphasis: list[str] | None
    spans: Any
    steer: bool
    heads: HeadSet | None
    alpha: float | None
    steer_generated: bool | None
    generated_alpha: float | None
    settings: SamplingSettings

    def key(self) -> str:
        return repr((self.prompt, self.emphasis, self.spans, self.steer, self.heads, self.alpha, self.steer_generated,
                     self.generated_alpha, self.settings))

    def batch_key(self) -> str:
        """Requests with the same batch key can share one generate_batch call."""
        return repr((self.heads, self.alpha, self.steer_generated, self.generated_alpha, self.settings))


# --- batching through LangChain's own batch machinery --------------------------------------


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


def use_prefetched(prefetched: Prefetched):
    return _PREFETCHED.set(prefetched)


def reset_prefetched(token) -> None:
    _PREFETCHED.reset(token)


# --- async streaming -----------------------------------------------------------------------

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

    worker = threading.Thread(target=produce, name="langchain-pasta-stream", daemon=True)
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


# --- checks --------------------------------------------------------------------------------


def _check_sampling(temperature: float, max_tokens: int, top_p: float, top_k: int | None) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}.")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}.")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1 (or None), got {top_k}.")


def _resolved_heads(heads: Any, engine: PastaModel) -> HeadSet:
    try:
        return engine.resolve_heads(heads)
    except PastaError as error:
        raise ValueError(f"Bad head set for {engine.name}: {error}") from error


def _describe_heads(heads: HeadSet | None, engine: PastaModel) -> str:
    head_set = heads if heads is not None else engine.heads
    if head_set is None:
        return "none"
    source = "custom" if heads is not None else "shipped"
    return f"{source}: {len(head_set)} heads in layers {sorted({layer for layer, _ in head_set.pairs()})}"
