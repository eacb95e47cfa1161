"""A prepared call: prompts rendered, tokenized and left-padded into one batch with its steering state,
and the generated rows turned back into answers.

``PastaModel`` runs every call through these two steps; code that drives ``model.generate`` itself
(the context-aware decoding baseline, with its own logits processor) uses them too, so its prompts
and answers are built exactly as the engine's are.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from . import profiled
from .emphasis import CONTEXT, INSTRUCTIONS, Span
from .errors import ContextWindowError, HeadSetError, PastaError
from .grammar import Constraint, GrammarProcessor, GrammarStop, ResponseFormat, constraint
from .heads import PURPOSES, HeadSet
from .prompts import Prompt, RenderedPrompt
from .relevance import relevant_spans
from .settings import UNSET, SamplingSettings, Steering
from .steering import SteeringState
from .stopping import cut_at_stop
from .tokens import PromptBatch, encode, pad_left
from .tools import InvalidToolCall, ToolCall, ToolUse, read_answer

if TYPE_CHECKING:
    from .engine import PastaModel


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    """``stop`` (a stop string or end-of-sequence token) or ``length`` (max_new_tokens reached, or a constrained
    answer closed early because its tokens ran low: ``grammar.FINISH_WINDOW``)."""
    steered: bool
    """Whether any head was steered for this prompt (False when nothing was emphasized)."""
    tool_calls: tuple[ToolCall, ...] = ()
    """The calls the model made (``tools=``), parsed and valid against their tool's schema; ``text`` is
    the answer without them."""
    invalid_tool_calls: tuple[InvalidToolCall, ...] = ()
    """Calls it wrote that cannot be run, each with the reason."""


@dataclass(frozen=True)
class PreparedBatch:
    """Everything ``model.generate`` needs for one batch of prompts, and what its rows steer."""

    batch: PromptBatch
    states: tuple[SteeringState, ...]
    """One per emphasis group that steers something; none: the plain model (steering off, nothing emphasized)."""
    config: GenerationConfig
    steered_rows: list[bool]
    tools: ToolUse | None = None
    """The call's tools: the answers are read for tool calls when they are offered."""
    constraint: Constraint | None = None
    """The grammar the answers are decoded under (a forced tool call, a response_format), if any."""

    @property
    def state(self) -> SteeringState | None:
        """The ``context`` group's state (the only one unless other groups are emphasized)."""
        context = self.batch.emphasized
        return next((s for s in self.states if s.emphasized is context), None)

    def generate_inputs(self, device: torch.device) -> dict[str, Any]:
        """The arguments every ``model.generate`` call of this prompt batch shares."""
        return {
            "input_ids": self.batch.input_ids.to(device),
            "attention_mask": self.batch.attention_mask.to(device),
            "generation_config": self.config,
        }

    def decoding_hooks(self, stopper: StoppingCriteria) -> dict[str, Any]:
        """The logits processor and stopping criteria of one ``model.generate`` run (fresh grammar state)."""
        if self.constraint is None:
            return {"stopping_criteria": StoppingCriteriaList([stopper])}
        processor = self.constraint.processor(self.batch.input_ids.shape[0], self.batch.prompt_len,
                                              self.config.max_new_tokens)
        return {"logits_processor": LogitsProcessorList([processor]),
                "stopping_criteria": StoppingCriteriaList([stopper, GrammarStop(processor)])}

    @staticmethod
    def grammar_ends(hooks: dict[str, Any]) -> dict[int, str]:
        """How each constrained row of a finished run ended (``decoding_hooks``' processor): ``stop`` when its
        grammar completed, ``length`` when the grammar had to close it early; no entry when it did not end."""
        processor = next((p for p in hooks.get("logits_processor") or [] if isinstance(p, GrammarProcessor)), None)
        if processor is None:
            return {}
        return {row: "length" if row in processor.hurried else "stop"
                for row in range(len(processor.matchers)) if processor.finished(row)}

    def prompt_tokens(self, row: int) -> int:
        return int(self.batch.attention_mask[row].sum())


