"""Racing the dev choice: every candidate answers a few dev examples, only the better half answers more.

Choosing k and alpha means greedy answers of every candidate on every dev
example, which is most of a profile's time; yet most candidates are plainly
worse after a few batches. Successive halving (Jamieson & Talwalkar 2016)
spends the answers where the choice is close: in each round the survivors
answer the next examples of every dev set (the prefix doubles, in whole
batches, so the answers are those a full run gives), and the better half goes
on. Only the last few answer the whole dev split, so the one chosen is ranked
on exactly what the full grid would rank it on. A candidate tied with the last
one kept goes on too: small dev batches make ties common, and dropping one of
two equal candidates would be a coin flip, not a choice.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # selection races its candidates, so it imports this module
    from .selection import Candidate


@dataclass(frozen=True)
class Schedule:
    """How fast a race narrows: what the first round answers, and what each cut keeps."""

    first_share: float = 1 / 16
    """The share of each dev set the first round answers (at least one batch); each later round doubles it.
    Why a sixteenth and not more: replayed on a recorded full grid in many dev orders
    (``benchmarks/race_schedules.py``), it rarely changed the pick and saved much of the first round."""
    keep: float = 1 / 2
    """The share of candidates each cut keeps (rounded up; a tie at the cut keeps more)."""

    def __post_init__(self) -> None:
        for name in ("first_share", "keep"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"A race's {name} is a share in (0, 1], got {getattr(self, name)}.")


DEFAULT_SCHEDULE = Schedule()


@dataclass(frozen=True)
class Tally:
    """Hits of one candidate on the first ``n`` examples of one dev set."""

    acc: int
    rep: int
    n: int

    @property
    def acc_rate(self) -> float:
        return self.acc / self.n

    @property
    def rep_rate(self) -> float:
        return self.rep / self.n

    def __add__(self, other: Tally) -> Tally:
        return Tally(self.acc + other.acc, self.rep + other.rep, self.n + other.n)


Advance = Callable[[int], None]
"""Told how many more of the answers asked for are in."""

Score = Callable[[Sequence["Candidate"], str, int, Advance], list[Tally]]
"""The tallies of candidates on the first ``end`` examples of the named dev set. They are asked for together, so
a scorer can share the work of one example between candidates; it calls ``advance(n)`` as n more answers are
in, each (candidate, example) once: the first time it is asked for."""


def one_at_a_time(score: Callable[[Candidate, str, int], Tally]) -> Score:
    """A ``Score`` from one that tallies a candidate alone (replays of recorded answers, tests)."""
    asked: dict[tuple, int] = {}

    def together(candidates: Sequence[Candidate], set_name: str, end: int, advance: Advance) -> list[Tally]:
        for candidate in candidates:
            before = asked.get((identity(candidate), set_name), 0)
            if end > before:
                advance(end - before)
                asked[identity(candidate), set_name] = end
        return [score(candidate, set_name, end) for candidate in candidates]

    return together


def identity(candidate: Candidate) -> tuple:
    """What tells candidates apart: their heads, alpha and exponent (k is only how the heads were found)."""
    return tuple(candidate.heads), candidate.alpha, candidate.generated_exponent


def ignore(answers: int) -> None:
    """An ``Advance`` for a race nobody watches."""


def race_work(candidates: int, sizes: Mapping[str, int], batch: int, schedule: Schedule = DEFAULT_SCHEDULE) -> int:
    """The answers a race of ``candidates`` asks for when no tie holds a candidate back at a cut (a progress
    bar's total: each tie kept adds that candidate's next answers)."""
    work, answered_before, left = 0, 0, candidates
    for ends in race_rounds(sizes, batch, schedule.first_share):
        total = sum(ends.values())
        work += left * (total - answered_before)
        answered_before = total
        left = math.ceil(left * schedule.keep)
    return work


def race_rounds(sizes: Mapping[str, int], batch: int, first_share: float = DEFAULT_SCHEDULE.first_share
                ) -> list[dict[str, int]]:
    """The prefix each round's survivors have answered, per dev set: doubling, in whole batches, ending whole."""
    if not 0 < first_share <= 1:
        raise ValueError(f"first_share must be in (0, 1], got {first_share}")
    rounds, share = [], first_share
    while True:
        ends = {name: min(size, math.ceil(size * share / batch) * batch) for name, size in sizes.items()}
        if not rounds or ends != rounds[-1]:
            rounds.append(ends)
        if all(end == sizes[name] for name, end in ends.items()):
            return rounds
        share *= 2


def rank(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Best first: those that answered more dev examples, then by objective (ties: fewer heads, smaller alpha,
    the exponent closest to 1), so that a candidate dropped early never outranks one scored on the whole split."""
    return sorted(candidates, key=lambda c: (-answered(c), -c.objective, len(c.heads), c.alpha,
                                             abs(c.generated_exponent - 1)))


def answered(candidate: Candidate) -> int:
    """Dev examples this candidate answered (over all dev sets)."""
    return sum(int(metrics["n"]) for metrics in candidate.dev.values())


def race(candidates: Sequence[Candidate], sizes: Mapping[str, int], score: Score, batch: int,
         schedule: Schedule = DEFAULT_SCHEDULE, advance: Advance = ignore) -> list[Candidate]:
    """Every candidate ranked (``rank``): the last round's on the whole dev split, the others on what they reached.

    ``sizes``: each dev set's length; ``score`` answers the prefixes ``race_rounds`` gives, growing, each round's
    survivors together."""
    survivors, dropped = list(candidates), []
    for ends in race_rounds(sizes, batch, schedule.first_share):
        scored = rank(tallied(survivors, ends, score, advance))
        keep = math.ceil(len(scored) * schedule.keep) if ends != dict(sizes) else len(scored)
        while keep < len(scored) and tied(scored[keep], scored[keep - 1]):
            keep += 1  # a tie at the cut is no evidence: both go on
        survivors, dropped = scored[:keep], scored[keep:] + dropped
    return rank(survivors + dropped)


def tallied(candidates: Sequence[Candidate], ends: Mapping[str, int], score: Score, advance: Advance = ignore
            ) -> list[Candidate]:
    """``candidates`` with their tallies on the first ``ends[name]`` examples of each dev set."""
    by_set = {name: score(candidates, name, end, advance) for name, end in ends.items()}
    return [with_tallies(c, {name: tallies[i] for name, tallies in by_set.items()}) for i, c in enumerate(candidates)]


def tied(one: Candidate, other: Candidate) -> bool:
    """Equal objectives on the same answers (floating point: hit rates summed in another order)."""
    return answered(one) == answered(other) and math.isclose(one.objective, other.objective, abs_tol=1e-9)


def with_tallies(candidate: Candidate, tallies: Mapping[str, Tally]) -> Candidate:
    return replace(candidate, dev={name: {"acc": t.acc_rate, "rep": t.rep_rate, "n": t.n}
                                   for name, t in tallies.items()})
