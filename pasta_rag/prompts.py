"""Prompts -> the exact string the model reads, and its emphasized character spans.

Spans are resolved only here, on the final string after the chat template,
because a template adds text before and between messages: offsets into a
message would point at the wrong characters of the rendered prompt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from .emphasis import CONTEXT, Span, check_spans, find_substrings, merge_spans, parse_groups
from .errors import EmphasisError

Message = Mapping[str, str]
"""A chat message: ``{"role": "system" | "user" | "assistant", "content": str}``."""

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


def render(
    tokenizer: PreTrainedTokenizerBase,
    prompt: Prompt,
    emphasis: GroupedEmphasis | None = None,
    spans: GroupedSpans | None = None,
) -> RenderedPrompt:
    """Render ``prompt`` and resolve all three kinds of emphasis on the result.

    ``emphasis`` substrings match every occurrence in the final prompt; ``spans``
    are character ranges of the final prompt (see ``PastaModel.render``). Either is a
    list for the ``context`` group or a mapping from group name to list.
    """
    if isinstance(prompt, str):
        marked, add_special, fmt = prompt, True, PLAIN_FORMAT
    else:
        marked, add_special, fmt = _render_messages(tokenizer, prompt)
    text, resolved = parse_groups(marked)
    for group, substrings in _by_group(emphasis).items():
        resolved[group] = resolved.get(group, []) + find_substrings(text, substrings)
    for group, ranges in _by_group(spans).items():
        resolved[group] = resolved.get(group, []) + check_spans(ranges, len(text))
    merged = {group: merge_spans(found) for group, found in resolved.items() if found}
    context = merged.pop(CONTEXT, [])
    return RenderedPrompt(text, context, add_special, fmt, merged)


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


def _render_messages(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message]) -> tuple[str, bool, str]:
    messages = [_checked_message(message) for message in messages]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text, False, CHAT_TEMPLATE_FORMAT
    return plain_chat_format(messages), True, PLAIN_FORMAT


PLAIN_NEXT_TURN = "\n\nUser:"
"""Where a base model's answer in the plain format ends: it goes on to write the user's next turn."""


def plain_chat_format(messages: Sequence[Message]) -> str:
    """For models without a chat template: 'Role: content' paragraphs, then 'Assistant:'."""
    turns = [f"{message['role'].capitalize()}: {message['content']}" for message in messages]
    return "\n\n".join([*turns, "Assistant:"])


def _checked_message(message: Message) -> dict[str, str]:
    if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
        raise TypeError(
            f"A chat message must be a mapping with 'role' and 'content'; got {message!r}. "
            "Pass a string for a plain completion prompt."
        )
    return {"role": message["role"], "content": message["content"]}


def question_prompt(context: str, question: str, has_chat_template: bool) -> tuple[object, str]:
    """A question over a context, as ``pasta-rag ask`` and the demo send it, and the name of its format.

    A model without a chat template (a base model) gets a plain Context / Question / Answer completion.
    """
    if has_chat_template:
        content = f"Answer the question using the context.\n\nContext: {context}\n\nQuestion: {question}"
        return [{"role": "user", "content": content}], "chat template"
    return f"Context: {context}\n\nQuestion: {question}\nAnswer:", "plain 'Context / Question / Answer' format"
