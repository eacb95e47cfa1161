"""Context-aware decoding (Shi et al. 2023), the baseline a user would otherwise pick for knowledge conflicts.

CAD contrasts two forward passes at every step: the prompt with the context and the
same prompt without it, and decodes from ``(1 + a) * logits_with - a * logits_without``.
It needs a second pass per token (about twice the compute); PASTA needs none.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedModel

from ..batching import Generation, finish_all, prepare
from ..engine import PastaModel
from ..prompts import Prompt
from ..settings import SamplingSettings, Steering

UNSTEERED = Steering(enabled=False)

DEFAULT_WEIGHT = 0.5


class ContrastWithoutContext(LogitsProcessor):
    """Runs the context-free prompts alongside generation (their own KV cache) and contrasts the logits."""

    def __init__(self, model: PreTrainedModel, plain_ids: torch.Tensor, plain_mask: torch.Tensor, prompt_len: int,
                 weight: float):
        self.model = model
        self.ids = plain_ids  # (batch, plain_len), left-padded
        self.mask = plain_mask
        self.prompt_len = prompt_len
        self.weight = weight
        self.cache = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_len :]  # (batch, steps so far)
        if self.cache is None:
            step_ids = torch.cat([self.ids, generated], dim=1)
            self.mask = torch.cat([self.mask, torch.ones_like(generated)], dim=1)
        else:
            step_ids = generated[:, -1:]
            self.mask = torch.cat([self.mask, torch.ones_like(step_ids)], dim=1)
        with torch.no_grad():
            output = self.model(input_ids=step_ids, attention_mask=self.mask, cache=self.cache, use_cache=True,
                                logits_to_keep=1)
        self.cache = output.cache
        plain = output.logits[:, -1].float()  # (batch, vocab)
        return ((1 + self.weight) * scores.float() - self.weight * plain).to(scores.dtype)


def generate_cad(
    model: PastaModel,
    prompts: Sequence[Prompt],
    plain_prompts: Sequence[Prompt],
    weight: float = DEFAULT_WEIGHT,
    max_new_tokens: int = 24,
    stop: Sequence[str] | None = None,
) -> list[Generation]:
    """Greedy CAD answers: ``prompts`` hold the context, ``plain_prompts`` are the same without it."""
    settings = SamplingSettings(max_new_tokens=max_new_tokens, stop=stop)
    call = prepare(model, prompts, None, None, UNSTEERED, settings)
    plain = prepare(model, plain_prompts, None, None, UNSTEERED, settings)
    contrast = ContrastWithoutContext(model.model, plain.batch.input_ids.to(model.device),
                                      plain.batch.attention_mask.to(model.device), call.batch.prompt_len, weight)
    with torch.no_grad():
        output = model.model.generate(
            **call.generate_inputs(model.device), logits_processor=LogitsProcessorList([contrast])
        )
    return finish_all(model, output, call, settings)


def score_cad(model: PastaModel, prompt: Prompt, plain_prompt: Prompt, continuation: str,
              weight: float = DEFAULT_WEIGHT) -> float:
    """log p_CAD(continuation): the contrasted logits, renormalized, summed over the continuation's tokens."""
    answer = model.tokenizer(continuation, add_special_tokens=False)["input_ids"]
    logits = [_continuation_logits(model, p, answer) for p in (prompt, plain_prompt)]
    contrasted = ((1 + weight) * logits[0] - weight * logits[1]).log_softmax(dim=-1)  # (answer, vocab)
    return float(contrasted.gather(1, torch.tensor(answer, device=contrasted.device)[:, None]).sum())


def _continuation_logits(model: PastaModel, prompt: Prompt, answer: list[int]) -> torch.Tensor:
    call = prepare(model, [prompt], None, None, UNSTEERED, SamplingSettings(max_new_tokens=1))
    input_ids = torch.cat([call.batch.input_ids, torch.tensor([answer])], dim=1).to(model.device)
    with torch.no_grad():
        logits = model.model(input_ids=input_ids).logits[0].float()
    return logits[call.batch.prompt_len - 1 : -1]  # (answer, vocab): the predictions of the answer's tokens
