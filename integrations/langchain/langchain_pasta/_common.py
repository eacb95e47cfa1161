"""What ChatPasta and PastaLLM share: the loaded engine, the generation fields, per-call options.

The LangChain classes are thin: they turn LangChain's inputs into a core prompt
(a string or role/content dicts), decide whether anything is emphasized, and
hand the call to ``pasta_rag.PastaModel``. Everything about steering lives in
the core.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StrictBool, StrictFloat, model_validator

from pasta_rag import (
    Generation,
    PastaError,
    PastaModel,
    SamplingSettings,
    Steering,
    TextStream,
    has_markers,
    strip_markers,
)
from pasta_rag.prompts import Prompt
from pasta_rag.remote import RemoteModel
from pasta_rag.settings import CHAIN_STEERING, UNSET, split_options, steering_keywords

from .batching import current_prefetched


def load_engine(model: str | os.PathLike = "default", **load_kwargs: Any) -> PastaModel:
    """The process-wide shared model (``PastaModel.shared``): every ChatPasta / PastaLLM, and LlamaIndex's
    PastaLLM, created with the same name and loading options gets the same weights."""
    return PastaModel.shared(model, **load_kwargs)


# --- fields shared by the chat model and the LLM -------------------------------------------

Engine = PastaModel | RemoteModel
"""A model loaded in this process, or a pasta-rag server (``base_url=``) called the same way."""

SAMPLING_OPTIONS = {"temperature": "temperature", "max_tokens": "max_new_tokens", "max_new_tokens": "max_new_tokens",
                    "top_p": "top_p", "top_k": "top_k", "repetition_penalty": "repetition_penalty", "seed": "seed"}
"""Per-call decoding options, by LangChain name -> SamplingSettings name."""

TOOL_OPTIONS = ("tools", "tool_choice", "response_format")
"""Per-call options for tool calling and structured output (``bind_tools``, ``with_structured_output``),
in the core's OpenAI shapes."""

CALL_OPTIONS = frozenset(
    {"emphasis", "spans", "steering", "model", "stream"}  # stream: LangChain's own switch; it never reaches the core
    | {"ls_structured_output_format"}  # tracing metadata LangChain adds to structured-output calls; never generation
    | set(TOOL_OPTIONS)
    | set(SAMPLING_OPTIONS)
    | steering_keywords()  # every Steering field is a call option, and so is a field added to it later
)


