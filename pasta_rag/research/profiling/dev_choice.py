"""The dev choice, in two stages: k and alpha at one exponent, then the other exponents at the best few.

Every (k, alpha, exponent) at once would multiply the grid by the exponents;
the exponent is tried second, at the (k, alpha) candidates that did best
without it. More than one of them: the best at exponent 1 is not always the
best once generated keys are steered less, so stopping at the single best can
lose a set that gains more from its exponent. Each stage is either raced
(``racing``) or answered in full on the whole dev split (the reference); this
module is the one place that order is written, for ``pasta-rag profile`` and
for the benchmarks that judge it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .racing import DEFAULT_SCHEDULE, Schedule, Score, race, race_work, rank, tallied

if TYPE_CHECKING:  # selection chooses through this module, so it imports it
    from .selection import Candidate

FINALISTS = 2
"""The (k, alpha) candidates, best first after the first stage, whose other exponents are tried."""

Stage = Callable[[str, int], Callable[[int], None]]
"""Opens a progress stage (what it does, the answers it asks for with no tie) and returns what advances it."""


@dataclass(frozen=True)
class DevChoice:
    ranked: list[Candidate]
    """Every candidate of both stages, best first (``racing.rank``)."""
    answers: int
    """Dev answers asked for, each (candidate, example) once."""


def dev_choice(
    grid: Sequence[Candidate],
    exponents: Sequence[float],
    sizes: Mapping[str, int],
    score: Score,
    batch: int,
    racing: bool,
    finalists: int = FINALISTS,
    stage: Stage | None = None,
    schedule: Schedule = DEFAULT_SCHEDULE,
) -> DevChoice:
    """``grid`` (one exponent) ranked on dev, then ``exponents`` tried at its best ``finalists`` (k, alpha).

    ``sizes``: each dev set's length; ``score`` answers candidates on a prefix of a dev set (``racing.Score``),
    in batches of ``batch``; ``answers`` counts each (candidate, example) it was asked for once."""
    if finalists < 1:
        raise ValueError(f"finalists must be at least 1, got {finalists}")
    answers = 0
    how = "racing" if racing else "choosing"

    def judged(pool: Sequence[Candidate], what: str) -> list[Candidate]:
        work = race_work(len(pool), sizes, batch, schedule) if racing else len(pool) * sum(sizes.values())
        bar = stage(f"{how} {what} on dev", work) if stage else None

        def advance(n: int) -> None:
            nonlocal answers
            answers += n
            if bar:
                bar(n)

        if racing:
            return race(pool, sizes, score, batch, schedule, advance)
        return rank(tallied(pool, sizes, score, advance))

    first = judged(grid, "k and alpha")
    tried = {c.generated_exponent for c in grid}
    second = [replace(best, dev={}, generated_exponent=exponent)
              for best in first[:finalists] for exponent in exponents if exponent not in tried]
    ranked = rank(first + judged(second, "generated_alpha")) if second else first
    return DevChoice(ranked, answers)
