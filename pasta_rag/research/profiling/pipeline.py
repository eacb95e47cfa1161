"""One head set, start to end: score the heads (screened then rescored, or exactly), choose k and alpha on dev
(raced, or every candidate on the whole split).

``pasta-rag profile`` runs this once per job (or once for the user's own
tasks); it is here, not in the command, so that the order of the steps is
read in one place and the command only draws progress bars.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ...engine import PastaModel
from ...errors import PastaError
from ...heads import HeadSet
from ..evaluation import Example
from .checkpoint import Checkpoint
from .dev_choice import FINALISTS
from .run import profile_cost, profile_tasks
from .screening import check_candidates, rescoring_pool, screen_tasks
from .selection import Candidate, choose_heads, default_ks, profiled_head_set

DEV_CHOICES = ("race", "full")

Stage = Callable[[str, float], Callable[[float], None]]
"""Opens a progress stage (what it does, its total work) and returns the function that advances it."""


@dataclass(frozen=True)
class Plan:
    """How a head set is searched for."""

    alpha: float = 0.01
    """Alpha while scoring single heads (the paper's)."""
    ks: Sequence[int] | None = None
    """Top-k sizes tried on dev; None: those keeping 4-24% of the heads."""
    alphas: Sequence[float] = (0.01, 0.1)
    steer_generated: bool = False
    generated_exponents: Sequence[float] = (1.0,)
    """The first grid uses 1 (or the first given); the others are tried at its best ``finalists`` k and alpha."""
    finalists: int = FINALISTS
    exact: bool = False
    """Score every head exactly (the reference) instead of screening then rescoring the candidates."""
    candidates: float = 2.0
    """With screening: the first ``candidates x (largest k)`` heads in screened order are rescored exactly."""
    screening: str = "outputs"
    """What the screening gates scale: head outputs (attribution patching) or the steering bias (``screening``)."""
    dev_choice: str | None = None
    """``race`` (successive halving, ``racing``) or ``full`` (every candidate on the whole dev split, the
    reference); None: full with ``exact``, race otherwise."""

    def __post_init__(self) -> None:
        check_candidates(self.candidates)  # before a model is loaded
        if self.finalists < 1:
            raise PastaError(f"finalists (--finalists) is how many of the best (k, alpha) try the other generated "
                             f"exponents: at least 1, got {self.finalists}.")
        if self.dev_choice not in (None, *DEV_CHOICES):
            raise PastaError(f"dev_choice (--dev-choice) is one of {', '.join(DEV_CHOICES)} (or None: full with exact, race "
                             f"otherwise), got {self.dev_choice!r}.")

    @property
    def racing(self) -> bool:
        return self.dev_choice == "race" if self.dev_choice is not None else not self.exact


def profile_head_set(
    model: PastaModel,
    tasks: Mapping[str, Sequence[Example]],
    dev_sets: Mapping[str, Sequence[Example]],
    plan: Plan,
    checkpoint: Checkpoint,
    stage: Stage,
) -> tuple[HeadSet, list[Candidate]]:
    """The chosen head set (its metadata says how it was found) and every candidate tried, best first."""
    layers, heads = model.num_layers, model.num_heads
    screened = None
    if plan.exact:
        advance = stage(f"scoring {layers * heads} heads x {len(tasks)} tasks", profile_cost(layers) * len(tasks))
        scores = profile_tasks(model, tasks, plan.alpha, checkpoint, advance)
    else:
        screened = screen_tasks(model, tasks, plan.alpha, stage(f"screening {layers * heads} heads", len(tasks)),
                                method=plan.screening)
        largest = max(plan.ks) if plan.ks else max(default_ks(screened))
        pool = rescoring_pool(screened, plan.candidates, largest)
        advance = stage(f"rescoring {len(pool)} candidates exactly", profile_cost(layers, pool, heads) * len(tasks))
        scores = profile_tasks(model, tasks, plan.alpha, checkpoint, advance, heads=pool)
    sizes = list(plan.ks) if plan.ks else default_ks(scores)
    ranked = choose_heads(model, scores, dev_sets, sizes, plan.alphas, checkpoint, stage, plan.steer_generated,
                          plan.generated_exponents, racing=plan.racing, finalists=plan.finalists)
    sizes_by_task = {name: len(examples) for name, examples in tasks.items()}
    head_set = profiled_head_set(model.name, scores, sizes_by_task, plan.alpha, ranked, plan.steer_generated,
                                 screened=screened, racing=plan.racing)
    return head_set, ranked
