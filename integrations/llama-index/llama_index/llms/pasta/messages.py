"""LlamaIndex chat messages as the core's prompt: role/content dicts, rendered by the model's chat template."""

from __future__ import annotations

from collections.abc import Sequence

from llama_index.core.base.llms.types import AudioBlock, ChatMessage, DocumentBlock, ImageBlock, MessageRole, VideoBlock

from pasta_rag import has_markers
from pasta_rag.emphasis import INSTRUCTIONS, emphasize_unmarked
from pasta_rag.prompts import Prompt

_MEDIA_BLOCKS = (ImageBlock, AudioBlock, VideoBlock, DocumentBlock)


def core_messages(messages: Sequence[ChatMessage], pin_system: bool, model_name: str) -> list[dict[str, str]]:
    """The conversation as role/content dicts; with ``pin_system`` every system message is pinned (the
    instructions group).

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
        if role == MessageRole.SYSTEM.value and pin_system:
            content = emphasize_unmarked(content, INSTRUCTIONS)  # a context chat engine's documents stay context
        converted.append({"role": role, "content": content})
    return converted


def system_message(system_prompt: str, pin_system: bool) -> dict[str, str]:
    """The ``system_prompt`` field as the first message of a completion sent through the chat template."""
    return {"role": "system", "content": emphasize_unmarked(system_prompt, INSTRUCTIONS) if pin_system else system_prompt}


def is_marked(prompt: Prompt) -> bool:
    """Whether the prompt (a string or role/content dicts) emphasizes anything."""
    if isinstance(prompt, str):
        return has_markers(prompt)
    return any(has_markers(message["content"]) for message in prompt)
