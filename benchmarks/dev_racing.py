"""Racing the dev choice against the full grid: which candidate it keeps, and the dev work it saves.

The dev choice (greedy answers of every (k, alpha) candidate on every dev example) is most of a profile's time.
This benchmark first records, for every candidate of one job's full grid, the outcome of each batch of dev
examples (acc and rep hits, seconds), exactly as ``choose_heads`` scores them: same batches, same steering. Then
it runs the library's race (``pasta_rag.research.profiling.racing``) on those recorded outcomes, so the race is
judged against the full grid on the very same answers: the candidate it keeps, that candidate's full-dev
objective against the grid's best, and the share of the dev work it needed: answers, and seconds estimated from
the median batch of each dev set (a long-context batch costs several short ones).

The grid: the job's alphas at the top-k sizes ``default_ks`` gives for the exact scores in the model's shipped
head set (``head_scores``), then the job's generated exponents at the best ``FINALISTS`` (k, alpha) of the grid
and of the race (the library's ``dev_choice``, on answers recorded as they are asked for). ``--out`` is
rewritten after every batch, and a rerun resumes from it.

    python benchmarks/dev_racing.py --model default --job context --out benchmarks/results/dev_racing_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from pasta_rag import PastaModel
from pasta_rag.research.bench import machine
from pasta_rag.research.evaluation import evaluate
from pasta_rag.research.profiling import JOBS, intersect_top_k, shipped_tasks
from pasta_rag.research.profiling.dev_choice import FINALISTS, dev_choice
from pasta_rag.research.profiling.racing import Tally, answered, one_at_a_time, rank, with_tallies
from pasta_rag.research.profiling.selection import Candidate, candidate_model, default_ks

BATCH = 8
"""``evaluate``'s batch: recording batch by batch gives the answers a whole-set run gives."""


def name_of(candidate: Candidate) -> str:
    return f"k={candidate.k} alpha={candidate.alpha} exponent={candidate.generated_exponent}"


def exact_scores(model: PastaModel, purpose: str) -> dict[str, torch.Tensor]:
    head_set = model.own_head_set(purpose)
    if head_set is None or "head_scores" not in head_set.metadata:
        sys.exit(f"{model.name} has no {purpose} head set with exact head_scores to build the grid from.")
    return {task: torch.tensor([[math.nan if s is None else s for s in rows[str(layer)]] for layer in range(len(rows))])
            for task, rows in head_set.metadata["head_scores"].items()}


def answer_batches(model: PastaModel, candidate: Candidate, examples: list, done: list[dict], end: int,
                   steer_generated: bool, saved: Callable[[], None], label: str) -> None:
    """The batches of ``examples`` up to ``end`` that ``done`` lacks, answered by ``candidate`` in ``evaluate``'s
    batches and appended to ``done`` (acc and rep hits, seconds); ``saved`` is called after each."""
    steered = None
    for start in range(len(done) * BATCH, end, BATCH):
        steered = steered or candidate_model(model, candidate, steer_generated)
        chunk = examples[start:start + BATCH]
        started = time.perf_counter()
        metrics = next(iter(evaluate(steered, chunk, ["pasta"], batch_size=BATCH, es=False)["pasta"].values()))
        seconds = time.perf_counter() - started
        done.append({"acc": round(metrics["acc"] * len(chunk)), "rep": round(metrics["rep"] * len(chunk)),
                     "n": len(chunk), "s": round(seconds, 2)})
        saved()
        print(f"{label} {start + len(chunk)}/{len(examples)} {seconds:.1f} s", file=sys.stderr, flush=True)


def tally(batches: list[dict], end: int) -> Tally:
    """The hits on the first ``end`` examples of a dev set, summed from its recorded batches."""
    prefix = batches[: math.ceil(end / BATCH)]
    return Tally(sum(b["acc"] for b in prefix), sum(b["rep"] for b in prefix), sum(b["n"] for b in prefix))


