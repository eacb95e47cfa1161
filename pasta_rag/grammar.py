"""Constrained decoding: answers that must be JSON of a schema (a forced tool call, ``response_format``)
are decoded under a grammar, so that even a 135M model writes output that parses and validates.

The grammar library is llguidance (Microsoft's, the engine under guidance, vLLM's and SGLang's
structured output): it compiles JSON schemas and Lark grammars lazily, with no per-schema
precomputation over the vocabulary, computes a token mask in Rust on the CPU, and reads Hugging Face
fast tokenizers directly. ``GrammarProcessor`` is a transformers logits processor: it only removes
tokens the grammar forbids, so it composes with steering, which changes attention, not logits.

JSON is written compactly (``", "`` and ``": "`` separators, no free whitespace): a small model given
free whitespace can pad forever instead of closing the object.
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import llguidance
import llguidance.hf
import numpy as np
import torch
from transformers import LogitsProcessor, PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria

from .errors import GrammarError
from .tools import CALL_END, CALL_START, ToolUse

COMPACT_JSON = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
"""llguidance's JSON options (its ``x-guidance`` key): one way to write each value."""


@dataclass(frozen=True)
class ResponseFormat:
    """OpenAI's ``response_format``: ``json_schema`` (an answer valid against ``schema``) or ``json_object``
    (any JSON object)."""

    kind: str
    schema: Mapping[str, Any] | None = None
    name: str | None = None


def response_format(value: Mapping[str, Any] | None) -> ResponseFormat | None:
    """Check ``{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}``, ``{"type":
    "json_object"}`` or ``{"type": "text"}`` (no constraint; None)."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or value.get("type") not in ("text", "json_object", "json_schema"):
        raise GrammarError(
            "response_format must be {'type': 'json_schema', 'json_schema': {'name': ..., 'schema': {...}}}, "
            f"{{'type': 'json_object'}} or {{'type': 'text'}}; got {value!r}."
        )
    if value["type"] == "text":
        return None
    if value["type"] == "json_object":
        return ResponseFormat("json_object")
    spec = value.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, Mapping) else None
    if not isinstance(schema, Mapping):
        raise GrammarError(f"response_format json_schema needs {{'json_schema': {{'schema': {{...}}}}}}; got {value!r}.")
    return ResponseFormat("json_schema", dict(schema), spec.get("name"))


# --- grammars ----------------------------------------------------------------------------

def response_grammar(fmt: ResponseFormat) -> str:
    schema = {"type": "object"} if fmt.kind == "json_object" else fmt.schema
    return f"start: %json {_json_with_options(schema)}"


def tool_call_grammar(use: ToolUse) -> str:
    """One call, ``<tool_call>{"name": <a forced tool>, "arguments": <valid against its schema>}</tool_call>``."""
    options = [
        {"type": "object",
         "properties": {"name": {"const": tool.name}, "arguments": dict(tool.parameters)},
         "required": ["name", "arguments"], "additionalProperties": False}
        for tool in use.forced_tools()
    ]
    call = options[0] if len(options) == 1 else {"anyOf": options}
    return f"start: {json.dumps(CALL_START)} %json {_json_with_options(call)} {json.dumps(CALL_END)}"


def _json_with_options(schema: Mapping[str, Any]) -> str:
    return json.dumps({**schema, "x-guidance": COMPACT_JSON}, ensure_ascii=False)


# --- compiling for a model ---------------------------------------------------------------

_TOKENIZERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_TOKENIZERS_LOCK = threading.Lock()


def grammar_tokenizer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> llguidance.LLTokenizer:
    """llguidance's view of the tokenizer (about a second to build, so built once per tokenizer)."""
    with _TOKENIZERS_LOCK:
        found = _TOKENIZERS.get(tokenizer)
        if found is None:
            eos = model.generation_config.eos_token_id
            try:
                found = llguidance.hf.from_tokenizer(
                    tokenizer, n_vocab=model.config.get_text_config().vocab_size,
                    eos_token=eos if eos is not None else tokenizer.eos_token_id,
                )
            except ValueError as error:
                raise GrammarError(
                    f"Constrained decoding (forced tool calls, response_format) needs a fast tokenizer with a "
                    f"decoder that llguidance reads; this one is refused: {error}"
                ) from None
            _TOKENIZERS[tokenizer] = found
        return found


