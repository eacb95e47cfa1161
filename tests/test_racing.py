"""Racing the dev choice: the schedule, the halving, and that raced answers are the ones a full run gives."""

from __future__ import annotations

import random

import pytest
from test_profiling import CONFLICTS, examples, tiny_engine

from pasta_rag import PastaError
from pasta_rag.research.profiling import Checkpoint, choose_heads, profile_tasks
from pasta_rag.research.profiling import selection as selection_module
from pasta_rag.research.profiling.dev_choice import dev_choice
from pasta_rag.research.profiling.pipeline import Plan
from pasta_rag.research.profiling.racing import (
    Schedule,
    Tally,
    answered,
    ignore,
    one_at_a_time,
    race,
    race_rounds,
    race_work,
    rank,
)
from pasta_rag.research.profiling.selection import Candidate


def test_rounds_double_in_whole_batches_and_end_with_every_example():
    rounds = race_rounds({"short": 48, "long": 144, "control": 36}, batch=8)
    assert rounds == [
        {"short": 8, "long": 16, "control": 8},  # a sixteenth of each, in whole batches
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

    return [Candidate(k, 0.01, [(0, k)], {}) for k in quality], one_at_a_time(score), asked


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

    raced = race(pool, sizes, one_at_a_time(score), batch=8)
    # 4 candidates keep 2 after the first round, but the twins tie at the cut: both go on, the worse one stops
    assert asked[1] == asked[3] > asked[2] == 8
    assert [names[c.k] for c in raced][:1] == ["best"]
    assert sum(asked.values()) > race_work(len(pool), sizes, batch=8)
    untied = {"best": hits["best"], "twin": hits["twin"], "worse": [True] + [False] * 63, "worst": [False] * 64}
    names, hits, asked = dict(enumerate(untied)), untied, {}
    race(pool, sizes, one_at_a_time(score), batch=8)
    assert sum(asked.values()) == race_work(len(pool), sizes, batch=8)


def test_every_finalist_answered_what_the_full_grid_answers():
    sizes = {"a": 40}
    pool, score, _ = synthetic({k: 0.5 for k in range(5)}, sizes, seed=3)
    raced = race(pool, sizes, score, batch=8)
    full = {c.k: tally for c, tally in zip(pool, score(pool, "a", 40, ignore))}
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
    raced = choose_heads(model, scores, dev, ks, alphas, Checkpoint.open(path, model.name, 0.01),
                         lambda what, work: counted.append, racing=True)
    by_key = {(c.k, c.alpha): c for c in full}
    finalists = [c for c in raced if answered(c) == 18]
    assert finalists  # a tiny random model ties often, and ties go on: what the race saves is tested above
    for candidate in finalists:  # the same answers as the whole-split run: same rates
        assert candidate.dev == by_key[(candidate.k, candidate.alpha)].dev
    assert sum(counted) == sum(answered(c) for c in raced)
    assert race_work(len(full), {"dev": 18}, batch=4) <= sum(counted) <= len(full) * 18
    # a rerun on the same checkpoint answers nothing again, and ranks the same
    monkeypatch.setattr(selection_module, "answer_rows", lambda *a, **k: pytest.fail("answered again"))
    again = choose_heads(model, scores, dev, ks, alphas, Checkpoint.open(path, model.name, 0.01), racing=True)
    assert [(c.k, c.alpha, c.dev) for c in again] == [(c.k, c.alpha, c.dev) for c in raced]
    # the file holds every answer a finalist gave, by example
    key = selection_module.DevScorer(model, dev, Checkpoint.open(None, model.name, 0.01), False).key(finalists[0])
    assert sorted(Checkpoint.open(path, model.name, 0.01).dev_answers(key, "dev"), key=int) == [
        str(i) for i in range(18)]


def exponent_scorer(objective: dict[tuple[int, float], float], sizes: dict[str, int]):
    """A score whose hit rate is fixed per (k, exponent): every prefix scores exactly that rate (in eighths)."""

    def score(candidate: Candidate, name: str, end: int) -> Tally:
        return Tally(round(objective[(candidate.k, candidate.generated_exponent)] * end), 0, end)

    return score


def test_the_exponents_are_tried_at_the_best_finalists_and_the_second_can_win():
    sizes = {"a": 16, "b": 32}
    # at exponent 1, k=1 is best and k=2 second; but k=2 gains most from exponent 2 (the Gemma case)
    objective = {(0, 1.0): 0.25, (1, 1.0): 0.75, (2, 1.0): 0.625, (3, 1.0): 0.5,
                 (1, 2.0): 0.75, (2, 2.0): 0.875, (1, 3.0): 0.5, (2, 3.0): 0.625, (3, 2.0): 1.0}
    grid = [Candidate(k, 0.01, [(0, i) for i in range(k + 1)], {}) for k in range(4)]
    score = one_at_a_time(exponent_scorer(objective, sizes))
    for racing in (False, True):
        one = dev_choice(grid, [1.0, 2.0, 3.0], sizes, score, 8, racing, finalists=1).ranked
        assert (one[0].k, one[0].generated_exponent) == (1, 1.0)  # only k=1's exponents: none beats it
        assert sorted((c.k, c.generated_exponent) for c in one if c.generated_exponent != 1) == [(1, 2.0), (1, 3.0)]
        two = dev_choice(grid, [1.0, 2.0, 3.0], sizes, score, 8, racing, finalists=2).ranked
        assert (two[0].k, two[0].generated_exponent) == (2, 2.0)  # k=3 (fourth at e = 1) never tries e = 2
        assert two[0].generated_alpha == pytest.approx(0.01**2)
        assert {(c.k, c.generated_exponent) for c in two} == {(k, 1.0) for k in range(4)} | {
            (k, e) for k in (1, 2) for e in (2.0, 3.0)}
    with pytest.raises(ValueError, match="finalists must be at least 1"):
        dev_choice(grid, [1.0, 2.0], sizes, score, 8, False, finalists=0)
    with pytest.raises(PastaError, match="finalists"):
        Plan(finalists=0)
    assert Plan().finalists == 2


def test_each_stage_opens_with_its_total_and_advances_by_each_answer_once():
    sizes = {"a": 24, "b": 3}
    objective = {(k, e): 0.15 * k + 0.05 * e for k in range(5) for e in (1.0, 2.0)}
    grid = [Candidate(k, 0.01, [(0, i) for i in range(k + 1)], {}) for k in range(5)]
    for racing in (False, True):
        stages: list[tuple[str, int, list[int]]] = []

        def stage(what: str, work: int) -> object:
            stages.append((what, work, []))
            return stages[-1][2].append

        chosen = dev_choice(grid, [1.0, 2.0], sizes, one_at_a_time(exponent_scorer(objective, sizes)), 8, racing,
                            finalists=2,
                            stage=stage)
        how = "racing" if racing else "choosing"
        assert [what for what, _, _ in stages] == [f"{how} k and alpha on dev", f"{how} generated_alpha on dev"]
        totals = [race_work(5, sizes, 8), race_work(2, sizes, 8)] if racing else [5 * 27, 2 * 27]
        assert [work for _, work, _ in stages] == totals  # no tie in this grid: the totals are what was asked
        assert [sum(advanced) for _, _, advanced in stages] == totals
        assert chosen.answers == sum(totals) == sum(answered(c) for c in chosen.ranked)


def test_a_schedule_is_shares_and_narrows_the_race_it_is_given():
    sizes = {"a": 64, "b": 128}
    quality = {k: 0.3 + 0.02 * k for k in range(16)} | {16: 0.95}
    work = {}
    for schedule in (Schedule(), Schedule(first_share=1 / 8), Schedule(keep=1 / 3)):
        pool, score, asked = synthetic(quality, sizes)
        assert race(pool, sizes, score, 8, schedule)[0].k == 16
        work[schedule] = sum(asked.values())
        assert work[schedule] >= race_work(len(pool), sizes, 8, schedule)  # ties at a cut only add
    assert work[Schedule(keep=1 / 3)] < work[Schedule()] < work[Schedule(first_share=1 / 8)]
    assert race_work(17, sizes, 8, Schedule(keep=1 / 3)) < race_work(17, sizes, 8)
    for wrong in ({"first_share": 0}, {"keep": 1.5}, {"keep": 0}):
        with pytest.raises(ValueError, match="is a share in"):
            Schedule(**wrong)


