"""Constrained decoding: answers that must be JSON of a schema (a forced tool call, ``response_format``)
are decoded under a grammar, so that even a 135M model writes output that parses and validates.

The grammar library is llguidance (Microsoft's, the engine under guidance, vLLM's and SGLang's
structured output): it compiles JSON schemas and Lark grammars lazily, with no per-schema
precomputation over the vocabulary, computes a token mask in Rust on the CPU, and reads Hugging Face
fast tokenizers directly. ``GrammarProcessor`` is a transformers logits processor: it only removes
tokens the grammar forbids, so it composes with steering, which changes attention, not logits.

JSON is written compactly (``", "`` and ``": "`` separators, no free whitespace): a small model given
free whitespace can pad forever instead of closing the object. For the same reason a constrained answer
is brought to an end when its tokens run low: a small model that loops inside a string would otherwise
run out of tokens there, and a call cut off mid-string cannot be run at all.
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
FINISH_WINDOW = 64
"""Within this many tokens of its budget a constrained answer measures, at each token, the shortest way to
complete it (``tokens_to_finish``); once that no longer fits with ``FINISH_MARGIN`` to spare, it may only
close what it has open (a string, an object, a list) wherever the grammar allows it, and its
``finish_reason`` is ``length``: its last value may be cut short."""
FINISH_MARGIN = 2


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
_CLOSING_TOKENS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_TOKENIZERS_LOCK = threading.Lock()


def grammar_tokenizer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> llguidance.LLTokenizer:
    """llguidance's view of the tokenizer (about a second to build, so built once per tokenizer)."""
    return _grammar_view(model, tokenizer)[0]


