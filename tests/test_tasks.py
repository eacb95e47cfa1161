"""The task sets that ship inside the package for `pasta-rag profile` are benchmarks/data's, byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest

from pasta_rag import PastaError
from pasta_rag.research.profiling import JOBS, shipped_tasks
from pasta_rag.research.profiling.jobs import task_path

DATA = Path(__file__).parents[1] / "benchmarks" / "data"
SHIPPED = sorted({(split, name) for job in JOBS.values() for split, names in (("train", job.train), ("dev", job.dev))
                  for name in names})


@pytest.mark.parametrize(("split", "name"), SHIPPED)
def test_shipped_tasks_are_the_benchmark_files(split, name):
    shipped = task_path(split, name)
    assert shipped.read_bytes() == (DATA / split / f"{name}.jsonl").read_bytes(), (
        f"{shipped} drifted from benchmarks/data/{split}/{name}.jsonl: copy the regenerated file over it."
    )


def test_only_the_jobs_tasks_ship():
    folder = task_path("train", "conflicts").parents[1]
    assert sorted((p.parent.name, p.stem) for p in folder.glob("*/*.jsonl")) == SHIPPED


def test_the_jobs_are_the_shipped_sets_tasks():
    assert set(JOBS) == {"context", "instructions"}
    context = shipped_tasks("train", JOBS["context"].train)
    assert {name: len(examples) for name, examples in context.items()} == {"conflicts": 32, "conflicts_long": 24}
    assert {e.task for e in shipped_tasks("dev", JOBS["instructions"].dev)["json"]} == {"instruction"}
    with pytest.raises(PastaError, match="ships no train task 'nothing'"):
        shipped_tasks("train", ("nothing",))
