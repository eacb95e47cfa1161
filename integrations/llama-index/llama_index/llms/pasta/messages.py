"""LlamaIndex chat messages as the core's prompt: role/content dicts, rendered by the model's chat template."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    AudioBlock,
    ChatMessage,
    DocumentBlock,
    ImageBlock,
    MessageRole,
    ToolCallBlock,
    VideoBlock,
)

from pasta_rag import has_markers, strip_markers
from pasta_rag.emphasis import INSTRUCTIONS, emphasize_unmarked
from pasta_rag.prompts import Prompt

_MEDIA_BLOCKS = (ImageBlock, AudioBlock, VideoBlock, DocumentBlock)
REACT_OBSERVATION = "Observation:"
"""How ``ReActAgent`` opens a tool result it hands back (``ObservationReasoningStep``); its default
formatter sends that as a *user* message."""


def core_messages(messages: Sequence[ChatMessage], pin_system: bool, model_name: str) -> list[dict[str, Any]]:
    """The conversation as role/content dicts; with ``pin_system`` every system message is pinned (the
    instructions group). An assistant message's tool calls (``ToolCallBlock``s) become the core's
    ``tool_calls``, a tool message's ``additional_kwargs["tool_call_id"]`` its call id; the core strips
    the markers of tool results (untrusted text). ReAct's observations are tool results too, whatever
    role its formatter gives them, so a user message that opens with ``Observation:`` loses its markers.

    The models are text-only: a media block is refused rather than silently dropped.
    """
    if isinstance(messages, (str, ChatMessage)) or not messages:
        raise TypeError("chat() takes a non-empty sequence of ChatMessage; use complete() for a string.")
    converted = []
    for message in messages:
        if not isinstance(message, ChatMessage):
            raise TypeError(f"chat() takes ChatMessage objects, got {type(message).__name__}.")
        if any(isinstance(block, _MEDIA_BLOCKS) for block in message.blocks):
            raise ValueError(f"{model_name} reads text only; a {message.role.value} message holds "
                             "image, audio, video or document blocks.")
        role = message.role.value if isinstance(message.role, MessageRole) else str(message.role)
        content = message.content or ""
        if role == MessageRole.USER.value and content.lstrip().startswith(REACT_OBSERVATION):
            content = strip_markers(content)  # a tool's output, in ReAct's user turn: untrusted
        if role == MessageRole.SYSTEM.value and pin_system:
            content = emphasize_unmarked(content, INSTRUCTIONS)  # a context chat engine's documents stay context
        core: dict[str, Any] = {"role": role, "content": content}
        calls = [block for block in message.blocks if isinstance(block, ToolCallBlock)]
        if calls:
            core["tool_calls"] = [{"id": c.tool_call_id or "", "name": c.tool_name, "arguments": c.tool_kwargs}
                                  for c in calls]
        if role == MessageRole.TOOL.value and message.additional_kwargs.get("tool_call_id"):
            core["tool_call_id"] = message.additional_kwargs["tool_call_id"]
        converted.append(core)
    return converted


def system_message(system_prompt: str, pin_system: bool) -> dict[str, str]:
    """The ``system_prompt`` field as the first message of a completion sent through the chat template."""
    return {"role": "system", "content": emphasize_unmarked(system_prompt, INSTRUCTIONS) if pin_system else system_prompt}


def is_marked(prompt: Prompt) -> bool:
    """Whether the prompt (a string or role/content dicts) emphasizes anything."""
    if isinstance(prompt, str):
        return has_markers(prompt)
    return any(has_markers(message["content"] or "") for message in prompt if message["role"] != "tool")
