"""Screening: every head's score estimated at once, so that exact scoring runs on a few candidates only.

The exact scorer steers each head alone, one variant per head and example:
``layers x heads`` partial forwards per example, which is what makes profiling
a larger model slow. Attribution patching (AtP: Nanda 2023, Kramár et al.
2024) estimates all of those variants from one pass.

Each head's output gets a gate ``g`` that moves it from what the unsteered
model computes (g = 0) to what the head computes when it alone is steered
(g = 1), its inputs being the unsteered ones: ``out = u + g * (s - u)``. Gate 1
on head (l, h) and 0 elsewhere is exactly steering that head alone (the layers
below are untouched, the other heads of layer l are unsteered, and the layers
above read the result), so the exact score is ``f(e_lh) - f(0)`` and the
gradient at g = 0 is its first-order estimate: for every head at once,
``sum over positions of <s - u, d margin / d out>``.

The other gate (``method="bias"``) scales the steering bias itself: head h
adds ``g * log(alpha)`` to the keys it pushes down, so g = 1 on one head is
again steering it alone, and one plain forward and backward give the gradient.
It is cheaper (no doubled batch) but linear in the bias, where the softmax is
not: the output gate sees each head's real steered output.

One pass per chunk of rows (output gates): the batch is doubled, the second half steered in
every head, and each decoder layer's input of the second half is overwritten
with the first half's, so ``s`` is every head's steered output on unsteered
inputs; then one backward of the first half's margin. No gradient reaches the
weights: they are frozen for the pass, and the gates are the only leaves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ...engine import PastaModel
from ...errors import PastaError
from ...heads import HeadSet
from ...steering import SteeringState, steering
from ..evaluation import Example
from .rows import ScoringRow, _Batch, scoring_row
from .scorer import _chunks, _decoder_layers
from .selection import Pair, intersect_top_k, top_k


def screen_tasks(
    model: PastaModel,
    tasks: Mapping[str, Sequence[Example]],
    alpha: float,
    progress: Callable[[int], None] | None = None,
    row: Callable[[PastaModel, Example], ScoringRow] = scoring_row,
    method: str = "outputs",
) -> dict[str, torch.Tensor]:
    """``{task: (layers, heads) screened scores}``; ``progress`` is advanced by one per task screened."""
    screened = {}
    for name, examples in tasks.items():
        if not examples:
            raise PastaError(f"Profiling task {name!r} has no examples.")
        screened[name] = screen_heads(model, [row(model, example) for example in examples], alpha, method=method)
        if progress:
            progress(1)
    return screened


METHODS = ("outputs", "bias")
"""What the gates scale: each head's output (between unsteered and steered alone), or its steering bias."""


def screen_heads(
    model: PastaModel, rows: Sequence[ScoringRow], alpha: float, *, method: str = "outputs", batch_tokens: int = 2048
) -> torch.Tensor:
    """(layers, heads): the estimated mean margin gain of steering each head alone (the gates' gradient at 0)."""
    if method not in METHODS:
        raise PastaError(f"Unknown screening method {method!r}; use one of {', '.join(METHODS)}.")
    margins = patched_margins if method == "outputs" else biased_margins
    gains = []
    for chunk in _chunks(model, rows, 2 if method == "outputs" else 1, batch_tokens):
        gates = torch.zeros(len(chunk), model.num_layers, model.num_heads, requires_grad=True)
        with _frozen_weights(model.model), torch.enable_grad():
            margins(model, chunk, alpha, gates).sum().backward()
        gains.append(gates.grad)  # (rows, layers, heads)
    return torch.cat(gains).mean(dim=0)


