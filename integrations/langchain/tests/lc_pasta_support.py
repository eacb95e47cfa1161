"""Test helpers of langchain-pasta (named so as not to clash with the core's test modules)."""

from __future__ import annotations

import functools

from pasta_rag import PastaModel

TINY_HEADS = [1, 2]
TINY_INSTRUCTION_HEADS = [0]


@functools.lru_cache(maxsize=None)
def tiny_engine() -> PastaModel:
    """The core's tiny random Llama with the char tokenizer: fast, offline, steerable; pinned text (the
    instructions group) is steered with its own layers, as a packaged model's instructions set would."""
    from tiny import char_tokenizer, tiny_model

    from pasta_rag import Steering

    return PastaModel(tiny_model("llama"), char_tokenizer(), heads=TINY_HEADS,
                      groups={"instructions": Steering(heads=TINY_INSTRUCTION_HEADS)})


def real_engine() -> PastaModel:
    """The default packaged model, through the same per-process cache ChatPasta(model="default") uses."""
    from langchain_pasta import load_engine

    return load_engine("default")


def sent(kwargs: dict, name: str):
    """The steering setting ``name`` a spied core call received (None: not set, inherited)."""
    from pasta_rag.settings import UNSET

    value = getattr(kwargs["steering"], name)
    return None if value is UNSET else value


@functools.lru_cache(maxsize=None)
def tiny_tool_engine() -> PastaModel:
    """A tiny random Llama over a byte-level tokenizer (the core's tiny_bytes): JSON it writes decodes
    exactly, so tool calls and structured output can be read back."""
    from tiny_bytes import byte_model, byte_tokenizer

    return PastaModel(byte_model(), byte_tokenizer(), heads=TINY_HEADS)
