"""An OpenAI request -> one core call (prompt, emphasis, Steering, SamplingSettings, tools, response format),
checked before it runs.

Each request is prepared on its own (rendered, tokenized, its emphasis resolved, the context window
checked) when it arrives, so a bad request gets its own 400 and never fails a batch it would have
joined; the same preparation says what the request steers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..batching import PreparedBatch, prepare
from ..emphasis import CONTEXT, INSTRUCTIONS
from ..engine import PastaModel
from ..errors import ContextWindowError, GrammarError, PastaError, SteeringError, ToolError
from ..grammar import response_format as checked_response_format
from ..prompts import GroupedEmphasis, Prompt, RenderedPrompt
from ..settings import SamplingSettings, Steering
from ..tools import ToolUse, tool_use
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
    tools: Sequence[Mapping[str, Any]] | None = None
    tool_choice: str | Mapping[str, Any] | None = None
    response_format: Mapping[str, Any] | None = None

    @property
    def batchable(self) -> bool:
        """A seeded sampled request runs alone: in a batch its samples would depend on its neighbours."""
        return self.settings.temperature == 0 or self.settings.seed is None

    def joins(self, other: CoreCall) -> bool:
        """One ``generate_batch`` call takes one Steering and one SamplingSettings for all its prompts."""
        return (self.batchable and other.batchable and self.steering == other.steering
                and self.settings == other.settings and self.decoding() == other.decoding())

    def decoding(self) -> dict[str, Any]:
        """The tools and response format: a batch takes one of each (its grammar decodes every row)."""
        return {"tools": self.tools, "tool_choice": self.tool_choice, "response_format": self.response_format}

    def arguments(self) -> dict:
        return {"emphasis": self.emphasis, "steering": self.steering, "settings": self.settings, **self.decoding()}


def chat_call(model: PastaModel, request: ChatCompletionRequest) -> CoreCall:
    messages = [m.core() for m in request.messages]
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
    use = tools_of(request)
    fmt = _checked(checked_response_format, request.response_format, param="response_format")
    try:
        rendered = model.render(prompt, emphasis=request.emphasis, tools=use)
    except ToolError as error:  # an assistant message's tool_calls, a tool message
        raise APIError(400, str(error), param="messages", code="invalid_tool_message") from None
    except PastaError as error:
        raise from_core(error) from None
    if steering.enabled is not False and not (rendered.spans or any(rendered.groups.values())):
        steering = steering.override(enabled=False)  # the plain model, without the core's warning
    settings = sampling_of(request, max_tokens if max_tokens is not None else _default_max_tokens(model, rendered))
    try:
        prepared = prepare(model, [prompt], [request.emphasis], None, steering, settings, use, fmt)
    except GrammarError as error:  # the schema of a forced tool or of the response format does not compile
        raise APIError(400, str(error), param="response_format" if fmt else "tools", code="invalid_schema") from None
    except ContextWindowError as error:
        raise _window_error(model, prompt, request, error, use) from None
    except PastaError as error:
        raise from_core(error) from None
    return CoreCall(prompt, request.emphasis, steering, settings, report_of(prepared, request.pasta),
                    request.tools or None, request.tool_choice, request.response_format)


def tools_of(request: ChatCompletionRequest | CompletionRequest) -> ToolUse | None:
    """The request's tools and tool choice, checked; an error names the field that is wrong.
    ``tools: []`` is no tools, as OpenAI reads it."""
    tools = request.tools or None
    _checked(tool_use, tools, None, param="tools")
    return _checked(tool_use, tools, request.tool_choice, param="tool_choice")


def _checked(check: Any, *values: Any, param: str) -> Any:
    try:
        return check(*values)
    except PastaError as error:
        raise APIError(400, str(error), param=param, code="invalid_value") from None


def _window_error(model: PastaModel, prompt: Prompt, request: ChatCompletionRequest | CompletionRequest,
                  error: ContextWindowError, use: ToolUse | None) -> APIError:
    """The core's window error (its token counts), and how many of the prompt's tokens the tools take."""
    message = str(error)
    if use is not None and use.offered:
        with_tools = _prompt_tokens(model, model.render(prompt, emphasis=request.emphasis, tools=use))
        without = _prompt_tokens(model, model.render(prompt, emphasis=request.emphasis))
        message += (f" The tools' descriptions take {with_tools - without} of the prompt's {with_tools} tokens: "
                    "send fewer or shorter tools.")
    return APIError(400, message, param="messages", code="context_length_exceeded")


def sampling_of(request: ChatCompletionRequest | CompletionRequest, max_tokens: int | None) -> SamplingSettings:
    """OpenAI's decoding fields as SamplingSettings; a field left out is pasta-rag's default (greedy)."""
    given = {"max_new_tokens": max_tokens, "temperature": request.temperature, "top_p": request.top_p,
             "stop": request.stop, "seed": request.seed, "top_k": request.top_k,
             "repetition_penalty": request.repetition_penalty, "min_new_tokens": request.min_tokens}
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
    room = model.context_window - _prompt_tokens(model, rendered)
    return min(DEFAULT_MAX_TOKENS, room) if room >= 1 else DEFAULT_MAX_TOKENS  # no room: the window error says so


def _prompt_tokens(model: PastaModel, rendered: RenderedPrompt) -> int:
    return len(model.tokenizer(rendered.text, add_special_tokens=rendered.add_special_tokens)["input_ids"])


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

