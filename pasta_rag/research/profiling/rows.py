"""What the profiler scores: one row per example, and rows padded into a batch.

Both scorers (the batched one here, the plain reference loop in the tests) and
the checkpoint fingerprint read these rows, so what a score means is defined
once, here.

A head's score on an example is a log-probability margin, not a generation:
the prompt is followed by the shared start of the answer that obeys the
context (``target_new``, ``answer``) and the one that ignores it
(``target_true``, ``violation``), and the score is ``log p(obeying token) -
log p(ignoring token)`` at the first token where they part. A head's task score
is the mean gain of that margin over the unsteered model.

A stop row (``stop_row``) scores the other thing steering can break: after a
complete answer that follows the context, the log-odds that the model ends its
turn. A head that lowers it makes the steered model repeat its answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ...engine import PastaModel
from ...errors import PastaError
from ...prompts import PLAIN_FORMAT, PLAIN_NEXT_TURN
from ...tokens import EncodedPrompt, encode, pad_left
from ..evaluation import Example, prompt_for


@dataclass(frozen=True)
class ScoringRow:
    """One example as the profiler scores it.

    input_ids: the prompt, then the tokens the two answers share.
    unbiased: per token, True where steering adds no bias: emphasized prompt tokens
        and the shared answer tokens (scored the paper's way: answer keys are left alone, as generated ones are
        without ``steer_generated``).
    first_affected: the first emphasized token; steering changes nothing before it.
    ignoring: None scores ``obeying`` alone, by its log-odds log p - log(1 - p) (stop rows).
    """

    input_ids: list[int]
    unbiased: list[bool]
    first_affected: int
    obeying: int
    ignoring: int | None


def contrast(example: Example) -> tuple[str, str]:
    """The answer that follows the emphasized text and the one that ignores it."""
    if example.task == "knowledge_conflict":
        return example.target_new or "", example.target_true or ""
    if not (example.answer and example.violation):
        raise PastaError(
            f"Instruction example {example.id!r} has no 'answer' and 'violation' fields; the profiler scores "
            "log p(answer) against log p(violation), so a profiling set must give both."
        )
    return example.answer, example.violation


def scoring_row(model: PastaModel, example: Example) -> ScoringRow:
    prompted = prompt_for(example, "pasta")
    encoded = encode(model.tokenizer, model.render(prompted.messages))
    obeying, ignoring = (model.tokenizer(text, add_special_tokens=False)["input_ids"] for text in contrast(example))
    shared = 0
    while shared < min(len(obeying), len(ignoring)) and obeying[shared] == ignoring[shared]:
        shared += 1
    if shared == min(len(obeying), len(ignoring)):
        raise PastaError(
            f"Example {example.id!r}: one answer is a prefix of the other ({contrast(example)!r}), so no token "
            "tells them apart. Give answers that differ."
        )
    return ScoringRow(
        input_ids=encoded.input_ids + obeying[:shared],
        unbiased=encoded.emphasized + [True] * shared,
        first_affected=encoded.emphasized.index(True),
        obeying=obeying[shared],
        ignoring=ignoring[shared],
    )


def stop_row(model: PastaModel, example: Example) -> ScoringRow:
    """The prompt, then ``example.answer`` (a complete answer that follows the context), scored on ending the turn."""
    if not example.answer:
        raise PastaError(
            f"Example {example.id!r} has no 'answer' field; a stop row needs the complete answer sentence "
            "that follows the context, e.g. \"The capital of France is Rome.\""
        )
    rendered = model.render(prompt_for(example, "pasta").messages)
    encoded = encode(model.tokenizer, rendered)
    answer = model.tokenizer(example.answer, add_special_tokens=False)["input_ids"]
    return ScoringRow(
        input_ids=encoded.input_ids + answer,
        unbiased=encoded.emphasized + [True] * len(answer),
        first_affected=encoded.emphasized.index(True),
        obeying=end_of_turn_token(model, rendered.format),
        ignoring=None,
    )


def end_of_turn_token(model: PastaModel, prompt_format: str) -> int:
    """The token that ends an assistant turn: what the chat template writes after one, or the plain format's next turn."""
    tokenizer = model.tokenizer
    if prompt_format == PLAIN_FORMAT:
        return tokenizer(PLAIN_NEXT_TURN, add_special_tokens=False)["input_ids"][0]
    answer = "Done."
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": answer}], tokenize=False
    )
    after = text[text.rindex(answer) + len(answer) :] if answer in text else ""
    if not after:
        raise PastaError(
            f"The chat template of {model.name} writes nothing after an assistant message, so pasta-rag cannot tell "
            "which token ends a turn; stop rows need one."
        )
    return tokenizer(after, add_special_tokens=False)["input_ids"][0]


@dataclass(frozen=True)
class _Batch:
    """Left-padded rows: the scored position is the last one of every row."""

    input_ids: torch.Tensor  # (rows, length)
    attention_mask: torch.Tensor  # (rows, length)
    position_ids: torch.Tensor  # (rows, length)
    unbiased: torch.Tensor  # (rows, length) bool
    obeying: torch.Tensor  # (rows,)
    ignoring: torch.Tensor  # (rows,) -1 where the row scores the log-odds of ``obeying`` alone
    first_affected: int  # the smallest first affected position over the rows, padded coordinates

    @classmethod
    def of(cls, rows: Sequence[ScoringRow], pad_token_id: int) -> _Batch:
        padded = pad_left([EncodedPrompt(row.input_ids, row.unbiased) for row in rows], pad_token_id)
        length = padded.prompt_len
        return cls(
            padded.input_ids,
            padded.attention_mask,
            (padded.attention_mask.cumsum(-1) - 1).clamp(min=0),
            padded.emphasized,  # here: the keys steering leaves alone
            torch.tensor([row.obeying for row in rows]),
            torch.tensor([-1 if row.ignoring is None else row.ignoring for row in rows]),
            min(length - len(row.input_ids) + row.first_affected for row in rows),
        )

    def margin(self, logits: torch.Tensor, repeats: int = 1) -> torch.Tensor:
        """(rows * repeats,) log p(obeying) - log p(ignoring), or the log-odds of obeying where there is no ignoring
        token, from last-position logits (rows * repeats, vocab)."""
        log_probs = logits.float().log_softmax(dim=-1)
        obeying = self.obeying.repeat_interleave(repeats).to(logits.device)[:, None]
        ignoring = self.ignoring.repeat_interleave(repeats).to(logits.device)[:, None]
        log_p = log_probs.gather(1, obeying)[:, 0]  # (rows * repeats,)
        log_not_p = torch.log(-torch.expm1(log_p))  # log(1 - p), exact near p = 1
        against = torch.where(ignoring[:, 0] >= 0, log_probs.gather(1, ignoring.clamp(min=0))[:, 0], log_not_p)
        return log_p - against
