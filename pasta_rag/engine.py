"""PastaModel: one loaded model that generates, streams and scores, steered or not.

It is the object the LangChain and LlamaIndex classes wrap: load it once (``PastaModel.shared``)
and share it. It holds no per-call state, so it is safe to call from several threads; each call's
steering lives in a ContextVar (see ``steering``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from . import loading, profiled
from .batching import Generation, PreparedBatch, check_window, finish_all, prepare
from .emphasis import Span
from .errors import HeadSetError, PastaError
from .grammar import response_format as checked_response_format
from .heads import PURPOSES, HeadSet, as_head_set, shipped_head_set
from .prompts import Prompt, RenderedPrompt, render
from .settings import (
    BUILT_IN_STEERING,
    DEFAULT_ALPHA,
    UNSET,
    HeadSetLike,
    SamplingKwargs,
    SamplingSettings,
    Steering,
    sampling_settings,
    split_options,
    steering_keywords,
)
from .steering import steered_implementation, steering, use_steerable_attention
from .stopping import StopOnText
from .streaming import AsyncTextStream, TextStream, stream_text
from .tokens import pad_token_id
from .tools import ToolChoiceLike, ToolSchema, ToolUse, tool_use

__all__ = ["DEFAULT_ALPHA", "Generation", "HeadSetLike", "PastaModel", "SamplingKwargs", "SamplingSettings",
           "Steering", "TextStream"]


class PastaModel:
    """A causal LM whose profiled attention heads can be steered toward emphasized prompt text.

    >>> model = PastaModel.from_pretrained("default")
    >>> model.generate(f"Context: {emphasize(doc)}\\nQuestion: ...").text

    Every call takes ``steering=Steering(...)``, or its fields as keywords (``heads=``, ``alpha=``,
    ``steer_generated=``, ``generated_alpha=``, ``steer=False`` for the plain model): a field not given
    is the per-call head set's own, else the model's (``model.steering``).
    """

    _shared: ClassVar[dict[tuple, PastaModel]] = {}
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        steering: Steering | None = None,
        name: str | None = None,
        source: str | None = None,
        identity: str | None = None,
        **steering_fields: Any,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name or getattr(model.config, "_name_or_path", None) or type(model).__name__
        self.source: str | None = source
        """What the model was loaded from: the command that profiles it names it."""
        self.identity: str | None = identity
        """The model's identity (``profiled.model_identity``): the head sets profiled for it are found by it."""
        text_config = model.config.get_text_config()
        self.num_layers: int = text_config.num_hidden_layers
        self.num_heads: int = text_config.num_attention_heads
        self.context_window: int = getattr(text_config, "max_position_embeddings", None) or 2048
        use_steerable_attention(model)
        self.pad_token_id: int = pad_token_id(tokenizer, model)
        given, unknown = split_options(steering, steering_fields)
        if unknown:
            raise TypeError(f"PastaModel got unknown argument(s) {sorted(unknown)}; steering settings are "
                            f"{sorted(steering_keywords())}.")
        head_source = self.own_head_set("context") if given.heads is UNSET else given.heads
        own = Steering.from_head_set(self.resolve_heads(head_source)) if head_source is not None else Steering()
        self.steering: Steering = BUILT_IN_STEERING.override(own).override(given, heads=own.heads)
        """The model's own settings: a call's are resolved against them (``resolve_steering``)."""

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike = "default",
        *,
        steering: Steering | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        device_map: str | dict | None = None,
        attn_implementation: str | None = None,
        **options: Any,
    ) -> PastaModel:
        """Load ``"default"`` (SmolLM2-135M-Instruct), ``"gemma3-270m"``, a .gguf file, a directory or a hub id.

        ``steering`` (or its fields as keywords) sets the model's own steering; unset fields come from
        the head set (its metadata records the settings it was chosen with), else the paper's (alpha 0.01).
        ``attn_implementation`` is the kernel to steer: ``sdpa`` (default) or ``eager``; ``device``,
        ``dtype``, ``device_map`` and any other keyword mean what they mean in transformers.
        """
        steering_fields = {k: options.pop(k) for k in list(options) if k in steering_keywords()}
        loaded = loading.load(
            source,
            device=device,
            dtype=dtype,
            device_map=device_map,
            attn_implementation=steered_implementation(attn_implementation),
            **options,
        )
        identity = profiled.model_identity(loaded.folder) if loaded.folder else None
        return cls(loaded.model, loaded.tokenizer, steering=steering, name=loaded.name, source=os.fspath(source),
                   identity=identity, **steering_fields)

    @classmethod
    def shared(cls, source: str | os.PathLike = "default", **load_options: Any) -> PastaModel:
        """The model loaded once per process for ``source`` and these loading options, then shared.

        Steering is per call, so every user of the weights (ChatPasta, PastaLLM, a server) gets the
        same PastaModel whatever it steers; loading options that differ load another copy.
        """
        steering_given = sorted(set(load_options) & (steering_keywords() | {"steering"}))
        if steering_given:
            raise TypeError(
                f"PastaModel.shared takes loading options only, not {steering_given}: a shared model is steered "
                "per call (pass them to generate / stream / score, or to ChatPasta / PastaLLM)."
            )
        key = (os.fspath(source), tuple(sorted((k, repr(v)) for k, v in load_options.items())))
        with cls._shared_lock:
            if key not in cls._shared:
                cls._shared[key] = cls.from_pretrained(source, **load_options)
            return cls._shared[key]

    # --- the model's own steering, by field ----------------------------------------------

    @property
    def heads(self) -> HeadSet | None:
        """The head set steered unless a call names another (None: the model has none)."""
        return None if self.steering.heads is UNSET else self.steering.heads  # type: ignore[return-value]

    @property
    def alpha(self) -> float:
        return self.steering.alpha  # type: ignore[return-value]

    @property
    def steer_generated(self) -> bool:
        return self.steering.steer_generated  # type: ignore[return-value]

    @property
    def generated_alpha(self) -> float | None:
        return self.steering.generated_alpha  # type: ignore[return-value]

    @property
    def device(self) -> torch.device:
        return self.model.device

    # --- public API ---------------------------------------------------------------------

    def render(
        self,
        prompt: Prompt,
        *,
        emphasis: Sequence[str] | None = None,
        spans: Sequence[Span] | None = None,
        tools: Sequence[ToolSchema] | ToolUse | None = None,
        tool_choice: ToolChoiceLike | None = None,
    ) -> RenderedPrompt:
        """The final prompt text (chat template applied, markers stripped) and its emphasized spans;
        ``.format`` and ``.tool_format`` say how the messages and the tools were written."""
        use = tools if isinstance(tools, ToolUse) else tool_use(tools, tool_choice)
        return render(self.tokenizer, prompt, emphasis, spans, use)

    def generate(
        self,
        prompt: Prompt,
        *,
        emphasis: Sequence[str] | None = None,
        spans: Sequence[Span] | None = None,
        steering: Steering | None = None,
        settings: SamplingSettings | None = None,
        tools: Sequence[ToolSchema] | None = None,
        tool_choice: ToolChoiceLike | None = None,
        response_format: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Generation:
        """Generate from one prompt: a string (completion) or chat messages (the model's chat template).

        Emphasis comes as markers in the prompt (``emphasize``), ``emphasis`` substrings of the final
        prompt (every occurrence), or character ``spans`` of it; all are one union. Steering: ``steering``
        and the keyword shortcuts of its fields (see the class). Decoding: ``settings=SamplingSettings(...)``
        or its fields as keywords:
        max_new_tokens (256), min_new_tokens, temperature (0 = greedy), top_p, top_k,
        repetition_penalty, stop (strings, any number of tokens), seed.

        Tools (``pasta_rag.tools``): ``tools`` are JSON schemas in OpenAI's function format;
        ``tool_choice`` is "auto" (default), "none", "required" or a tool's name, the last two decoded
        under a grammar so the call parses. The answer's ``tool_calls`` and ``invalid_tool_calls`` hold
        what the model called. ``response_format`` (``{"type": "json_schema", "json_schema": {"schema":
        ...}}`` or ``{"type": "json_object"}``) decodes the answer under a JSON grammar.
        """
        return self.generate_batch(
            [prompt],
            emphasis=None if emphasis is None else [emphasis],
            spans=None if spans is None else [spans],
            steering=steering,
            settings=settings,
            tools=tools,
            tool_choice=tool_choice,
            response_format=response_format,
            **options,
        )[0]

    def generate_batch(
        self,
        prompts: Sequence[Prompt],
        *,
        emphasis: Sequence[Sequence[str] | None] | None = None,
        spans: Sequence[Sequence[Span] | None] | None = None,
        steering: Steering | None = None,
        settings: SamplingSettings | None = None,
        tools: Sequence[ToolSchema] | None = None,
        tool_choice: ToolChoiceLike | None = None,
        response_format: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> list[Generation]:
        """Generate for several prompts in one left-padded batch; ``emphasis`` / ``spans`` are per prompt,
        the tools and the response format are the whole batch's (see ``generate``)."""
        call_steering, sampling = self._call_settings(steering, settings, options)
        prepared = prepare(self, prompts, emphasis, spans, call_steering, sampling, tool_use(tools, tool_choice),
                           checked_response_format(response_format))
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        stopper = StopOnText(self.tokenizer, prepared.batch.prompt_len, sampling.stop)
        hooks = prepared.decoding_hooks(stopper)
        with torch.no_grad(), _steered(prepared):
            output = self.model.generate(**prepared.generate_inputs(self.device), **hooks)
        return finish_all(self, output, prepared, sampling, prepared.grammar_ends(hooks))

    def stream(
        self,
        prompt: Prompt,
        *,
        emphasis: Sequence[str] | None = None,
        spans: Sequence[Span] | None = None,
        steering: Steering | None = None,
        settings: SamplingSettings | None = None,
        tools: Sequence[ToolSchema] | None = None,
        tool_choice: ToolChoiceLike | None = None,
        response_format: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> TextStream:
        """The answer as it is generated, token by token; joined, it equals ``generate(...).text``.

        Bad input raises here, before any token. Text that could be the start of a stop string is
        held back until it is known not to be one. Closing the stream early stops the generation;
        once it is exhausted, ``stream.generation`` holds the token counts and finish reason. With tools,
        the text of a tool call is never streamed: the calls are in ``stream.generation.tool_calls``.
        """
        call_steering, sampling = self._call_settings(steering, settings, options)
        prepared = prepare(
            self, [prompt], None if emphasis is None else [emphasis], None if spans is None else [spans], call_steering,
            sampling, tool_use(tools, tool_choice), checked_response_format(response_format),
        )
        return stream_text(self, prepared, sampling)

    def astream(self, prompt: Prompt, **arguments: Any) -> AsyncTextStream:
        """``stream`` for async code (``async for chunk in model.astream(...)``); bad input raises here."""
        return AsyncTextStream(self.stream(prompt, **arguments))

    def score(
        self,
        prompt: Prompt,
        continuation: str,
        *,
        emphasis: Sequence[str] | None = None,
        spans: Sequence[Span] | None = None,
        steering: Steering | None = None,
        **steering_fields: Any,
    ) -> float:
        """log p(continuation | prompt), summed over the continuation's tokens.

        For chat messages the continuation is the assistant's answer. Its keys are steered as
        generated tokens are: only with ``steer_generated`` (scaled by ``generated_alpha``).
        """
        call_steering, sampling = self._call_settings(steering, SamplingSettings(max_new_tokens=1), steering_fields)
        prepared = prepare(
            self, [prompt], None if emphasis is None else [emphasis], None if spans is None else [spans], call_steering,
            sampling,
        )
        answer = self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        if not answer:
            raise PastaError("The continuation to score is empty.")
        input_ids = torch.cat([prepared.batch.input_ids, torch.tensor([answer])], dim=1)
        check_window(self, input_ids.shape[1], 0)
        with torch.no_grad(), _steered(prepared):
            logits = self.model(input_ids=input_ids.to(self.device)).logits[0].float()  # (seq, vocab)
        predicting = logits[prepared.batch.prompt_len - 1 : -1].log_softmax(dim=-1)  # (answer, vocab)
        return float(predicting.gather(1, torch.tensor(answer, device=predicting.device)[:, None]).sum())

    def resolve_steering(self, steering: Steering) -> Steering:
        """A call's settings, complete: the ones given, else the named head set's own, else the model's."""
        if steering.heads is UNSET:
            return self.steering.override(steering)
        own = Steering.from_head_set(self.resolve_heads(steering.heads))  # type: ignore[arg-type]
        return self.steering.override(own).override(steering, heads=own.heads)

    def resolve_heads(self, heads: HeadSetLike) -> HeadSet:
        """A head set checked against this model; ``"context"`` or ``"instructions"`` name its shipped sets."""
        if isinstance(heads, str) and heads in PURPOSES:
            own = self.own_head_set(heads)
            if own is None:
                raise HeadSetError(profiled.missing_message(self.name, self.source, self.model, heads))
            heads = own
        head_set = as_head_set(heads).resolve(self.num_layers, self.num_heads)
        if not head_set:
            raise HeadSetError("The head set is empty: steering no head changes nothing. Pass steer=False instead.")
        return head_set

    def own_head_set(self, purpose: str = "context") -> HeadSet | None:
        """The set profiled on this machine for this very model (``pasta-rag profile``), else the one shipped for it.

        A set the user profiled wins: they asked for it, for these weights.
        """
        found = profiled.find(self.identity, purpose)
        return found if found is not None else shipped_head_set(self.name, purpose)

    # --- internals ----------------------------------------------------------------------

    def _call_settings(
        self, steering: Steering | None, settings: SamplingSettings | None, options: dict[str, Any]
    ) -> tuple[Steering, SamplingSettings]:
        call_steering, rest = split_options(steering, options)
        if settings is not None:
            if rest:
                raise TypeError(f"Pass settings= or decoding keywords ({sorted(rest)}), not both.")
            return call_steering, settings
        return call_steering, sampling_settings(rest)


def _steered(prepared: PreparedBatch):
    return steering(prepared.states)
