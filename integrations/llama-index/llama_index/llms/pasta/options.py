"""What one call asks the core for: PastaLLM's fields overridden by the call's keyword arguments.

The option names come from the core (every ``Steering`` field, ``steer``, every ``SamplingSettings``
field), so a setting added there is a LlamaIndex call option without an edit here. The values are
checked by the core's settings objects, with the core's messages: this module only maps names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from pasta_rag import SamplingSettings, Steering
from pasta_rag.settings import CHAIN_STEERING, split_options, steering_keywords

DECODING_OPTIONS = frozenset(f.name for f in dataclasses.fields(SamplingSettings))
"""The decoding settings a call may override (``max_new_tokens``, ``temperature``, ``stop``, ...)."""

TOOL_OPTIONS = frozenset({"tools", "tool_choice"})
"""The core's tool options (OpenAI function schemas, "auto" / "none" / "required" / a name), which
``chat_with_tools`` passes to ``chat``."""

CALL_OPTIONS = frozenset(steering_keywords() | {"steering"} | DECODING_OPTIONS | {"emphasis"} | TOOL_OPTIONS)
"""Keyword arguments ``complete`` / ``chat`` and their variants accept, overriding the fields per call:
every steering setting (or ``steering=Steering(...)``), every decoding setting, ``emphasis``, and the tools."""


def check_call_options(options: Mapping[str, Any]) -> None:
    """Refuse a keyword the core would not know, naming the ones it does (a typo must not pass silently)."""
    unknown = set(options) - CALL_OPTIONS
    if unknown:
        raise TypeError(
            f"PastaLLM got unexpected keyword argument(s) {sorted(unknown)}; "
            f"per-call options are {sorted(CALL_OPTIONS)}."
        )


def call_steering(
    field: Steering | None, shortcut_fields: Mapping[str, Any], options: Mapping[str, Any], marked: bool
) -> Steering:
    """The call's Steering, built in this one place.

    The integrations' defaults (``CHAIN_STEERING``: only the emphasized passages that answer the
    question), overridden by the ``steering`` field, by the shortcut fields that are set (``heads``,
    ``alpha``, ..., ``steer``; None there means "not set"), then by the call's ``steering=``, then by
    its keywords. With nothing marked the call runs the plain model: the core would otherwise warn on
    every unmarked prompt a query engine sends.
    """
    fields, _ = split_options(field, {name: value for name, value in shortcut_fields.items() if value is not None})
    given, _ = split_options(options.get("steering"), options)
    steering = CHAIN_STEERING.override(fields).override(given)
    return steering if marked else steering.override(enabled=False)


def call_sampling(fields: Mapping[str, Any], options: Mapping[str, Any]) -> SamplingSettings:
    """The call's decoding settings: the fields, overridden by the call's decoding keywords."""
    given = {name: value for name, value in options.items() if name in DECODING_OPTIONS}
    return SamplingSettings(**{**fields, **given})


def call_emphasis(options: Mapping[str, Any]) -> list[str] | None:
    """The call's ``emphasis`` substrings; a single string is one substring."""
    emphasis = options.get("emphasis")
    return [emphasis] if isinstance(emphasis, str) else emphasis