def _grammar_view(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> tuple[llguidance.LLTokenizer, Closers]:
    """llguidance's tokenizer and its closing tokens (``Closers``), built once per tokenizer."""
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
            _CLOSING_TOKENS[tokenizer] = Closers.of(found, model.config.get_text_config().vocab_size)
        return found, _CLOSING_TOKENS[tokenizer]


@dataclass(frozen=True, eq=False)
class Closers:
    """The tokens that close JSON: ``string`` (vocab,) bool, a quote and then only brackets (``"``, ``"}``,
    ``"]}``); ``container`` (vocab,) bool, brackets only (``}``, ``]]``). Which closes depends on whether the
    answer is inside a string, which ``JsonState`` follows from the tokens' ``texts``."""

    string: torch.Tensor
    container: torch.Tensor
    texts: tuple[str, ...]

    @classmethod
    def of(cls, tokenizer: llguidance.LLTokenizer, vocab: int) -> Closers:
        texts = tuple(tokenizer.decode_bytes([t]).decode("utf-8", "replace") for t in range(tokenizer.vocab_size))
        string, container = torch.zeros(vocab, dtype=torch.bool), torch.zeros(vocab, dtype=torch.bool)
        for token, text in enumerate(texts[:vocab]):
            string[token] = bool(re.fullmatch(r'"[}\]]*', text))
            container[token] = bool(re.fullmatch(r"[}\]]+", text))
        return cls(string, container, texts)

    def among(self, allowed: torch.Tensor, state: JsonState) -> torch.Tensor:
        """(vocab,) the allowed tokens that close what ``state`` has open."""
        closing = self.string if state.in_string else self.container
        among = torch.zeros_like(allowed)
        n = min(len(closing), len(allowed))
        among[:n] = allowed[:n] & closing[:n]
        return among


@dataclass
class JsonState:
    """Whether the JSON written so far is inside a string (its escapes followed)."""

    in_string: bool = False
    escaped: bool = False

    def advance(self, text: str) -> JsonState:
        for char in text:
            if self.escaped:
                self.escaped = False
            elif self.in_string and char == "\\":
                self.escaped = True
            elif char == '"':
                self.in_string = not self.in_string
        return self

    def copy(self) -> JsonState:
        return JsonState(self.in_string, self.escaped)


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
    may only end (end-of-sequence). A row whose ``budget`` of new tokens is about to run out before its
    grammar completes is finished: only closing tokens, where the grammar allows one (``FINISH_WINDOW``);
    ``hurried`` holds the rows where that changed the model's choice."""

    def __init__(self, tokenizer: llguidance.LLTokenizer, grammar: str, rows: int, prompt_len: int,
                 budget: int | None = None, closers: Closers | None = None):
        self.tokenizer = tokenizer
        self.matchers = [llguidance.LLMatcher(tokenizer, grammar) for _ in range(rows)]
        self.prompt_len = prompt_len
        self.eos = tokenizer.eos_token
        self.budget = budget if closers is not None else None
        self.closers = closers
        self.states = [JsonState() for _ in range(rows)]
        self.finishing: set[int] = set()
        self.hurried: set[int] = set()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        allowed = torch.zeros(scores.shape, dtype=torch.bool)
        generated = input_ids.shape[1] - self.prompt_len
        for row, matcher in enumerate(self.matchers):
            if generated > 0 and not matcher.is_stopped():
                token = int(input_ids[row, -1])
                if not matcher.consume_token(token):
                    raise GrammarError(f"The grammar refused a token it allowed: {matcher.get_error()}")
                if self.closers is not None:
                    self.states[row].advance(self.closers.texts[token])
            if matcher.is_stopped():
                allowed[row, self.eos] = True
                continue
            allowed[row] = _unpack(matcher.compute_bitmask(), scores.shape[1])
            if self._must_finish(row, generated):
                allowed[row] = self._closing_only(row, allowed[row], scores[row])
        return scores.masked_fill(~allowed.to(scores.device), float("-inf"))

    def _must_finish(self, row: int, generated: int) -> bool:
        if self.budget is None or self.closers is None or row in self.finishing:
            return row in self.finishing
        left = self.budget - generated
        if left <= FINISH_WINDOW and left <= tokens_to_finish(self.matchers[row], self.states[row], self.closers) \
                + FINISH_MARGIN:
            self.finishing.add(row)
        return row in self.finishing

    def _closing_only(self, row: int, allowed: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """(vocab,) the allowed tokens that close, if the grammar allows any here (else all the allowed ones)."""
        closing = self.closers.among(allowed, self.states[row])
        if not closing.any():
            return allowed
        best = int(scores.float().cpu().masked_fill(~allowed, float("-inf")).argmax())
        if not closing[best]:
            self.hurried.add(row)
        return closing

    def finished(self, row: int) -> bool:
        return self.matchers[row].is_stopped()


def tokens_to_finish(matcher: llguidance.LLMatcher, state: JsonState, closers: Closers,
                     limit: int = FINISH_WINDOW) -> int:
    """How many tokens a finishing answer needs from here: on a copy of the matcher, the tokens the grammar
    forces, else a closing token, else the first it allows (``limit`` if it has not ended by then)."""
    probe, state = matcher.deep_copy(), state.copy()
    steps = 0
    while steps < limit and not (probe.is_stopped() or probe.is_accepting()):
        forced = probe.compute_ff_tokens()
        if not forced:
            allowed = _unpack(probe.compute_bitmask(), len(closers.string))
            choices = closers.among(allowed, state)
            choices = choices if choices.any() else allowed
            if not choices.any():
                break
            forced = [int(choices.nonzero()[0])]
        probe.consume_tokens(forced)
        for token in forced:
            state.advance(closers.texts[token])
        steps += len(forced)
    return min(steps, limit)


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
    closers: Closers | None = None
    """The tokenizer's closing tokens; None: answers are never finished early."""

    def processor(self, rows: int, prompt_len: int, budget: int | None = None) -> GrammarProcessor:
        """A fresh processor: its matchers follow one generation of at most ``budget`` new tokens."""
        return GrammarProcessor(self.tokenizer, self.grammar, rows, prompt_len, budget, self.closers)


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
        checker, closers = _grammar_view(model, tokenizer)
        return Constraint(compiled(tool_call_grammar(use), checker, what), checker, what, closers)
    if fmt is not None:
        what = f"response_format {fmt.name!r}" if fmt.name else f"the response_format ({fmt.kind})"
        checker, closers = _grammar_view(model, tokenizer)
        return Constraint(compiled(response_grammar(fmt), checker, what), checker, what, closers)
    return None
