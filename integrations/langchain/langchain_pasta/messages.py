"""LangChain messages -> the core's chat messages, with per-message emphasis.

A message is emphasized when its ``additional_kwargs["pasta_emphasis"]`` is set
(``pin(message)`` does that), or when it is a system message and the chat model
has ``pin_system=True``. The flag travels with the message, so a pinned
instruction stays emphasized on every later call of a conversation or agent loop
that keeps the message in its history, with no change to the loop.

Pinned text is the ``instructions`` emphasis group, steered with the model's
instructions head set; documents already emphasized inside a pinned message
(``format_docs`` output formatted into a system prompt) stay in their own group,
so the instructions heads are never steered toward untrusted text.

Tool calls travel as the core's ``tool_calls`` of an assistant message and tool results as ``tool``
messages; a tool result is untrusted text, so pinning one is refused and the core strips its markers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from pasta_rag.emphasis import GROUP_MARKERS, INSTRUCTIONS, emphasize_unmarked, find_substrings

EMPHASIS_KEY = "pasta_emphasis"
"""``additional_kwargs`` key: ``True`` emphasizes the whole message; a list of strings emphasizes those
substrings of it (every occurrence)."""

MessageT = TypeVar("MessageT", bound=BaseMessage)


def pin(message: MessageT, emphasis: bool | Sequence[str] = True) -> MessageT:
    """A copy of ``message`` that the chat model emphasizes on every call it appears in.

    ``emphasis=True`` emphasizes the whole message; a list of strings emphasizes only those substrings
    (they must occur in the message). Use it for an instruction that must keep holding after many turns:

    >>> messages = [pin(SystemMessage("Answer in one word.")), HumanMessage("...")]
    """
    if not isinstance(message, BaseMessage):
        raise TypeError(f"pin() takes a LangChain message, got {type(message).__name__}.")
    if isinstance(message, (ToolMessage, FunctionMessage)):
        raise TypeError("A tool result is untrusted text and is never emphasized; pin the instructions instead.")
    flag = _checked_flag(emphasis)
    return message.model_copy(update={"additional_kwargs": {**message.additional_kwargs, EMPHASIS_KEY: flag}})


def role_of(message: BaseMessage) -> str:
    """The chat-template role of a LangChain message."""
    if isinstance(message, SystemMessage):
        return "system"
    if isinstance(message, HumanMessage):
        return "user"
    if isinstance(message, AIMessage):
        return "assistant"
    if isinstance(message, (ToolMessage, FunctionMessage)):
        return "tool"
    if isinstance(message, ChatMessage):
        return message.role
    raise TypeError(f"ChatPasta cannot send a {type(message).__name__} to the model.")


def message_text(message: BaseMessage) -> str:
    """The text of a message; other content blocks (images, audio, files) are refused, not dropped."""
    content = message.content
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(block.get("text", ""))
        elif isinstance(block, dict) and block.get("type") in ("reasoning", "thinking"):
            continue  # earlier reasoning is not replayed to the model
        elif isinstance(block, dict) and block.get("type") in ("tool_use", "tool_call") and \
                isinstance(message, AIMessage) and message.tool_calls:
            continue  # a provider's copy of a call that message.tool_calls holds, and renders
        else:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise ValueError(f"ChatPasta reads text only; a {role_of(message)} message holds a {kind!r} block.")
    return "".join(parts)


def to_core_messages(messages: Sequence[BaseMessage], *, pin_system: bool = False) -> list[dict[str, Any]]:
    """Role/content dicts for the core, with pinned messages in the instructions group, an AI message's
    tool calls as its ``tool_calls`` and a tool result's call id."""
    if not messages:
        raise ValueError("ChatPasta got no messages.")
    converted = []
    for message in messages:
        text = message_text(message)
        flag: Any = message.additional_kwargs.get(EMPHASIS_KEY)
        if flag is None and pin_system and isinstance(message, SystemMessage):
            flag = True
        if flag:
            if isinstance(message, (ToolMessage, FunctionMessage)):
                raise ValueError("A tool result is untrusted text and is never emphasized; it carries a pin.")
            text = _emphasized(text, _checked_flag(flag))
        core: dict[str, Any] = {"role": role_of(message), "content": text}
        if isinstance(message, AIMessage) and message.tool_calls:
            core["tool_calls"] = [{"id": call.get("id") or "", "name": call["name"], "arguments": call["args"]}
                                  for call in message.tool_calls]
        if isinstance(message, ToolMessage):
            core["tool_call_id"] = message.tool_call_id
        if isinstance(message, (ToolMessage, FunctionMessage)) and message.name:
            core["name"] = message.name
        converted.append(core)
    return converted


def _emphasized(text: str, flag: bool | list[str]) -> str:
    if flag is True:
        return emphasize_unmarked(text, INSTRUCTIONS)
    spans = find_substrings(text, flag)  # substrings hold no marker, so wrapping them nests cleanly
    start_marker, end_marker = GROUP_MARKERS[INSTRUCTIONS]
    pieces, position = [], 0
    for start, end in spans:
        pieces += [text[position:start], start_marker, text[start:end], end_marker]
        position = end
    pieces.append(text[position:])
    return "".join(pieces)


def _checked_flag(flag: Any) -> bool | list[str]:
    if flag is True or flag is False:
        return flag
    if isinstance(flag, str):
        return [flag]
    if isinstance(flag, Sequence) and all(isinstance(item, str) and item for item in flag):
        return list(flag)
    raise TypeError(f"{EMPHASIS_KEY} must be True/False or a list of non-empty substrings, got {flag!r}.")