def recorder(model: PastaModel, dev_sets: dict, steer_generated: bool, results: dict, out: Path,
             key: Callable[[Candidate], str]) -> Callable[[Candidate, str, int], Tally]:
    """A candidate's tally (a dev choice's ``score`` through ``racing.one_at_a_time``): a prefix's recorded batches (``results["batches"][key][set]``), answering and
    saving only those not yet recorded, so a rerun resumes and a candidate asked twice is answered once."""

    def score(candidate: Candidate, set_name: str, end: int) -> Tally:
        done = results["batches"].setdefault(key(candidate), {}).setdefault(set_name, [])
        answer_batches(model, candidate, dev_sets[set_name], done, end, steer_generated,
                       lambda: out.write_text(json.dumps(results, indent=1)), f"{key(candidate)} {set_name}")
        return tally(done, end)

    return score


def answers_by_set(ranked: list[Candidate]) -> dict[str, int]:
    """The dev answers a choice asked for, per dev set: each candidate answered the prefix its tally reached."""
    return {name: sum(int(c.dev[name]["n"]) for c in ranked) for name in ranked[0].dev}


def batch_seconds(results: dict) -> dict[str, float]:
    """Per dev set, the median seconds of a batch over every recorded one: robust to a busy moment of the cores."""
    times: dict[str, list[float]] = {}
    for by_set in results["batches"].values():
        for set_name, batches in by_set.items():
            times.setdefault(set_name, []).extend(b["s"] for b in batches if b["n"] == BATCH)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--job", default="context", choices=sorted(JOBS))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    job = JOBS[args.job]
    model = PastaModel.from_pretrained(args.model)
    dev_sets = shipped_tasks("dev", job.dev)
    scores = exact_scores(model, job.purpose)
    ks = default_ks(scores)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results |= {"command": "python " + " ".join(sys.argv), "model": model.name, "job": job.purpose,
                "machine": f"{machine(str(model.device))}, {torch.get_num_threads()} threads",
                "batch": BATCH, "ks": ks, "alphas": list(job.alphas),
                "dev_sizes": {name: len(examples) for name, examples in dev_sets.items()}}
    results.setdefault("batches", {})

    grid = [Candidate(k, alpha, intersect_top_k(scores, k), {}) for k in ks for alpha in job.alphas]
    sizes = {name: len(examples) for name, examples in dev_sets.items()}
    tally_one = recorder(model, dev_sets, job.steer_generated, results, args.out, name_of)
    # The exact path (every candidate on the whole dev split), then the raced one on the same recorded answers.
    exact = dev_choice(grid, job.generated_exponents, sizes, one_at_a_time(tally_one), BATCH, racing=False)
    raced = dev_choice(grid, job.generated_exponents, sizes, one_at_a_time(tally_one), BATCH, racing=True)
    exact_objective = exact.ranked[0].objective
    raced_objective = with_tallies(raced.ranked[0], {name: tally_one(raced.ranked[0], name, size)
                                                     for name, size in sizes.items()}).objective
    median = batch_seconds(results)

    def seconds(answers: dict[str, int]) -> float:
        return sum(count / BATCH * median[name] for name, count in answers.items())

    exact_seconds, raced_seconds = seconds(answers_by_set(exact.ranked)), seconds(answers_by_set(raced.ranked))
    whole = {name_of(c): c for c in exact.ranked}
    for candidate in raced.ranked:  # the race's exponent candidates, on the whole split too, to list them all
        if name_of(candidate) not in whole and answered(candidate) == sum(sizes.values()):
            whole[name_of(candidate)] = candidate
    results["summary"] = {
        "finalists": FINALISTS,
        "exact": {"pick": name_of(exact.ranked[0]), "objective": round(exact_objective, 4), "answers": exact.answers,
                  "estimated_s": round(exact_seconds)},
        "raced": {"pick": name_of(raced.ranked[0]), "objective": round(raced_objective, 4), "answers": raced.answers,
                  "estimated_s": round(raced_seconds)},
        "objective_gap": round(exact_objective - raced_objective, 4),
        "answer_share": round(raced.answers / exact.answers, 3),
        "time_share": round(raced_seconds / exact_seconds, 3),
        "median_batch_s": {name: round(value, 2) for name, value in median.items()},
        "full_dev_objectives": {name_of(c): round(c.objective, 4) for c in rank(list(whole.values()))},
    }
    args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results["summary"], indent=1))


if __name__ == "__main__":
    main()
