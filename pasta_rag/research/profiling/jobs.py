"""The two jobs a model's head sets are profiled for, and the task sets that ship with the package for them.

``pasta-rag profile --model X`` must work for any model without the user
writing tasks, so the training and dev sets the shipped sets were profiled on
live inside the package (``pasta_rag/tasks/{train,dev}/*.jsonl``, copies of
``benchmarks/data``: ``tests/test_tasks.py`` keeps them byte-identical).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ...errors import PastaError
from ..evaluation import Example, read_examples


@dataclass(frozen=True)
class Job:
    """What one head set is for, the tasks it is profiled and chosen on, and the settings tried on dev."""

    purpose: str
    """The head set's name: ``context`` (retrieved passages) or ``instructions`` (pinned instructions)."""
    train: tuple[str, ...]
    dev: tuple[str, ...]
    alphas: tuple[float, ...]
    steer_generated: bool
    generated_exponents: tuple[float, ...] = (1.0,)
    """Tried at the best k and alpha of the first grid (which steers generated keys like the prompt)."""


JOBS: dict[str, Job] = {
    job.purpose: job
    for job in (
        Job("context", train=("conflicts", "conflicts_long"), dev=("conflicts", "conflicts_long", "control"),
            alphas=(0.01, 0.02, 0.03, 0.1), steer_generated=True, generated_exponents=(1.0, 1.5, 2.0, 3.0)),
        Job("instructions", train=("json", "pronouns"), dev=("json", "pronouns"), alphas=(0.01, 0.1),
            steer_generated=False),
    )
}
"""The settings the shipped sets were chosen with (benchmarks/README.md, "Head sets and the profiler")."""


def task_path(split: str, name: str) -> Path:
    """The shipped file of task ``name`` in ``split`` (``train`` or ``dev``)."""
    resource = resources.files("pasta_rag").joinpath("tasks", split, f"{name}.jsonl")
    if not resource.is_file():
        raise PastaError(f"pasta-rag ships no {split} task {name!r} (pasta_rag/tasks/{split}/{name}.jsonl); "
                         "reinstall the package, or pass your own with --train / --dev.")
    return Path(str(resource))


def shipped_tasks(split: str, names: tuple[str, ...]) -> dict[str, list[Example]]:
    """``{name: examples}`` read from the package; a malformed shipped line is a packaging bug, so it raises."""
    sets = {}
    for name in names:
        examples, problems = read_examples(task_path(split, name))
        if problems:
            raise PastaError(f"Shipped task {split}/{name} has malformed line {problems[0].line}: {problems[0].message}")
        sets[name] = examples
    return sets
