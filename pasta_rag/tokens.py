"""Character spans -> token indices, through the offset mapping of the exact prompt string."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from .emphasis import Span
from .errors import EmphasisError
from .prompts import RenderedPrompt


@dataclass(frozen=True)
class EncodedPrompt:
    input_ids: list[int]
    emphasized: list[bool]
    """One flag per token: does the token overlap an emphasized character span."""


@dataclass(frozen=True)
class PromptBatch:
    """Left-padded prompts: the last prompt token of every row sits at ``prompt_len - 1``."""

    input_ids: torch.Tensor  # (batch, prompt_len)
    attention_mask: torch.Tensor  # (batch, prompt_len), 0 on padding
    emphasized: torch.Tensor  # (batch, prompt_len) bool, False on padding

    @property
    def prompt_len(self) -> int:
        return self.input_ids.shape[1]


def encode(tokenizer: PreTrainedTokenizerBase, prompt: RenderedPrompt) -> EncodedPrompt:
    encoding = tokenizer(prompt.text, add_special_tokens=prompt.add_special_tokens, return_offsets_mapping=True)
    flags = token_flags(encoding["offset_mapping"], prompt.spans)
    if prompt.spans and not any(flags):
        raise EmphasisError(
            f"The emphasized text {[prompt.text[s:e] for s, e in prompt.spans]!r} covers no token of the prompt."
        )
    return EncodedPrompt(list(encoding["input_ids"]), flags)


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
    emphasized = torch.zeros((len(prompts), length), dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        start = length - len(prompt.input_ids)
        input_ids[row, start:] = torch.tensor(prompt.input_ids)
        attention_mask[row, start:] = 1
        emphasized[row, start:] = torch.tensor(prompt.emphasized, dtype=torch.bool)
    return PromptBatch(input_ids, attention_mask, emphasized)
