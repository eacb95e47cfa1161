"""The slow, obviously-correct PASTA reference every fast path is checked against.

Eager attention over the whole sequence (no cache), with an explicit dense
(batch, heads, q, k) mask built here from first principles: causal, padding,
sliding window, and log(alpha) on non-emphasized prompt keys of steered heads.
It ignores the mask transformers passes, so it shares no code with the fast path.

``score_heads_plainly`` is the profiler's reference the same way: one full
forward per head per example, which the batched ``score_heads`` must match.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from pasta_rag.engine import PastaModel
from pasta_rag.heads import HeadSet
from pasta_rag.research.profiling import LayerDone, ScoringRow, _Batch
from pasta_rag.steering import SteeringState, steering

REFERENCE = "pasta_reference"


@dataclass
class ReferenceSetup:
    padding: torch.Tensor  # (batch, seq) 1 for real tokens
    emphasized: torch.Tensor  # (batch, prompt_len) bool
    heads: dict[int, set[int]]
    alpha: float
    steer_generated: bool = False  # keys past the prompt get log(alpha) too
    generated_alpha: float | None = None  # ... or log(generated_alpha), when given


_setup: ContextVar[tuple[ReferenceSetup, ...]] = ContextVar("reference_setup", default=())
"""One setup per emphasis group: each adds its own bias, in its own heads, toward its own tokens."""


def reference_attention(module, query, key, value, attention_mask, scaling=None, softcap=None, **kwargs):
    setups = _setup.get()
    batch, heads, q_len, dim = query.shape
    keys = key.shape[2]
    assert q_len == keys, "the reference recomputes the full sequence: no cache"
    groups = heads // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    scaling = dim**-0.5 if scaling is None else scaling

    scores = query @ key.transpose(-1, -2) * scaling  # (batch, heads, q, k)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap

    i = torch.arange(q_len)[:, None]
    j = torch.arange(keys)[None, :]
    allowed = (j <= i)[None, None]  # (1, 1, q, k)
    window = getattr(module, "sliding_window", None)
    if window:
        allowed = allowed & (i - j < window)[None, None]
    bias = torch.zeros(batch, heads, q_len, keys)
    for setup in setups:
        allowed = allowed & setup.padding[:, None, None, :keys].bool()
        prompt_len = setup.emphasized.shape[1]
        generated_alpha = setup.alpha if setup.generated_alpha is None else setup.generated_alpha
        for b in range(batch):
            if not setup.emphasized[b].any():
                continue
            for h in setup.heads.get(module.layer_idx, ()):
                for k in range(keys):
                    generated = k >= prompt_len
                    if generated and setup.steer_generated:
                        bias[b, h, :, k] += math.log(generated_alpha)
                    elif not generated and not setup.emphasized[b, k]:
                        bias[b, h, :, k] += math.log(setup.alpha)
    scores = scores + bias
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    weights = scores.softmax(dim=-1)
    return (weights @ value).transpose(1, 2).contiguous(), weights


AttentionInterface.register(REFERENCE, reference_attention)
AttentionMaskInterface.register(REFERENCE, eager_mask)


class reference_setup:
    def __init__(self, setup: ReferenceSetup | Sequence[ReferenceSetup] | None):
        self.setups = () if setup is None else (setup,) if isinstance(setup, ReferenceSetup) else tuple(setup)

    def __enter__(self):
        self.token = _setup.set(self.setups)

    def __exit__(self, *exc):
        _setup.reset(self.token)


def score_heads_plainly(
    model: PastaModel,
    rows: Sequence[ScoringRow],
    alpha: float,
    *,
    layers: Sequence[int] | None = None,
    on_layer: LayerDone | None = None,
) -> torch.Tensor:
    """The plain loop: one full forward per head per example. The reference ``score_heads`` must match."""
    num_layers, num_heads = model.num_layers, model.num_heads
    layers = list(range(num_layers)) if layers is None else list(layers)
    scores = torch.full((num_layers, num_heads), math.nan)
    batches = [_Batch.of([row], model.pad_token_id) for row in rows]
    with torch.no_grad():
        unsteered = [batch.margin(_last_logits(model, batch)) for batch in batches]
        for layer in layers:
            for head in range(num_heads):
                heads = HeadSet.from_pairs([(layer, head)])
                gains = []
                for batch, base in zip(batches, unsteered):
                    state = SteeringState(batch.unbiased, heads, alpha, num_heads)
                    with steering(state):
                        gains.append(batch.margin(_last_logits(model, batch)) - base)
                scores[layer, head] = torch.cat(gains).mean()
            if on_layer:
                on_layer(layer, scores[layer])
    return scores


def _last_logits(model: PastaModel, batch: _Batch) -> torch.Tensor:
    output = model.model(input_ids=batch.input_ids.to(model.device), logits_to_keep=1)
    return output.logits[:, -1]  # (rows, vocab)