@dataclass
class _GatedBias(SteeringState):
    """Head h of layer l adds ``gates[row, l, h] * log(alpha)``: the head switch is the gate."""

    gates: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, 0))  # (rows, layers, heads)

    def head_switch(self, layer: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
        return self.gates[:, layer].to(device=device, dtype=dtype)  # (rows, heads)


def biased_margins(
    model: PastaModel, rows: Sequence[ScoringRow], alpha: float, gates: torch.Tensor
) -> torch.Tensor:
    """(rows,) margins with each head's steering bias scaled by its gate; gates (rows, layers, heads)."""
    batch = _Batch.of(rows, model.pad_token_id)
    everything = HeadSet.from_layers(range(model.num_layers))
    state = _GatedBias(batch.unbiased, everything, alpha, model.num_heads, gates=gates)
    device = model.device
    with steering(state):
        output = model.model(
            input_ids=batch.input_ids.to(device),
            attention_mask=batch.attention_mask.to(device),
            position_ids=batch.position_ids.to(device),
            use_cache=False,
            logits_to_keep=1,
        )
    return batch.margin(output.logits[:, -1])


def patched_margins(
    model: PastaModel, rows: Sequence[ScoringRow], alpha: float, gates: torch.Tensor
) -> torch.Tensor:
    """(rows,) margins with head outputs gated between unsteered (0) and steered alone (1); gates (rows, layers, heads).

    A one-hot gate is exactly steering that head alone, which the tests check against the exact scorer.
    """
    batch = _Batch.of(rows, model.pad_token_id)
    count, length = batch.input_ids.shape
    everything = HeadSet.from_pairs((layer, head) for layer in range(model.num_layers) for head in range(model.num_heads))
    unsteered = torch.zeros_like(batch.unbiased)  # a row with nothing emphasized is not steered
    state = SteeringState(torch.cat([unsteered, batch.unbiased]), everything, alpha, model.num_heads)  # (2 rows, length)
    device = model.device

    def doubled(tensor: torch.Tensor) -> torch.Tensor:
        return torch.cat([tensor, tensor]).to(device)  # (2 rows, length)

    with steering(state), _patched(model, count, gates.to(device)):
        output = model.model(
            input_ids=doubled(batch.input_ids),
            attention_mask=doubled(batch.attention_mask),
            position_ids=doubled(batch.position_ids),
            use_cache=False,
            logits_to_keep=1,
        )
    return batch.margin(output.logits[:count, -1])


def screened_order(screened: Mapping[str, torch.Tensor]) -> list[Pair]:
    """Every head, in the order it enters the intersection of the per-task screened top-k as k grows.

    A head is in the intersection of every task's top k exactly when its worst rank over the tasks is at most k,
    so heads are ordered by their worst rank (then their mean rank, then layer and head): the prefix of this
    order is what the multi-task selection can pick, whatever k.
    """
    if not screened:
        raise PastaError("Screening needs at least one task.")
    ranks: dict[Pair, list[int]] = {}
    for scores in screened.values():
        for rank, pair in enumerate(top_k(scores, scores.numel())):
            ranks.setdefault(pair, []).append(rank)
    return sorted(ranks, key=lambda pair: (max(ranks[pair]), sum(ranks[pair]) / len(ranks[pair]), pair))


def candidate_heads(screened: Mapping[str, torch.Tensor], count: int) -> list[Pair]:
    """The first ``count`` heads in screened order (sorted by layer and head): what is rescored exactly."""
    return sorted(screened_order(screened)[:count])


def rescoring_pool(screened: Mapping[str, torch.Tensor], candidates: float, largest_k: int) -> list[Pair]:
    """The first ``candidates x (the largest head set)`` heads in screened order, rescored exactly (at most every
    head); the largest head set is the screened intersection at ``largest_k``.

    What the dev choice tries are intersections of the per-task top k, and the largest holds far fewer heads
    than ``largest_k`` when tasks disagree; sizing the pool by k would rescore nearly every head. The pool is a
    prefix of the order in which heads enter the intersection, so it holds the screened largest set and as many
    again (with 2) for the heads screening misplaces."""
    check_candidates(candidates)
    largest_set = max(1, len(intersect_top_k(screened, largest_k)))
    return candidate_heads(screened, round(candidates * largest_set))


def check_candidates(candidates: float) -> None:
    """Below 1 the pool would hold fewer heads than the largest head set tried, so it is refused."""
    if not candidates >= 1:
        raise PastaError(f"candidates must be at least 1 (the rescored pool holds candidates x the largest head "
                         f"set tried), got {candidates}; use 2-4, or profile with --exact to score every head "
                         "exactly.")


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Rank correlation of two score tables of the same shape (ties ranked by position)."""
    ranks = [torch.empty(x.numel()).index_put_((x.flatten().argsort(),), torch.arange(x.numel(), dtype=torch.float))
             for x in (a, b)]
    return float(torch.corrcoef(torch.stack(ranks))[0, 1])


def top_k_overlap(a: torch.Tensor, b: torch.Tensor, k: int) -> float:
    """Share of b's k best heads that are among a's k best."""
    return len(set(top_k(a, k)) & set(top_k(b, k))) / k


def _attention_outputs(model: PastaModel) -> list[torch.nn.Module]:
    """Each decoder layer's output projection: its input is the heads' outputs side by side."""
    projections = [getattr(getattr(layer, "self_attn", None), "o_proj", None) for layer in _decoder_layers(model)]
    if not all(isinstance(p, torch.nn.Module) for p in projections):
        raise PastaError(
            f"pasta-rag cannot find the attention output projections of {type(model.model).__name__} (expected "
            "layer.self_attn.o_proj), so it cannot screen heads; profile with --exact instead."
        )
    return projections


@contextmanager
def _patched(model: PastaModel, count: int, gates: torch.Tensor) -> Iterator[None]:
    """Rows [count:] compute steered head outputs on the inputs of rows [:count], whose head outputs are gated."""
    handles = []

    def copy_unsteered_input(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]  # (2 rows, length, hidden)
        hidden = torch.cat([hidden[:count], hidden[:count].detach()])
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    def gate(layer: int):
        def mix(module, args):
            heads = args[0].unflatten(-1, (model.num_heads, -1))  # (2 rows, length, heads, head_dim)
            unsteered, steered = heads[:count], heads[count:].detach()
            moved = unsteered + gates[:, layer, None, :, None] * (steered - unsteered).detach()
            return (torch.cat([moved, steered]).flatten(-2), *args[1:])

        return mix

    for index, (layer, projection) in enumerate(zip(_decoder_layers(model), _attention_outputs(model))):
        handles.append(layer.register_forward_pre_hook(copy_unsteered_input, with_kwargs=True))
        handles.append(projection.register_forward_pre_hook(gate(index)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _frozen_weights(module: torch.nn.Module) -> Iterator[None]:
    """No gradient on the weights: the gates are the only leaves that need one."""
    trainable = [p for p in module.parameters() if p.requires_grad]
    for parameter in trainable:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in trainable:
            parameter.requires_grad_(True)