def compiled(lark: str, tokenizer: llguidance.LLTokenizer, what: str) -> str:
    """The grammar, checked; ``what`` names the schema in the error when llguidance cannot compile it."""
    grammar = llguidance.LLMatcher.grammar_from_lark(lark)
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, tokenizer)
    if is_error:
        raise GrammarError(
            f"The JSON schema of {what} cannot be used for constrained decoding (llguidance: {_reason(messages[0])}). "
            "Simplify the schema (drop the keyword it names) or do not force this output."
        )
    return grammar


def _reason(message: str) -> str:
    """llguidance's message without the grammar listing it appends (``  1 | start: ...``)."""
    lines = []
    for line in message.strip().splitlines():
        if re.match(r"\s*\d+ \|", line):
            break
        lines.append(line.strip())
    return " ".join(line for line in lines if line)


# --- decoding ----------------------------------------------------------------------------

class GrammarProcessor(LogitsProcessor):
    """Masks every token the grammar forbids, one matcher per batch row; a row whose grammar is complete
    may only end (end-of-sequence)."""

    def __init__(self, tokenizer: llguidance.LLTokenizer, grammar: str, rows: int, prompt_len: int):
        self.tokenizer = tokenizer
        self.matchers = [llguidance.LLMatcher(tokenizer, grammar) for _ in range(rows)]
        self.prompt_len = prompt_len
        self.eos = tokenizer.eos_token

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        allowed = torch.zeros(scores.shape, dtype=torch.bool)
        for row, matcher in enumerate(self.matchers):
            if input_ids.shape[1] > self.prompt_len and not matcher.is_stopped():
                if not matcher.consume_token(int(input_ids[row, -1])):
                    raise GrammarError(f"The grammar refused a token it allowed: {matcher.get_error()}")
            if matcher.is_stopped():
                allowed[row, self.eos] = True
            else:
                allowed[row] = _unpack(matcher.compute_bitmask(), scores.shape[1])
        return scores.masked_fill(~allowed.to(scores.device), float("-inf"))

    def finished(self, row: int) -> bool:
        return self.matchers[row].is_stopped()


def _unpack(bitmask: bytes, vocab: int) -> torch.Tensor:
    bits = np.unpackbits(np.frombuffer(bitmask, dtype=np.uint8), bitorder="little")[:vocab]
    padded = np.zeros(vocab, dtype=bool)
    padded[: len(bits)] = bits.astype(bool)
    return torch.from_numpy(padded)


class GrammarStop(StoppingCriteria):
    """Ends a row once its grammar is complete and its end token written, for models without an
    end-of-sequence token in their generation config."""

    def __init__(self, processor: GrammarProcessor):
        self.processor = processor

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        done = [self.processor.finished(row) and int(input_ids[row, -1]) == self.processor.eos
                for row in range(input_ids.shape[0])]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


@dataclass(frozen=True, eq=False)
class Constraint:
    """What one call decodes under: a checked grammar, the tokenizer it was checked with, what it encodes."""

    grammar: str
    tokenizer: llguidance.LLTokenizer
    what: str

    def processor(self, rows: int, prompt_len: int) -> GrammarProcessor:
        """A fresh processor: its matchers follow one generation."""
        return GrammarProcessor(self.tokenizer, self.grammar, rows, prompt_len)


def constraint(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, use: ToolUse | None, fmt: ResponseFormat | None
) -> Constraint | None:
    """The grammar of a call: a forced tool call, a response_format, or none."""
    if use is not None and use.offered and fmt is not None:
        raise GrammarError("Pass tools or response_format, not both (or tool_choice='none' with response_format): "
                           "an answer cannot be a tool call and a JSON document at once.")
    if use is not None and use.choice.forced:
        names = [tool.name for tool in use.forced_tools()]
        what = f"tool {names[0]!r}" if len(names) == 1 else f"the tools {names}"
        checker = grammar_tokenizer(model, tokenizer)
        return Constraint(compiled(tool_call_grammar(use), checker, what), checker, what)
    if fmt is not None:
        what = f"response_format {fmt.name!r}" if fmt.name else f"the response_format ({fmt.kind})"
        checker = grammar_tokenizer(model, tokenizer)
        return Constraint(compiled(response_grammar(fmt), checker, what), checker, what)
    return None
