"""PastaModel: one loaded model that generates, streams and scores, steered or not.

It is the object the LangChain and LlamaIndex classes wrap: load it once and
share it. It holds no per-call state, so it is safe to call from several
threads; each call's steering lives in a ContextVar (see ``steering``).
"""

from __future__ import annotations

import os
import queue
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer
from typing_extensions import Unpack

from . import loading
from .emphasis import Span
from .errors import ContextWindowError, HeadSetError, PastaError, SteeringError
from .heads import PURPOSES, HeadSet, as_head_set, shipped_head_set
from .prompts import Prompt, RenderedPrompt, render
from .steering import SteeringState, steered_implementation, steering
from .stopping import StopOnText, cut_at_stop, safe_prefix_length
from .tokens import PromptBatch, encode, pad_left

DEFAULT_ALPHA = 0.01
HeadSetLike = HeadSet | Mapping | list | str | os.PathLike


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    """``stop`` (a stop string or end-of-sequence token) or ``length`` (max_new_tokens reached)."""
    steered: bool
    """Whether any head was steered for this prompt (False when nothing was emphasized)."""


@dataclass(frozen=True)
class SteeringOptions:
    """What one call asks of steering; None: the model's setting (or the per-call head set's own)."""

    steer: bool = True
    heads: HeadSetLike | None = None
    alpha: float | None = None
    steer_generated: bool | None = None
    generated_alpha: float | None = None


class SamplingKwargs(TypedDict, total=False):
    """The decoding keywords generate() and stream() take; see SamplingSettings."""

    max_new_tokens: int
    min_new_tokens: int
    temperature: float
    top_p: float
    top_k: int | None
    repetition_penalty: float
    stop: Sequence[str] | None
    seed: int | None


@dataclass(frozen=True)
class SamplingSettings:
    """Decoding settings, by the names transformers users know. temperature 0 means greedy."""

    max_new_tokens: int = 256
    min_new_tokens: int = 0
    """Benchmarks set it to max_new_tokens so every variant decodes the same number of tokens."""
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int | None = None
    repetition_penalty: float = 1.0
    stop: Sequence[str] | None = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(self.stop or ()))  # None, a list or a tuple

    def generation_config(self, base: GenerationConfig, pad_token_id: int) -> GenerationConfig:
        if self.max_new_tokens < 1:
            raise PastaError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}.")
        if self.temperature < 0:
            raise PastaError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}.")
        sample = self.temperature > 0
        config = GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            min_new_tokens=self.min_new_tokens or None,
            do_sample=sample,
            temperature=self.temperature if sample else None,
            top_p=self.top_p if sample else None,
            top_k=self.top_k if sample else None,
            repetition_penalty=self.repetition_penalty,
            pad_token_id=pad_token_id,
            eos_token_id=base.eos_token_id,
            bos_token_id=base.bos_token_id,
        )
        return config


