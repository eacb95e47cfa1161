"""The multi-task head profiler behind ``pasta-rag profile``.

PASTA steers the heads that, steered one at a time, move the model most toward
the emphasized text on several tasks at once (the paper's multi-task
profiling): rank heads per task, keep the intersection of the per-task top-k,
and choose k (and alpha) on a dev split.

One idea per module:

* ``rows``: what is scored (a log-probability margin, or a stop row's log-odds) and how rows are batched;
* ``scorer``: the batched exact scorer, every head of a layer steered alone in one batch;
* ``checkpoint``: per-layer scores saved as they come, so a killed run resumes;
* ``run``: the whole profile, every task scored through the checkpoint;
* ``screening``: every head's score estimated at once (attribution patching), so few are scored exactly;
* ``jobs``: the ``context`` and ``instructions`` jobs and the task sets that ship for them;
* ``selection``: top-k per task, their intersection, and k and alpha chosen on dev.

This package re-exports what the command, the benchmarks and the tests use.
"""

from __future__ import annotations

from .checkpoint import Checkpoint, fingerprint
from .jobs import JOBS, Job, shipped_tasks
from .rows import ScoringRow, contrast, end_of_turn_token, scoring_row, stop_row
from .rows import _Batch as _Batch  # private, re-exported for the tests that check its margin
from .run import Progress, profile_cost, profile_tasks
from .scorer import LayerDone, score_heads
from .screening import (
    candidate_heads,
    rescoring_pool,
    screen_heads,
    screen_tasks,
    screened_order,
    spearman,
    top_k_overlap,
)
from .selection import Candidate, Pair, choose_heads, default_ks, intersect_top_k, profiled_head_set, top_k

__all__ = [
    "Candidate",
    "Checkpoint",
    "JOBS",
    "Job",
    "LayerDone",
    "Pair",
    "Progress",
    "ScoringRow",
    "choose_heads",
    "contrast",
    "default_ks",
    "candidate_heads",
    "rescoring_pool",
    "screened_order",
    "end_of_turn_token",
    "fingerprint",
    "intersect_top_k",
    "profile_cost",
    "profile_tasks",
    "profiled_head_set",
    "score_heads",
    "screen_heads",
    "screen_tasks",
    "scoring_row",
    "shipped_tasks",
    "spearman",
    "stop_row",
    "top_k",
    "top_k_overlap",
]