def prepare(
    model: PastaModel,
    prompts: Sequence[Prompt],
    emphasis: Sequence[Sequence[str] | None] | None,
    spans: Sequence[Sequence[Span] | None] | None,
    steering: Steering,
    sampling: SamplingSettings,
    tools: ToolUse | None = None,
    response_format: ResponseFormat | None = None,
) -> PreparedBatch:
    """Render, tokenize and pad ``prompts``; ``emphasis`` and ``spans`` are per prompt (or None)."""
    if isinstance(prompts, str) or not prompts:
        raise PastaError("generate_batch takes a non-empty list of prompts; use generate for one prompt.")
    emphasis = _per_prompt(emphasis, len(prompts), "emphasis")
    spans = _per_prompt(spans, len(prompts), "spans")
    call = model.resolve_steering(steering)  # resolved even when nothing is steered: bad input always says so
    grammar = constraint(model.model, model.tokenizer, tools, response_format)
    encoded = []
    for prompt, row_emphasis, row_spans in zip(prompts, emphasis, spans):
        rendered = selected(model.render(prompt, emphasis=row_emphasis, spans=row_spans, tools=tools), call)
        if not rendered.text:
            raise PastaError("The prompt is empty.")
        encoded.append(encode(model.tokenizer, rendered))
    batch = pad_left(encoded, model.pad_token_id)
    check_window(model, batch.prompt_len, sampling.max_new_tokens)
    config = sampling.generation_config(model.model.generation_config, model.pad_token_id)
    states = steering_states(model, batch, call)
    rows = [any(bool(state.emphasized[i].any()) for state in states) for i in range(len(prompts))]
    return PreparedBatch(batch, states, config, rows, tools, grammar)


def selected(rendered: RenderedPrompt, call: Steering) -> RenderedPrompt:
    """The prompt with a group's spans narrowed to the relevant ones where its settings say ``select="relevant"``.

    The call's own ``select`` is the context group's; another group selects only when its settings say so.
    """
    groups = call.named_groups

    def narrowed(spans: list[Span], select: Any) -> list[Span]:
        return relevant_spans(rendered.text, spans) if select == "relevant" else spans

    others = {name: narrowed(found, groups[name].select if name in groups else "all")
              for name, found in rendered.groups.items()}
    return dataclasses.replace(rendered, spans=narrowed(rendered.spans, call.select), groups=others)


def steering_states(model: PastaModel, batch: PromptBatch, call: Steering) -> tuple[SteeringState, ...]:
    """The state of each emphasis group that steers something (none: the plain model).

    ``call`` is the call's steering resolved against the model (``resolve_steering``): the context group's.
    A head in several groups' sets is steered by one group only: the first in ``group_order``, so
    trusted text (the ``instructions`` group) keeps a head that the ``context`` set also names.
    """
    if not call.enabled:
        return ()
    names = group_order(batch, call)
    if not names:
        warnings.warn(
            "Steering was asked for but nothing is emphasized; generating unsteered. Mark text with "
            "pasta_rag.emphasize(...), or pass emphasis=[...] or spans=[...].",
            stacklevel=5,
        )
        return ()
    states: list[SteeringState] = []
    claimed: set[tuple[int, int]] = set()
    for name in names:
        resolved = call if name == CONTEXT else model.resolve_steering(_group_steering(call, name))
        if not resolved.enabled:
            continue
        if resolved.heads is UNSET:
            raise HeadSetError(profiled.missing_message(model.name, model.source, model.model))
        heads = HeadSet.from_pairs([p for p in resolved.heads.pairs() if p not in claimed])  # type: ignore[union-attr]
        claimed.update(heads.pairs())
        if heads:
            states.append(SteeringState(batch.group(name), heads, resolved.alpha, model.num_heads,  # type: ignore[arg-type]
                                        resolved.steer_generated, resolved.generated_alpha))  # type: ignore[arg-type]
    return tuple(states)


