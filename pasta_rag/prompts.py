"""Prompts -> the exact string the model reads, and its emphasized character spans.

Spans are resolved only here, on the final string after the chat template,
because a template adds text before and between messages: offsets into a
message would point at the wrong characters of the rendered prompt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedTokenizerBase

from .emphasis import CONTEXT, Span, check_spans, find_substrings, merge_spans, parse_groups
from .errors import EmphasisError
from .tools import (
    TAGS_FORMAT,
    TEMPLATE_FORMAT,
    ToolError,
    ToolUse,
    tags_messages,
    template_messages,
    template_renders_tools,
)

Message = Mapping[str, Any]
"""A chat message: ``{"role": "system" | "user" | "assistant" | "tool", "content": str}``. An assistant
message may carry ``tool_calls`` (``[{"id", "name", "arguments"}]``, or OpenAI's ``{"id", "type":
"function", "function": {...}}``; its content may then be None), a tool message ``tool_call_id`` and
``name``."""

Prompt = str | Sequence[Message]
"""A plain completion prompt, or chat messages rendered with the model's chat template."""

PLAIN_FORMAT = "plain"
CHAT_TEMPLATE_FORMAT = "chat_template"


GroupedEmphasis = Sequence[str] | Mapping[str, Sequence[str]]
"""Emphasized substrings: a list (the ``context`` group) or a list per group name."""
GroupedSpans = Sequence[Span] | Mapping[str, Sequence[Span]]
"""Emphasized character spans: a list (the ``context`` group) or a list per group name."""


@dataclass(frozen=True)
class RenderedPrompt:
    text: str
    """The final prompt, markers stripped: exactly what is tokenized."""
    spans: list[Span]
    """Emphasized character ranges of ``text`` in the ``context`` group (the default one)."""
    add_special_tokens: bool
    """False when a chat template already wrote the special tokens."""
    format: str
    """``chat_template`` or ``plain`` (a model without a template, e.g. a base model)."""
    groups: Mapping[str, list[Span]] = field(default_factory=dict)
    """The emphasized ranges of every other group (``instructions``, ...) that has any, by group."""
    tool_format: str | None = None
    """How tools and tool turns were written: ``chat_template`` (the model's template renders tools),
    ``tool_call_tags`` (the fallback, see ``pasta_rag.tools``), or None (no tools, no tool turns)."""


def render(
    tokenizer: PreTrainedTokenizerBase,
    prompt: Prompt,
    emphasis: GroupedEmphasis | None = None,
    spans: GroupedSpans | None = None,
    tools: ToolUse | None = None,
) -> RenderedPrompt:
    """Render ``prompt`` and resolve all three kinds of emphasis on the result.

    ``emphasis`` substrings match every occurrence in the final prompt; ``spans``
    are character ranges of the final prompt (see ``PastaModel.render``). Either is a
    list for the ``context`` group or a mapping from group name to list. ``tools`` (``pasta_rag.tools.tool_use``)
    are shown to the model through its chat template when it renders tools, else in the system message.
    """
    tool_format = None
    if isinstance(prompt, str):
        if tools is not None and tools.offered:
            raise ToolError("Tools need chat messages ([{'role': 'user', 'content': ...}]), not a completion string.")
        marked, add_special, fmt = prompt, True, PLAIN_FORMAT
    else:
        marked, add_special, fmt, tool_format = _render_messages(tokenizer, prompt, tools)
    text, resolved = parse_groups(marked)
    for group, substrings in _by_group(emphasis).items():
        resolved[group] = resolved.get(group, []) + find_substrings(text, substrings)
    for group, ranges in _by_group(spans).items():
        resolved[group] = resolved.get(group, []) + check_spans(ranges, len(text))
    merged = {group: merge_spans(found) for group, found in resolved.items() if found}
    context = merged.pop(CONTEXT, [])
    return RenderedPrompt(text, context, add_special, fmt, merged, tool_format)


def _by_group(values: Mapping[str, Sequence] | Sequence | None) -> dict[str, Sequence]:
    if not values:
        return {}
    if isinstance(values, str):
        raise EmphasisError(f"Emphasis is a list of substrings (or of spans), not one string: [{values!r}].")
    if isinstance(values, Mapping):
        for group in values:
            if not isinstance(group, str) or not group:
                raise EmphasisError(f"Emphasis groups are named by non-empty strings, got {group!r}.")
        return {group: found for group, found in values.items() if found}
    return {CONTEXT: values}


def _render_messages(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], tools: ToolUse | None
) -> tuple[str, bool, str, str | None]:
    messages = [_checked_message(message) for message in messages]
    offered = tools is not None and tools.offered
    tool_format = None
    if offered or any(m["role"] == "tool" or m.get("tool_calls") for m in messages):
        if template_renders_tools(tokenizer):
            schemas = [tool.openai() for tool in tools.tools] if offered else None  # type: ignore[union-attr]
            text = tokenizer.apply_chat_template(template_messages(messages), tools=schemas, tokenize=False,
                                                 add_generation_prompt=True)
            return text, False, CHAT_TEMPLATE_FORMAT, TEMPLATE_FORMAT
        messages, tool_format = tags_messages(messages, tools), TAGS_FORMAT
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text, False, CHAT_TEMPLATE_FORMAT, tool_format
    return plain_chat_format(messages), True, PLAIN_FORMAT, tool_format


PLAIN_NEXT_TURN = "\n\nUser:"
"""Where a base model's answer in the plain format ends: it goes on to write the user's next turn."""


def plain_chat_format(messages: Sequence[Message]) -> str:
    """For models without a chat template: 'Role: content' paragraphs, then 'Assistant:'."""
    turns = [f"{message['role'].capitalize()}: {message['content']}" for message in messages]
    return "\n\n".join([*turns, "Assistant:"])


def _checked_message(message: Message) -> dict[str, Any]:
    if not isinstance(message, Mapping) or "role" not in message or (
        "content" not in message and not message.get("tool_calls")
    ):
        raise TypeError(
            f"A chat message must be a mapping with 'role' and 'content'; got {message!r}. "
            "Pass a string for a plain completion prompt."
        )
    checked = {"role": message["role"], "content": message.get("content")}
    if message.get("tool_calls"):
        checked["tool_calls"] = message["tool_calls"]
    elif message["content"] is None:
        raise TypeError(f"A {message['role']!r} message has no content (None); only tool calls may go without.")
    for key in ("tool_call_id", "name"):
        if message.get(key):
            checked[key] = message[key]
    return checked


def question_prompt(context: str, question: str, has_chat_template: bool) -> tuple[object, str]:
    """A question over a context, as ``pasta-rag ask`` and the demo send it, and the name of its format.

    A model without a chat template (a base model) gets a plain Context / Question / Answer completion.
    """
    if has_chat_template:
        content = f"Answer the question using the context.\n\nContext: {context}\n\nQuestion: {question}"
        return [{"role": "user", "content": content}], "chat template"
    return f"Context: {context}\n\nQuestion: {question}\nAnswer:", "plain 'Context / Question / Answer' format"
