"""Racing the dev choice: the schedule, the halving, and that raced answers are the ones a full run gives."""

from __future__ import annotations

import random

import pytest
from test_profiling import CONFLICTS, examples, tiny_engine

from pasta_rag import PastaError
from pasta_rag.research.profiling import Checkpoint, choose_heads, profile_tasks
from pasta_rag.research.profiling import selection as selection_module
from pasta_rag.research.profiling.pipeline import Plan, dev_work
from pasta_rag.research.profiling.racing import Tally, answered, race, race_rounds, race_work, rank
from pasta_rag.research.profiling.selection import Candidate


def test_rounds_double_in_whole_batches_and_end_with_every_example():
    rounds = race_rounds({"short": 48, "long": 144, "control": 36}, batch=8)
    assert rounds == [
        {"short": 8, "long": 24, "control": 8},
        {"short": 16, "long": 40, "control": 16},
        {"short": 24, "long": 72, "control": 24},
        {"short": 48, "long": 144, "control": 36},
    ]
    assert race_rounds({"tiny": 3}, batch=8) == [{"tiny": 3}]  # a set smaller than a batch: one round
    with pytest.raises(ValueError, match="first_share"):
        race_rounds({"a": 8}, batch=8, first_share=0)


def synthetic(quality: dict[int, float], sizes: dict[str, int], seed: int = 0):
    """Candidates k=0..n whose answers are fixed coin flips with the given hit rates, and a scorer of them."""
    rng = random.Random(seed)
    hits = {k: {name: [rng.random() < rate for _ in range(size)] for name, size in sizes.items()}
            for k, rate in quality.items()}
    asked: dict[tuple[int, str], int] = {}

    def score(candidate: Candidate, name: str, end: int) -> Tally:
        assert end >= asked.get((candidate.k, name), 0), "a race only ever asks for more"
        asked[(candidate.k, name)] = end
        return Tally(sum(hits[candidate.k][name][:end]), 0, end)

    return [Candidate(k, 0.01, [(0, k)], {}) for k in quality], score, asked


def test_the_race_keeps_a_clear_best_and_answers_a_fraction_of_the_grid():
    sizes = {"a": 64, "b": 128}
    quality = {k: 0.3 + 0.02 * k for k in range(16)} | {16: 0.95}
    pool, score, asked = synthetic(quality, sizes)
    ranked = race(pool, sizes, score, batch=8)
    assert ranked[0].k == 16
    assert {c.k for c in ranked} == set(quality)  # every candidate is ranked, the dropped ones too
    finalists = [c for c in ranked if answered(c) == sum(sizes.values())]
    assert 1 <= len(finalists) <= 3 and ranked[: len(finalists)] == finalists  # the whole split ranks first
    assert ranked == rank(ranked)
    work = sum(asked.values())
    assert race_work(len(pool), sizes, batch=8) <= work < 0.5 * len(pool) * sum(sizes.values())


def test_a_tie_at_the_cut_keeps_both_and_no_tie_answers_the_fewest():
    sizes = {"a": 64}
    hits = {"best": [True] * 64, "twin": [True, False] * 32, "worse": [False] * 64}
    hits["other twin"] = hits["twin"]
    pool = [Candidate(k, 0.01, [(0, k)], {}) for k in range(len(hits))]
    names = dict(enumerate(hits))
    asked: dict[int, int] = {}

    def score(candidate: Candidate, name: str, end: int) -> Tally:
        asked[candidate.k] = end
        return Tally(sum(hits[names[candidate.k]][:end]), 0, end)

    raced = race(pool, sizes, score, batch=8)
    # 4 candidates keep 2 after the first round, but the twins tie at the cut: both go on, the worse one stops
    assert asked[1] == asked[3] > asked[2] == 8
    assert [names[c.k] for c in raced][:1] == ["best"]
    assert sum(asked.values()) > race_work(len(pool), sizes, batch=8)
    untied = {"best": hits["best"], "twin": hits["twin"], "worse": [True] + [False] * 63, "worst": [False] * 64}
    names, hits, asked = dict(enumerate(untied)), untied, {}
    race(pool, sizes, score, batch=8)
    assert sum(asked.values()) == race_work(len(pool), sizes, batch=8)


def test_every_finalist_answered_what_the_full_grid_answers():
    sizes = {"a": 40}
    pool, score, _ = synthetic({k: 0.5 for k in range(5)}, sizes, seed=3)
    raced = race(pool, sizes, score, batch=8)
    full = {c.k: score(c, "a", 40) for c in pool}
    for candidate in raced:
        if answered(candidate) == 40:
            assert candidate.dev["a"]["acc"] == full[candidate.k].acc_rate


def test_plan_chooses_the_race_unless_exact():
    assert Plan().racing and not Plan(exact=True).racing
    assert Plan(exact=True, dev_choice="race").racing and not Plan(dev_choice="full").racing
    with pytest.raises(PastaError, match="is one of race, full"):
        Plan(dev_choice="fast")


def test_a_raced_choice_answers_as_the_full_choice_does_and_resumes(tmp_path, monkeypatch):
    model = tiny_engine("llama")
    tasks = {"conflicts": examples(CONFLICTS)}
    dev = {"dev": examples(CONFLICTS * 6)}  # 18 answers: three batches of 8, so the race has rounds
    monkeypatch.setattr(selection_module, "DEV_BATCH", 4)
    scores = profile_tasks(model, tasks, 0.01, Checkpoint.open(None, model.name, 0.01))
    ks, alphas = [2, 4, 8, 12], [0.01, 0.1, 0.5]
    full = choose_heads(model, scores, dev, ks, alphas, Checkpoint.open(None, model.name, 0.01))
    path = tmp_path / "progress.json"
    counted: list[int] = []
    raced = choose_heads(model, scores, dev, ks, alphas, Checkpoint.open(path, model.name, 0.01), counted.append,
                         racing=True)
    by_key = {(c.k, c.alpha): c for c in full}
    finalists = [c for c in raced if answered(c) == 18]
    assert finalists  # a tiny random model ties often, and ties go on: what the race saves is tested above
    for candidate in finalists:  # the same answers as the whole-split run: same rates
        assert candidate.dev == by_key[(candidate.k, candidate.alpha)].dev
    assert sum(counted) == sum(answered(c) for c in raced)
    assert race_work(len(full), {"dev": 18}, batch=4) <= sum(counted) <= len(full) * 18
    # a rerun on the same checkpoint answers nothing again, and ranks the same
    monkeypatch.setattr(selection_module, "evaluate", lambda *a, **k: pytest.fail("answered again"))
    again = choose_heads(model, scores, dev, ks, alphas, Checkpoint.open(path, model.name, 0.01), racing=True)
    assert [(c.k, c.alpha, c.dev) for c in again] == [(c.k, c.alpha, c.dev) for c in raced]
    # and a full choice on it reads the finalists' whole-split results back
    assert Checkpoint.open(path, model.name, 0.01).dev_result(
        selection_module.DevScorer(model, dev, Checkpoint.open(None, model.name, 0.01), False, None).key(
            finalists[0])) is not None


def test_the_progress_total_is_the_answers_asked():
    dev = {"a": examples(CONFLICTS * 8), "b": examples(CONFLICTS)}  # 24 and 3
    assert dev_work(5, dev, racing=False) == 5 * 27
    assert dev_work(5, dev, racing=True) == race_work(5, {"a": 24, "b": 3}, batch=8) < 5 * 27
