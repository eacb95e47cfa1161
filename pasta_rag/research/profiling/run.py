"""The whole profile: every task scored by the batched scorer, resuming from and saving to a checkpoint.

This is the step ``pasta-rag profile`` (and the benchmarks) run before choosing
heads: it ties rows, scorer and checkpoint together, and reports progress in
units the command can show as a bar.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch

from ...engine import PastaModel
from ...errors import PastaError
from ..evaluation import Example
from .checkpoint import Checkpoint, fingerprint
from .rows import ScoringRow, scoring_row
from .scorer import score_heads
from .selection import Pair

Progress = Callable[[float], None]
"""Advanced by work done, in layer-forwards of one task: a steered layer l costs (layers - l)."""


def profile_cost(num_layers: int, heads: Sequence[Pair] | None = None, num_heads: int = 1) -> float:
    """The work of scoring one task, in the units ``Progress`` counts; ``heads``: only those (of ``num_heads``)."""
    if heads is None:
        return sum(num_layers - layer for layer in range(num_layers))
    return sum((num_layers - layer) / num_heads for layer, _ in heads)


def profile_tasks(
    model: PastaModel,
    tasks: Mapping[str, Sequence[Example]],
    alpha: float,
    checkpoint: Checkpoint,
    progress: Progress | None = None,
    row: Callable[[PastaModel, Example], ScoringRow] = scoring_row,
    heads: Sequence[Pair] | None = None,
) -> dict[str, torch.Tensor]:
    """``{task: (layers, heads) scores}``, resuming from (and saving to) ``checkpoint``; ``row`` scores an example.

    ``heads``: score only these (screening's candidates), NaN elsewhere; the checkpoint keeps them apart from a
    full profile's scores.
    """
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads or ():
        by_layer.setdefault(layer, []).append(head)
    layers = sorted(by_layer) if heads is not None else list(range(model.num_layers))
    share = {layer: len(by_layer[layer]) / model.num_heads if heads is not None else 1.0 for layer in layers}
    task_scores = {}
    for name, examples in tasks.items():
        if not examples:
            raise PastaError(f"Profiling task {name!r} has no examples.")
        rows = [row(model, example) for example in examples]
        key = name if heads is None else f"{name}@{len(heads)} candidates"
        identity = model.name if heads is None else f"{model.name}|{sorted(heads)}"
        done = checkpoint.layers_done(key, fingerprint(identity, rows))
        todo = [layer for layer in layers if layer not in done]
        if progress and done:
            progress(sum((model.num_layers - layer) * share[layer] for layer in done))

        def record(layer: int, scores: torch.Tensor, key: str = key) -> None:
            checkpoint.record_layer(key, layer, scores)
            if progress:
                progress((model.num_layers - layer) * share[layer])

        todo_heads = None if heads is None else {layer: by_layer[layer] for layer in todo}
        scores = score_heads(model, rows, alpha, layers=todo, heads=todo_heads, on_layer=record) if todo else None
        table = torch.tensor([done.get(layer, [math.nan] * model.num_heads) for layer in range(model.num_layers)])
        if scores is not None:
            table[todo] = scores[todo]
        task_scores[name] = table
    return task_scores
