"""Character spans -> token indices, through the offset mapping of the exact prompt string."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase

from .emphasis import CONTEXT, Span
from .errors import EmphasisError
from .prompts import RenderedPrompt


@dataclass(frozen=True)
class EncodedPrompt:
    input_ids: list[int]
    emphasized: list[bool]
    """One flag per token: does the token overlap an emphasized character span (the ``context`` group)."""
    groups: dict[str, list[bool]] = field(default_factory=dict)
    """The same flags for every other emphasis group the prompt has."""


@dataclass(frozen=True)
class PromptBatch:
    """Left-padded prompts: the last prompt token of every row sits at ``prompt_len - 1``."""

    input_ids: torch.Tensor  # (batch, prompt_len)
    attention_mask: torch.Tensor  # (batch, prompt_len), 0 on padding
    emphasized: torch.Tensor  # (batch, prompt_len) bool, False on padding
    groups: dict[str, torch.Tensor] = field(default_factory=dict)  # per other group: (batch, prompt_len) bool

    def group(self, name: str) -> torch.Tensor:
        """(batch, prompt_len) bool: the tokens of emphasis group ``name`` (all False when no row has any)."""
        if name == CONTEXT:
            return self.emphasized
        return self.groups.get(name, torch.zeros_like(self.emphasized))

    @property
    def prompt_len(self) -> int:
        return self.input_ids.shape[1]


def encode(tokenizer: PreTrainedTokenizerBase, prompt: RenderedPrompt) -> EncodedPrompt:
    encoding = tokenizer(prompt.text, add_special_tokens=prompt.add_special_tokens, return_offsets_mapping=True)
    offsets = encoding["offset_mapping"]
    flags = _covered_flags(prompt.text, offsets, prompt.spans)
    groups = {group: _covered_flags(prompt.text, offsets, spans) for group, spans in prompt.groups.items()}
    return EncodedPrompt(list(encoding["input_ids"]), flags, groups)


def _covered_flags(text: str, offsets: Sequence[tuple[int, int]], spans: Sequence[Span]) -> list[bool]:
    flags = token_flags(offsets, spans)
    if spans and not any(flags):
        raise EmphasisError(f"The emphasized text {[text[s:e] for s, e in spans]!r} covers no token of the prompt.")
    return flags


def token_flags(offsets: Sequence[tuple[int, int]], spans: Sequence[Span]) -> list[bool]:
    """A token is emphasized when its characters overlap a span (special tokens have no characters)."""
    return [
        end > start and any(start < span_end and end > span_start for span_start, span_end in spans)
        for start, end in offsets
    ]


def pad_left(prompts: Sequence[EncodedPrompt], pad_token_id: int) -> PromptBatch:
    length = max(len(p.input_ids) for p in prompts)
    input_ids = torch.full((len(prompts), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, length - len(prompt.input_ids) :] = torch.tensor(prompt.input_ids)
        attention_mask[row, length - len(prompt.input_ids) :] = 1
    names = sorted({group for prompt in prompts for group in prompt.groups})
    groups = {name: _padded_flags([p.groups.get(name) for p in prompts], length) for name in names}
    return PromptBatch(input_ids, attention_mask, _padded_flags([p.emphasized for p in prompts], length), groups)


def _padded_flags(rows: Sequence[list[bool] | None], length: int) -> torch.Tensor:
    """(batch, length) bool, left-padded with False; a row without flags is all False."""
    flags = torch.zeros((len(rows), length), dtype=torch.bool)
    for row, values in enumerate(rows):
        if values:
            flags[row, length - len(values) :] = torch.tensor(values, dtype=torch.bool)
    return flags


def pad_token_id(tokenizer: PreTrainedTokenizerBase, model: torch.nn.Module) -> int:
    """The id that pads a batch: the tokenizer's, else the model's generation config's, else end-of-sequence."""
    for candidate in (tokenizer.pad_token_id, model.generation_config.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate if not isinstance(candidate, list) else candidate[0])
    return 0
