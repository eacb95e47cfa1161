"""Stop strings: end generation on text, whatever tokens spell it.

A stop string may span several tokens and start in the middle of one, so it
is matched on decoded text, never on token ids. The same ``cut_at_stop``
trims generate() and stream() output, which is why both give the same text.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase, StoppingCriteria


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Text before the earliest stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def safe_prefix_length(text: str, stop: Sequence[str]) -> int:
    """How much of ``text`` can be shown while streaming: hold back a tail that may begin a stop string,
    and a trailing replacement character (half of a multi-byte character)."""
    hold = 0
    for s in stop:
        for size in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:size]):
                hold = max(hold, size)
                break
    safe = len(text) - hold
    while safe > 0 and text[safe - 1] == "\ufffd":
        safe -= 1
    return safe


class StopOnText(StoppingCriteria):
    """Stops each row once its generated text holds a stop string, or when ``cancel`` is set."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompt_len: int,
        stop: Sequence[str],
        cancel: threading.Event | None = None,
    ):
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.stop = list(stop)
        self.cancel = cancel

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        if self.cancel is not None and self.cancel.is_set():
            return torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        done = [
            bool(self.stop) and cut_at_stop(self.decode(row), self.stop)[1] for row in input_ids[:, self.prompt_len :]
        ]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def decode(self, generated: torch.Tensor) -> str:
        return self.tokenizer.decode(generated, skip_special_tokens=True)