class PastaFields(BaseModel):
    """Fields and option handling common to ``ChatPasta`` and ``PastaLLM``."""

    model_config = ConfigDict(populate_by_name=True, protected_namespaces=(), arbitrary_types_allowed=True)

    model_name: str = Field(default="default", alias="model")
    """What to load: ``"default"`` (SmolLM2-135M-Instruct, shipped in a wheel), ``"gemma3-270m"``, a
    .gguf file, a model folder or a hub id. Loaded once per process and shared (``PastaModel.shared``)."""
    engine: Engine | None = Field(default=None, exclude=True)
    """An already-loaded ``pasta_rag.PastaModel`` (or a ``pasta_rag.remote.RemoteModel``); pass the same one
    to several instances to share it. Passing it as ``model=`` does the same."""
    base_url: str | None = None
    """A pasta-rag server (``pasta-rag serve``), e.g. ``http://localhost:8000/v1``: the model runs there and
    steers what the marked text emphasizes (``pasta_rag.remote``). ``model``, if given, is its served name."""
    api_key: SecretStr | None = None
    """The server's ``--api-key`` (default ``$PASTA_RAG_API_KEY``).

    ``api_key``, ``timeout`` and ``max_retries`` configure the connection to ``base_url`` only. Without
    it they have no connection to configure, and are still accepted: LangChain's standard test suite
    (``ChatModelUnitTests``) creates every chat model with ``api_key``, ``timeout`` and ``max_retries``,
    so code written for a hosted model runs unchanged. They are kept, and shown in the model's params."""
    timeout: float | None = Field(default=None, alias="request_timeout")
    """Seconds to wait for the server's answer (see ``api_key``)."""
    max_retries: int = 2
    """Retries of a failed request to the server, the openai client's (see ``api_key``)."""
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Loading options for ``PastaModel.from_pretrained`` (``device``, ``dtype``, ``attn_implementation``...)."""

    steering: Steering | None = None
    """Every steering setting in one ``pasta_rag.Steering``; the fields below are its shortcuts and win
    over it. Unset settings are the head set's own, else the model's."""
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
    select: str | None = None
    """Which of the emphasized passages (``format_docs`` marks each document) are steered: "relevant"
    (those that best match the question, BM25 on the rest of the prompt) or "all". None: "relevant",
    unless ``steering`` says otherwise. Pinned instructions are never selected away."""
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
        if "timeout" in values:
            values["request_timeout"] = values.pop("timeout")
        if isinstance(values.get("model"), (PastaModel, RemoteModel)):
            if values.get("engine") is not None:
                raise ValueError("Pass the loaded PastaModel as model= or as engine=, not both.")
            values["engine"] = values.pop("model")
        if "max_new_tokens" in values:
            if "max_tokens" in values:
                raise ValueError("Pass max_tokens or max_new_tokens, not both (they are the same setting).")
            values["max_tokens"] = values.pop("max_new_tokens")
        known = {alias for name, info in cls.model_fields.items() for alias in (name, info.alias) if alias}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"{cls.__name__} got unknown parameter(s) {unknown}. Generation settings are "
                "temperature, max_tokens, top_p, top_k, repetition_penalty, stop, seed; steering settings are "
                "steering (a pasta_rag.Steering) or heads, alpha, steer_generated, generated_alpha, select, steer; "
                "loading options go in model_kwargs."
            )
        return values

    @model_validator(mode="after")
    def _load_and_check(self) -> PastaFields:
        if self.base_url is not None:
            if self.engine is not None or self.model_kwargs:
                raise ValueError("base_url runs the model on a server: pass no loaded model and no model_kwargs "
                                 "with it.")
            self.engine = RemoteModel(
                self.base_url, api_key=self.api_key.get_secret_value() if self.api_key else None,
                timeout=self.timeout, max_retries=self.max_retries,
                model=self.model_name if "model_name" in self.model_fields_set else None)
            self.model_name = self.engine.name
        elif self.engine is None:
            self.engine = load_engine(self.model_name, **self.model_kwargs)
        elif "model_name" not in self.model_fields_set:
            self.model_name = self.engine.name
        self._sampling(None, {})  # the core checks the decoding settings
        self.engine.resolve_steering(self._field_steering())  # and the steering ones, head set included
        return self

    # --- per call ------------------------------------------------------------------------

    @property
    def _engine(self) -> Engine:
        assert self.engine is not None  # set by the validator
        return self.engine

    def _field_steering(self) -> Steering:
        """The fields' steering: ``steering``, overridden by the shortcut fields that are set."""
        shortcuts = {"heads": self.heads, "alpha": self.alpha, "steer_generated": self.steer_generated,
                     "generated_alpha": self.generated_alpha, "select": self.select,
                     "enabled": self.steer if "steer" in self.model_fields_set else None}  # True by default, not set
        return CHAIN_STEERING.override(self.steering).override(**{k: v for k, v in shortcuts.items() if v is not None})

    def _sampling(self, stop: Sequence[str] | None, options: Mapping[str, Any]) -> SamplingSettings:
        """The decoding settings of one call: the fields, overridden by per-call options."""
        fields = {"temperature": self.temperature, "max_new_tokens": self.max_tokens, "top_p": self.top_p,
                  "top_k": self.top_k, "repetition_penalty": self.repetition_penalty, "seed": self.seed}
        fields.update({SAMPLING_OPTIONS[k]: v for k, v in options.items() if k in SAMPLING_OPTIONS})
        stop = self.stop if stop is None else stop
        return SamplingSettings(stop=[stop] if isinstance(stop, str) else stop, **fields)

    def _call_options(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Validate the per-call keyword arguments (``invoke(..., emphasis=[...])`` or ``.bind(...)``)."""
        unknown = sorted(set(kwargs) - CALL_OPTIONS)
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unknown call option(s) {unknown}; it accepts {sorted(CALL_OPTIONS)}."
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
        call_steering, _ = split_options(options.get("steering"), options)
        steering = self._field_steering().override(call_steering)
        if not (options["emphasis"] or options.get("spans") or has_markers(marked_text)):
            steering = steering.override(enabled=False)  # nothing marked: the plain model, without the core's warning
        return CoreRequest(prompt, options["emphasis"], options.get("spans"), steering, self._sampling(stop, options),
                           {name: options[name] for name in TOOL_OPTIONS if options.get(name) is not None})

    def _generate_requests(self, requests: Sequence[CoreRequest]) -> list[Generation]:
        """Run requests with the same settings as one left-padded batch; prefetched results are reused."""
        prefetched = current_prefetched()
        if prefetched is not None and len(requests) == 1:
            found = prefetched.take(requests[0].key())
            if found is not None:
                return [found]
        # One batch may mix steered and unsteered requests: an unsteered row carries no emphasis at all,
        # and the core steers only rows with emphasized tokens.
        steered = [r.steering.enabled is not False for r in requests]
        return self._engine.generate_batch(
            [r.prompt if on else _without_markers(r.prompt) for r, on in zip(requests, steered)],
            emphasis=[r.emphasis if on else None for r, on in zip(requests, steered)],
            spans=[r.spans if on else None for r, on in zip(requests, steered)],
            steering=requests[0].steering.override(enabled=any(steered)),
            settings=requests[0].settings,
            **requests[0].tools,
        )

    def _stream_request(self, request: CoreRequest, finished: list[Generation] | None = None) -> Iterator[str]:
        """The answer's text chunks; the core's final Generation (exact counts) is appended to ``finished``.

        The core checks the request here, at the call (a bad head set raises before any thread starts);
        generation starts at the first chunk.
        """
        chunks = self._engine.stream(request.prompt, emphasis=request.emphasis, spans=request.spans,
                                     steering=request.steering, settings=request.settings, **request.tools)
        return _chunks_of(chunks, finished)

    def _streamed_usage(self, request: CoreRequest, text: str, finished: Sequence[Generation] = ()) -> Generation:
        """Token counts and finish reason of a streamed answer: the core's own when the stream ran to its
        end; otherwise the prompt is counted by tokenizing the rendered prompt (exact) and the answer by
        re-tokenizing its text."""
        if finished:
            return finished[-1]
        engine = self._engine
        if isinstance(engine, RemoteModel):  # its counts come with the end of the server's stream only
            raise PastaError("The stream of the pasta-rag server ended before its usage: no token counts.")
        rendered = engine.render(request.prompt, emphasis=request.emphasis, spans=request.spans,
                                 tools=request.tools.get("tools"), tool_choice=request.tools.get("tool_choice"))
        prompt_tokens = len(engine.tokenizer(rendered.text, add_special_tokens=rendered.add_special_tokens)["input_ids"])
        completion_tokens = len(engine.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0
        finish = "length" if completion_tokens >= request.settings.max_new_tokens else "stop"
        return Generation(text, prompt_tokens, completion_tokens, finish, request.steering.enabled is not False)

    def _settings_params(self) -> dict[str, Any]:
        steering = self._field_steering()
        resolved = self._engine.resolve_steering(steering)  # a server's: as given (it resolves the rest)
        return {
            "model_name": self.model_name,
            "base_url": self.base_url,
            "timeout": self.timeout,
            "max_retries": self.max_retries,
            "heads": _describe_heads(resolved, custom=steering.heads is not UNSET),
            "alpha": resolved.alpha,
            "steer_generated": resolved.steer_generated,
            "generated_alpha": resolved.generated_alpha,
            "select": resolved.select,
            "steer": resolved.enabled,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "repetition_penalty": self.repetition_penalty,
            "stop": self.stop,
            "seed": self.seed,
        }


def _chunks_of(chunks: TextStream, finished: list[Generation] | None) -> Iterator[str]:
    try:
        yield from chunks
    finally:
        chunks.close()  # stops the generation thread when the consumer stops early
    if finished is not None and chunks.generation is not None:
        finished.append(chunks.generation)


def _without_markers(prompt: Prompt) -> Prompt:
    if isinstance(prompt, str):
        return strip_markers(prompt)
    return [{**message, "content": strip_markers(message["content"])} for message in prompt]


def _describe_heads(resolved: Steering, custom: bool) -> str:
    if resolved.heads is UNSET:
        return "none"
    layers = sorted({layer for layer, _ in resolved.heads.pairs()})  # type: ignore[union-attr]
    return f"{'custom' if custom else 'shipped'}: {len(resolved.heads)} heads in layers {layers}"  # type: ignore[arg-type]


@dataclass(frozen=True)
class CoreRequest:
    """One core call: the prompt, its emphasis, and the call's settings objects."""

    prompt: Prompt
    emphasis: list[str] | None
    spans: Any
    steering: Steering
    settings: SamplingSettings
    tools: Mapping[str, Any] = field(default_factory=dict)
    """The core's tools, tool_choice and response_format, those given."""

    def key(self) -> str:
        return repr((self.prompt, self.emphasis, self.spans, self.steering, self.settings, self.tools))

    def batch_key(self) -> str:
        """Requests with the same batch key can share one generate_batch call (steered or not, per row)."""
        return repr((self.steering.override(enabled=True), self.settings, self.tools))