class PastaModel:
    """A causal LM whose profiled attention heads can be steered toward emphasized prompt text.

    >>> model = PastaModel.from_pretrained("default")
    >>> model.generate(f"Context: {emphasize(doc)}\\nQuestion: ...").text
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        heads: HeadSetLike | None = None,
        alpha: float | None = None,
        steer_generated: bool | None = None,
        generated_alpha: float | None = None,
        name: str | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name or getattr(model.config, "_name_or_path", None) or type(model).__name__
        text_config = model.config.get_text_config()
        self.num_layers: int = text_config.num_hidden_layers
        self.num_heads: int = text_config.num_attention_heads
        self.context_window: int = getattr(text_config, "max_position_embeddings", None) or 2048
        self._use_steerable_attention(text_config)
        if heads is None:
            heads = shipped_head_set(self.name)
        self.heads: HeadSet | None = self.resolve_heads(heads) if heads is not None else None
        # A head set is chosen together with its settings: use its own unless told otherwise.
        self.alpha: float = ALPHA.resolve(alpha, self.heads, DEFAULT_ALPHA)
        self.steer_generated: bool = STEER_GENERATED.resolve(steer_generated, self.heads, False)
        self.generated_alpha: float | None = GENERATED_ALPHA.resolve(generated_alpha, self.heads, None)
        self.pad_token_id: int = _pad_token_id(tokenizer, model)

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike = "default",
        *,
        heads: HeadSetLike | None = None,
        alpha: float | None = None,
        steer_generated: bool | None = None,
        generated_alpha: float | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        device_map: str | dict | None = None,
        attn_implementation: str | None = None,
        **model_kwargs: Any,
    ) -> PastaModel:
        """Load ``"default"`` (SmolLM2-135M-Instruct), ``"gemma3-270m"``, a .gguf file, a directory or a hub id.

        ``alpha`` defaults to the head set's own (its metadata), else 0.01; so does ``steer_generated``
        (also push down attention to generated tokens in steered heads; see ``SteeringState``), else False,
        and ``generated_alpha`` (the scale of generated keys then), else alpha.
        ``attn_implementation`` is the kernel to steer: ``sdpa`` (default) or ``eager``;
        ``device``, ``dtype`` and ``device_map`` mean what they mean in transformers.
        """
        loaded = loading.load(
            source,
            device=device,
            dtype=dtype,
            device_map=device_map,
            attn_implementation=steered_implementation(attn_implementation),
            **model_kwargs,
        )
        return cls(loaded.model, loaded.tokenizer, heads=heads, alpha=alpha, steer_generated=steer_generated,
                   generated_alpha=generated_alpha, name=loaded.name)

    # --- public API ---------------------------------------------------------------------

    def render(
        self, prompt: Prompt, *, emphasis: Sequence[str] | None = None, spans: Sequence[Span] | None = None
    ) -> RenderedPrompt:
        """The final prompt text (chat template applied, markers stripped) and its emphasized spans."""
        return render(self.tokenizer, prompt, emphasis, spans)

    def generate(
        self,
        prompt: Prompt,
        *,
        emphasis: Sequence[str] | None = None,
        spans: Sequence[Span] | None = None,
        steer: bool = True,
        heads: HeadSetLike | None = None,
        alpha: float | None = None,
        steer_generated: bool | None = None,
        generated_alpha: float | None = None,
        **sampling: Unpack[SamplingKwargs],
    ) -> Generation:
        """Generate from one prompt: a string (completion) or chat messages (the model's chat template).

        Emphasis comes as markers in the prompt (``emphasize``), ``emphasis`` substrings of the final
        prompt (every occurrence), or character ``spans`` of it; all are one union. ``steer=False``
        runs the plain model. ``alpha``, ``steer_generated`` and ``generated_alpha`` override the model's
        (or the per-call ``heads``' own) for this call only, so one loaded model can compare both. Decoding keywords:
        max_new_tokens (256), min_new_tokens, temperature (0 = greedy), top_p, top_k,
        repetition_penalty, stop (strings, any number of tokens), seed.
        """
        settings = SamplingSettings(**sampling)
        return self.generate_batch(
            [prompt],
            emphasis=None if emphasis is None else [emphasis],
            spans=None if spans is None else [spans],
            steer=steer,
            heads=heads,
            alpha=alpha,
            steer_generated=steer_generated,
            generated_alpha=generated_alpha,
            settings=settings,
        )[0]

    def generate_batch(
        self,
        prompts: Sequence[Prompt],
        *,
        emphasis: Sequence[Sequence[str] | None] | None = None,
        spans: Sequence[Sequence[Span] | None] | None = None,
        steer: bool = True,
        heads: HeadSetLike | None = None,
        alpha: float | None = None,
        steer_generated: bool | None = None,
        generated_alpha: float | None = None,
        settings: SamplingSettings | None = None,
        **setting_kwargs: Any,
    ) -> list[Generation]:
        """Generate for several prompts in one left-padded batch; ``emphasis`` / ``spans`` are per prompt."""
        settings = settings or SamplingSettings(**setting_kwargs)
        options = SteeringOptions(steer, heads, alpha, steer_generated, generated_alpha)
        call = self._prepare(prompts, emphasis, spans, options, settings)
        if settings.seed is not None:
            torch.manual_seed(settings.seed)
        stopper = StopOnText(self.tokenizer, call.batch.prompt_len, settings.stop)
        with torch.no_grad(), steering(call.state):
            output = self.model.generate(
                **call.generate_inputs(self.device), stopping_criteria=StoppingCriteriaList([stopper])
            )
        generated = output[:, call.batch.prompt_len :].cpu()
        return [
            self._finish(row, call.prompt_tokens(i), settings, call.state_rows[i]) for i, row in enumerate(generated)
        ]

    def stream(
        self,
        prompt: Prompt,
        *,
        emphasis: Sequence[str] | None = None,
        spans: Sequence[Span] | None = None,
        steer: bool = True,
        heads: HeadSetLike | None = None,
        alpha: float | None = None,
        steer_generated: bool | None = None,
        generated_alpha: float | None = None,
        **sampling: Unpack[SamplingKwargs],
    ) -> TextStream:
        """The answer as it is generated, token by token; joined, it equals ``generate(...).text``.

        Bad input raises here, before any token. Text that could be the start of a stop string is
        held back until it is known not to be one. Closing the stream early stops the generation;
        once it is exhausted, ``stream.generation`` holds the token counts and finish reason.
        """
        settings = SamplingSettings(**sampling)
        call = self._prepare(
            [prompt],
            None if emphasis is None else [emphasis],
            None if spans is None else [spans],
            SteeringOptions(steer, heads, alpha, steer_generated, generated_alpha),
            settings,
        )
        stream = TextStream()
        stream._chunks = self._stream_chunks(call, settings, stream)
        return stream

    def _stream_chunks(self, call: _Call, settings: SamplingSettings, sink: TextStream) -> Iterator[str]:
        tokens: queue.Queue = queue.Queue()
        cancel = threading.Event()
        stopper = StopOnText(self.tokenizer, call.batch.prompt_len, settings.stop, cancel)

        def run() -> None:
            try:
                if settings.seed is not None:
                    torch.manual_seed(settings.seed)
                with torch.no_grad(), steering(call.state):
                    self.model.generate(
                        **call.generate_inputs(self.device),
                        stopping_criteria=StoppingCriteriaList([stopper]),
                        streamer=_QueueStreamer(tokens),
                    )
            except BaseException as error:  # handed to the consumer, which re-raises it
                tokens.put(error)
            finally:
                tokens.put(None)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        generated: list[int] = []
        shown = 0
        try:
            while (item := tokens.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                generated.extend(item)
                text, stopped = self._answer_text(generated, settings.stop)
                visible = len(text) if stopped else safe_prefix_length(text, settings.stop)
                if visible > shown:
                    yield text[shown:visible]
                    shown = visible
                if stopped:
                    break
            text, _ = self._answer_text(generated, settings.stop)
            if len(text) > shown:
                yield text[shown:]
            sink.generation = self._finish(
                torch.tensor(generated, dtype=torch.long), call.prompt_tokens(0), settings, call.state_rows[0]
            )
        finally:
            cancel.set()
            worker.join()

    def score(
        self,
        prompt: Prompt,
        continuation: str,
        *,
        emphasis: Sequence[str] | None = None,
        spans: Sequence[Span] | None = None,
        steer: bool = True,
        heads: HeadSetLike | None = None,
        alpha: float | None = None,
        steer_generated: bool | None = None,
        generated_alpha: float | None = None,
    ) -> float:
        """log p(continuation | prompt), summed over the continuation's tokens.

        For chat messages the continuation is the assistant's answer. Its keys are steered as
        generated tokens are: only with ``steer_generated`` (scaled by ``generated_alpha``).
        """
        call = self._prepare([prompt], None if emphasis is None else [emphasis], None if spans is None else [spans],
                             SteeringOptions(steer, heads, alpha, steer_generated, generated_alpha),
                             SamplingSettings(max_new_tokens=1))
        answer = self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        if not answer:
            raise PastaError("The continuation to score is empty.")
        input_ids = torch.cat([call.batch.input_ids, torch.tensor([answer])], dim=1)
        self._check_window(input_ids.shape[1], 0)
        with torch.no_grad(), steering(call.state):
            logits = self.model(input_ids=input_ids.to(self.device)).logits[0].float()  # (seq, vocab)
        predicting = logits[call.batch.prompt_len - 1 : -1].log_softmax(dim=-1)  # (answer, vocab)
        return float(predicting.gather(1, torch.tensor(answer, device=predicting.device)[:, None]).sum())

    @property
    def device(self) -> torch.device:
        return self.model.device

    # --- internals ----------------------------------------------------------------------

    def _prepare(
        self,
        prompts: Sequence[Prompt],
        emphasis: Sequence[Sequence[str] | None] | None,
        spans: Sequence[Sequence[Span] | None] | None,
        options: SteeringOptions,
        settings: SamplingSettings,
    ) -> _Call:
        if isinstance(prompts, str) or not prompts:
            raise PastaError("generate_batch takes a non-empty list of prompts; use generate for one prompt.")
        emphasis = _per_prompt(emphasis, len(prompts), "emphasis")
        spans = _per_prompt(spans, len(prompts), "spans")
        encoded = []
        for prompt, row_emphasis, row_spans in zip(prompts, emphasis, spans):
            rendered = self.render(prompt, emphasis=row_emphasis, spans=row_spans)
            if not rendered.text:
                raise PastaError("The prompt is empty.")
            encoded.append(encode(self.tokenizer, rendered))
        batch = pad_left(encoded, self.pad_token_id)
        self._check_window(batch.prompt_len, settings.max_new_tokens)
        config = settings.generation_config(self.model.generation_config, self.pad_token_id)
        state = self._steering_state(batch, options)
        rows = [bool(state is not None and state.emphasized[i].any()) for i in range(len(prompts))]
        return _Call(batch, state, config, rows)

    def _steering_state(self, batch: PromptBatch, options: SteeringOptions) -> SteeringState | None:
        given = ((ALPHA, options.alpha), (STEER_GENERATED, options.steer_generated),
                 (GENERATED_ALPHA, options.generated_alpha))
        for setting, value in given:  # checked even when nothing is steered, so bad input always says so
            if value is not None:
                setting.check(value)
        if not options.steer:
            return None
        if not batch.emphasized.any():
            warnings.warn(
                "Steering was asked for but nothing is emphasized; generating unsteered. Mark text with "
                "pasta_rag.emphasize(...), or pass emphasis=[...] or spans=[...].",
                stacklevel=4,
            )
            return None
        head_set = self.resolve_heads(options.heads) if options.heads is not None else self.heads
        if head_set is None:
            raise HeadSetError(
                f"pasta-rag ships no head set for {self.name!r}; pass heads= (a JSON file, "
                '{"layer": [heads]} or a list of layers), or profile one with `pasta-rag profile`.'
            )
        own = head_set if options.heads is not None else None  # a per-call head set brings its own settings
        return SteeringState(
            batch.emphasized,
            head_set,
            ALPHA.resolve(options.alpha, own, self.alpha),
            self.num_heads,
            STEER_GENERATED.resolve(options.steer_generated, own, self.steer_generated),
            GENERATED_ALPHA.resolve(options.generated_alpha, own, self.generated_alpha),
        )

    def resolve_heads(self, heads: HeadSetLike) -> HeadSet:
        """A head set checked against this model; ``"context"`` or ``"instructions"`` name its shipped sets."""
        if isinstance(heads, str) and heads in PURPOSES:
            shipped = shipped_head_set(self.name, heads)
            if shipped is None:
                raise HeadSetError(
                    f"pasta-rag ships no {heads!r} head set for {self.name!r}; pass a head set file or "
                    "profile one with `pasta-rag profile`."
                )
            heads = shipped
        head_set = as_head_set(heads).resolve(self.num_layers, self.num_heads)
        if not head_set:
            raise HeadSetError("The head set is empty: steering no head changes nothing. Pass steer=False instead.")
        return head_set

    def _check_window(self, prompt_len: int, max_new_tokens: int) -> None:
        if prompt_len + max_new_tokens > self.context_window:
            raise ContextWindowError(
                f"The prompt has {prompt_len} tokens and up to {max_new_tokens} new tokens were asked for, "
                f"but {self.name} reads at most {self.context_window}. Shorten the context (fewer or shorter "
                "passages) or lower max_new_tokens."
            )

    def _use_steerable_attention(self, text_config: Any) -> None:
        """Switch a user-loaded model to the steered twin of its attention implementation."""
        current = self.model.config._attn_implementation
        wanted = steered_implementation(current)
        if getattr(text_config, "attn_logit_softcapping", None) and wanted == "pasta_sdpa":
            wanted = "pasta_eager"  # SDPA cannot soft-cap; the model's eager attention can
        if current != wanted:
            self.model.set_attn_implementation(wanted)

    def _answer_text(self, generated: Sequence[int], stop: Sequence[str]) -> tuple[str, bool]:
        """Decode up to the first end-of-sequence token, then cut at the first stop string."""
        eos = _eos_ids(self.model.generation_config)
        ended = next((i for i, token in enumerate(generated) if token in eos), None)
        text = self.tokenizer.decode(generated[:ended], skip_special_tokens=True)
        text, stopped = cut_at_stop(text, stop)
        return text, stopped or ended is not None

    def _finish(self, row: torch.Tensor, prompt_tokens: int, settings: SamplingSettings, steered: bool) -> Generation:
        tokens = row.tolist()
        eos = _eos_ids(self.model.generation_config)
        ended = next((i for i, token in enumerate(tokens) if token in eos), None)
        completion = tokens[: ended + 1] if ended is not None else [t for t in tokens if t != self.pad_token_id]
        text, stopped = self._answer_text(tokens, settings.stop)
        return Generation(text, prompt_tokens, len(completion), "stop" if stopped else "length", steered)


class TextStream(Iterator[str]):
    """The chunks of a streamed answer (an iterator of str); ``generation`` is set after the last one."""

    def __init__(self) -> None:
        self._chunks: Iterator[str] = iter(())
        self.generation: Generation | None = None

    def __next__(self) -> str:
        return next(self._chunks)

    def close(self) -> None:
        """Stop generating (the worker thread ends at its next token)."""
        self._chunks.close()


@dataclass(frozen=True)
class _Call:
    batch: PromptBatch
    state: SteeringState | None
    config: GenerationConfig
    state_rows: list[bool]

    def generate_inputs(self, device: torch.device) -> dict[str, Any]:
        """The arguments every ``model.generate`` call of this prompt batch shares."""
        return {
            "input_ids": self.batch.input_ids.to(device),
            "attention_mask": self.batch.attention_mask.to(device),
            "generation_config": self.config,
        }

    def prompt_tokens(self, row: int) -> int:
        return int(self.batch.attention_mask[row].sum())


class _QueueStreamer(BaseStreamer):
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


def _per_prompt(values: Sequence | None, count: int, what: str) -> list:
    if values is None:
        return [None] * count
    if len(values) != count:
        raise PastaError(f"{what} must have one entry per prompt ({count}), got {len(values)}.")
    return list(values)


@dataclass(frozen=True)
class _Setting:
    """A steering setting that a head set records in its metadata, because it was chosen with it.

    Resolved as: the value given (checked), else the head set's own (checked as such), else ``default``
    (the model's, or the built-in one).
    """

    name: str
    check: Callable[[Any], Any]
    """The value, checked; raises SteeringError saying what is allowed."""

    def resolve(self, given: Any, head_set: HeadSet | None, default: Any) -> Any:
        if given is not None:
            return self.check(given)
        if head_set is None or self.name not in head_set.metadata:
            return default
        try:
            return self.check(head_set.metadata[self.name])
        except SteeringError as error:
            raise HeadSetError(f"The head set's metadata {self.name!r} is wrong: {error}") from None


def _checked_alpha(alpha: Any) -> float:
    if not _is_scale(alpha):
        raise SteeringError(f"alpha must be > 0 (the paper uses 0.01; smaller steers harder), got {alpha!r}.")
    return float(alpha)


def _checked_steer_generated(steer_generated: Any) -> bool:
    if not isinstance(steer_generated, bool):
        raise SteeringError(
            f"steer_generated must be True, False or None (None: the head set's choice), got {steer_generated!r}."
        )
    return steer_generated


def _checked_generated_alpha(generated_alpha: Any) -> float | None:
    if generated_alpha is None:
        return None
    if not _is_scale(generated_alpha):
        raise SteeringError(
            f"generated_alpha must be a number > 0 (the attention scale of generated tokens in steered heads, "
            f"used with steer_generated) or None (the head set's, else alpha), got {generated_alpha!r}."
        )
    return float(generated_alpha)


ALPHA = _Setting("alpha", _checked_alpha)
STEER_GENERATED = _Setting("steer_generated", _checked_steer_generated)
GENERATED_ALPHA = _Setting("generated_alpha", _checked_generated_alpha)  # null in metadata: alpha, not the model's


def _is_scale(value: Any) -> bool:
    """An attention scale: a positive number (not a bool, which Python counts as one)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _eos_ids(config: GenerationConfig) -> set[int]:
    eos = config.eos_token_id
    return set(eos if isinstance(eos, list) else [] if eos is None else [eos])


def _pad_token_id(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> int:
    for candidate in (tokenizer.pad_token_id, model.generation_config.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate if not isinstance(candidate, list) else candidate[0])
    return 0
