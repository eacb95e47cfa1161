"""An OpenAI request -> one core call (prompt, emphasis, Steering, SamplingSettings), checked before it runs.

Each request is prepared on its own (rendered, tokenized, its emphasis resolved, the context window
checked) when it arrives, so a bad request gets its own 400 and never fails a batch it would have
joined; the same preparation says what the request steers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..batching import PreparedBatch, prepare
from ..emphasis import CONTEXT, INSTRUCTIONS
from ..engine import PastaModel
from ..errors import PastaError, SteeringError
from ..prompts import GroupedEmphasis, Prompt, RenderedPrompt
from ..settings import SamplingSettings, Steering
from .errors import APIError, from_core
from .schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    GroupOptions,
    GroupReport,
    PastaOptions,
    PastaReport,
    refused_field,
)

DEFAULT_MAX_TOKENS = SamplingSettings().max_new_tokens


@dataclass(frozen=True)
class CoreCall:
    """What ``PastaModel.generate`` / ``stream`` receives for one request, and what it steers."""

    prompt: Prompt
    emphasis: GroupedEmphasis | None
    steering: Steering
    settings: SamplingSettings
    report: PastaReport

    @property
    def batchable(self) -> bool:
        """A seeded sampled request runs alone: in a batch its samples would depend on its neighbours."""
        return self.settings.temperature == 0 or self.settings.seed is None

    def joins(self, other: CoreCall) -> bool:
        """One ``generate_batch`` call takes one Steering and one SamplingSettings for all its prompts."""
        return (self.batchable and other.batchable and self.steering == other.steering
                and self.settings == other.settings)

    def arguments(self) -> dict:
        return {"emphasis": self.emphasis, "steering": self.steering, "settings": self.settings}


def chat_call(model: PastaModel, request: ChatCompletionRequest) -> CoreCall:
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in request.messages]
    if request.max_tokens and request.max_completion_tokens and request.max_tokens != request.max_completion_tokens:
        raise APIError(400, f"max_tokens ({request.max_tokens}) and max_completion_tokens "
                       f"({request.max_completion_tokens}) disagree; send one of them.", param="max_completion_tokens")
    return core_call(model, messages, request, request.max_completion_tokens or request.max_tokens)


def completion_call(model: PastaModel, request: CompletionRequest) -> CoreCall:
    return core_call(model, request.text(), request, request.max_tokens)


def core_call(
    model: PastaModel, prompt: Prompt, request: ChatCompletionRequest | CompletionRequest, max_tokens: int | None
) -> CoreCall:
    refused = refused_field(request)
    if refused is not None:
        name, why = refused
        raise APIError(400, f"{name} cannot be honoured: {why}. Remove the field.", param=name,
                       code="unsupported_parameter")
    steering = steering_of(request.pasta)
    try:
        rendered = model.render(prompt, emphasis=request.emphasis)
        if steering.enabled is not False and not (rendered.spans or any(rendered.groups.values())):
            steering = steering.override(enabled=False)  # the plain model, without the core's warning
        settings = sampling_of(request, max_tokens if max_tokens is not None else _default_max_tokens(model, rendered))
        prepared = prepare(model, [prompt], [request.emphasis], None, steering, settings)
    except PastaError as error:
        raise from_core(error) from None
    return CoreCall(prompt, request.emphasis, steering, settings, report_of(prepared, request.pasta))


def sampling_of(request: ChatCompletionRequest | CompletionRequest, max_tokens: int | None) -> SamplingSettings:
    """OpenAI's decoding fields as SamplingSettings; a field left out is pasta-rag's default (greedy)."""
    given = {"max_new_tokens": max_tokens, "temperature": request.temperature, "top_p": request.top_p,
             "stop": request.stop, "seed": request.seed}
    try:
        return SamplingSettings(**{name: value for name, value in given.items() if value is not None})
    except PastaError as error:
        raise APIError(400, str(error), code="invalid_value") from None


def steering_of(options: PastaOptions | None) -> Steering:
    """The request's ``pasta`` object as a Steering; fields left out are inherited from the model."""
    if options is None:
        return Steering()
    try:
        groups = {name: _group_steering(group) for name, group in (options.groups or {}).items()}
        return _group_steering(options).override(groups=groups or None)
    except SteeringError as error:
        raise APIError(400, str(error), param="pasta", code="invalid_steering") from None


def _group_steering(options: GroupOptions) -> Steering:
    """Only the fields the request set: an explicit ``generated_alpha: null`` means "alpha", a missing one "inherit"."""
    given = options.model_dump(exclude_unset=True, exclude={"groups"})
    if "steer" in given:
        given["enabled"] = given.pop("steer")
    return Steering(**given)


def _default_max_tokens(model: PastaModel, rendered: RenderedPrompt) -> int:
    """Without max_tokens, OpenAI answers up to the context window: pasta-rag's default length, or what is left."""
    prompt_tokens = len(model.tokenizer(rendered.text, add_special_tokens=rendered.add_special_tokens)["input_ids"])
    room = model.context_window - prompt_tokens
    return min(DEFAULT_MAX_TOKENS, room) if room >= 1 else DEFAULT_MAX_TOKENS  # no room: the window error says so


def report_of(prepared: PreparedBatch, options: PastaOptions | None) -> PastaReport:
    """Per emphasis group: how many prompt tokens it marks, and the heads and alpha that steer them."""
    batch = prepared.batch
    groups = {CONTEXT: batch.emphasized, **batch.groups}
    union = torch.zeros_like(batch.emphasized[0])
    reports = []
    for name, emphasized in groups.items():
        marked = emphasized[0]
        if not marked.any():
            continue
        union |= marked
        state = next((s for s in prepared.states if s.emphasized is emphasized), None)
        if state is not None:
            reports.append(GroupReport(group=name, emphasized_tokens=int(marked.sum()),
                                       head_set=_head_set_label(name, options), heads=len(state.heads),
                                       alpha=state.alpha))
    return PastaReport(steered=prepared.steered_rows[0], emphasized_tokens=int(union.sum()), groups=reports)


def _head_set_label(group: str, options: PastaOptions | None) -> str:
    """The shipped set's purpose, ``model`` (the model's own set) or ``request`` (heads the request gave)."""
    own: GroupOptions | None = options
    if group != CONTEXT:
        own = (options.groups or {}).get(group) if options is not None else None
    heads = own.heads if own is not None else None
    if isinstance(heads, str):
        return heads
    if heads is not None:
        return "request"
    return "model" if group == CONTEXT else group if group == INSTRUCTIONS else "request"


def grouped(calls: Sequence[CoreCall]) -> list[list[int]]:
    """Indices of ``calls`` in runs that one ``generate_batch`` call can take, in arrival order."""
    runs: list[list[int]] = []
    for index, call in enumerate(calls):
        run = next((r for r in runs if calls[r[0]].joins(call)), None)
        if run is None:
            runs.append([index])
        else:
            run.append(index)
    return runs