def group_order(batch: PromptBatch, call: Steering) -> list[str]:
    """The groups with emphasized tokens, in the order they claim heads: instructions, yours, context."""
    named = list(call.named_groups)
    unnamed = sorted(set(batch.groups) - {INSTRUCTIONS, *named})
    order = [INSTRUCTIONS] + [n for n in named if n != INSTRUCTIONS] + unnamed
    return [name for name in [*order, CONTEXT] if batch.group(name).any()]


def _group_steering(call: Steering, name: str) -> Steering:
    given = call.named_groups.get(name, Steering())
    if name in PURPOSES:  # unless told otherwise, the model's set for that purpose, with its own settings
        return Steering(heads=name).override(given)
    if given.heads is not UNSET:
        return given
    raise HeadSetError(
        f"The prompt emphasizes group {name!r}, which has no settings: pass "
        f"steering=Steering(groups={{{name!r}: Steering(heads=...)}})."
    )


def check_window(model: PastaModel, prompt_len: int, max_new_tokens: int) -> None:
    if prompt_len + max_new_tokens > model.context_window:
        raise ContextWindowError(
            f"The prompt has {prompt_len} tokens and up to {max_new_tokens} new tokens were asked for, "
            f"but {model.name} reads at most {model.context_window}. Shorten the context (fewer or shorter "
            "passages) or lower max_new_tokens."
        )


def answer_text(model: PastaModel, generated: Sequence[int], stop: Sequence[str]) -> tuple[str, bool]:
    """Decode up to the first end-of-sequence token, then cut at the first stop string; (text, stopped)."""
    ended = _first_eos(model, generated)
    text = model.tokenizer.decode(generated[:ended], skip_special_tokens=True)
    text, stopped = cut_at_stop(text, stop)
    return text, stopped or ended is not None


def finish(model: PastaModel, row: torch.Tensor, prompt_tokens: int, sampling: SamplingSettings,
           steered: bool, tools: ToolUse | None = None, grammar_end: str | None = None) -> Generation:
    """One generated row (its padding and tokens after the end included) as an answer with its counts
    and, when tools were offered, its tool calls; ``grammar_end``: how its grammar ended it, if it did."""
    tokens = row.tolist()
    ended = _first_eos(model, tokens)
    completion = tokens[: ended + 1] if ended is not None else [t for t in tokens if t != model.pad_token_id]
    text, stopped = answer_text(model, tokens, sampling.stop)  # type: ignore[arg-type]
    answer = read_answer(text, tools)
    reason = grammar_end or ("stop" if stopped else "length")
    return Generation(answer.text, prompt_tokens, len(completion), reason, steered,
                      answer.tool_calls, answer.invalid_tool_calls)


def finish_all(model: PastaModel, output: torch.Tensor, prepared: PreparedBatch,
               sampling: SamplingSettings, grammar_ends: dict[int, str] | None = None) -> list[Generation]:
    """The answers of a whole ``model.generate`` output (batch, prompt_len + new)."""
    generated = output[:, prepared.batch.prompt_len :].cpu()
    return [
        finish(model, row, prepared.prompt_tokens(i), sampling, prepared.steered_rows[i], prepared.tools,
               (grammar_ends or {}).get(i))
        for i, row in enumerate(generated)
    ]


def _first_eos(model: PastaModel, tokens: Sequence[int]) -> int | None:
    eos = model.model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    return next((i for i, token in enumerate(tokens) if token in eos_ids), None)


def _per_prompt(values: Sequence | None, count: int, what: str) -> list:
    if values is None:
        return [None] * count
    if len(values) != count:
        raise PastaError(f"{what} must have one entry per prompt ({count}), got {len(values)}.")
    return list(values)
