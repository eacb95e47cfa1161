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

Progress = Callable[[float], None]
"""Advanced by work done, in layer-forwards of one task: a steered layer l costs (layers - l)."""


def profile_cost(num_layers: int) -> int:
    """The work of scoring one task, in the units ``Progress`` counts."""
    return sum(num_layers - layer for layer in range(num_layers))


def profile_tasks(
    model: PastaModel,
    tasks: Mapping[str, Sequence[Example]],
    alpha: float,
    checkpoint: Checkpoint,
    progress: Progress | None = None,
    row: Callable[[PastaModel, Example], ScoringRow] = scoring_row,
) -> dict[str, torch.Tensor]:
    """``{task: (layers, heads) scores}``, resuming from (and saving to) ``checkpoint``; ``row`` scores an example."""
    task_scores = {}
    for name, examples in tasks.items():
        if not examples:
            raise PastaError(f"Profiling task {name!r} has no examples.")
        rows = [row(model, example) for example in examples]
        done = checkpoint.layers_done(name, fingerprint(model.name, rows))
        todo = [layer for layer in range(model.num_layers) if layer not in done]
        if progress and done:
            progress(sum(model.num_layers - layer for layer in done))

        def record(layer: int, scores: torch.Tensor, name: str = name) -> None:
            checkpoint.record_layer(name, layer, scores)
            if progress:
                progress(model.num_layers - layer)

        scores = score_heads(model, rows, alpha, layers=todo, on_layer=record) if todo else None
        table = torch.tensor([done.get(layer, [math.nan] * model.num_heads) for layer in range(model.num_layers)])
        if scores is not None:
            table[todo] = scores[todo]
        task_scores[name] = table
    return task_scores
