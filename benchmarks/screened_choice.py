"""Screening + rescoring + race against the exact profiler, end to end: the head set each path chooses on dev.

``profile_screening.py`` judges screening by rank agreement; what a user gets is the head set chosen on dev.
This benchmark follows both paths of ``pasta-rag profile`` for one job:

* exact (``--exact``): every head scored exactly (the shipped set's ``head_scores``), the ``default_ks`` x alpha
  grid answered on the whole dev split (``--exact-choice full``, the reference) or raced, then the exponents.
* screened (the default): every head screened at once on the job's whole training sets (the library's
  ``screen_tasks``, run here), the first ``candidates x largest k`` heads in screened order rescored exactly.
  Rescoring gives a head exactly its ``head_scores`` entry (the batched profiler is deterministic), so the
  screened path's scores are the exact table with every head outside the pool unscored. Its own ``default_ks``
  grid is raced, then the exponents at the race's best, as ``profile_head_set`` does.

Dev answers are recorded per batch and keyed by the head set, alpha and exponent, so a head set both paths try
is answered once; ``--reuse`` takes the answers recorded by ``dev_racing.py`` for the same model and job.
Both paths' picks are then judged on their whole-dev objective. ``--out`` is rewritten after every batch, and
a rerun resumes from it.

    python benchmarks/screened_choice.py --model default --job context \
        --reuse benchmarks/results/dev_racing_smollm2.json --out benchmarks/results/screened_choice_smollm2.json
    python benchmarks/screened_choice.py --model gemma3-270m --job context --exact-choice race \
        --out benchmarks/results/screened_choice_gemma3.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from dev_racing import BATCH, answer_batches, exact_scores, tally
from profile_screening import only

from pasta_rag import PastaModel
from pasta_rag.research.bench import machine
from pasta_rag.research.profiling import JOBS, intersect_top_k, shipped_tasks, top_k
from pasta_rag.research.profiling.racing import Tally, race, rank, with_tallies
from pasta_rag.research.profiling.screening import rescoring_pool, screen_tasks, spearman
from pasta_rag.research.profiling.selection import Candidate, candidate_pool, default_ks

Score = Callable[[Candidate, str, int], Tally]


def key_of(candidate: Candidate) -> str:
    """What decides a candidate's answers: its heads, alpha and exponent (not its k)."""
    return f"{sorted(map(tuple, candidate.heads))} alpha={candidate.alpha} exponent={candidate.generated_exponent}"


def label(candidate: Candidate) -> dict:
    return {"k": candidate.k, "heads": len(candidate.heads), "alpha": candidate.alpha,
            "exponent": candidate.generated_exponent}


def reused_batches(path: Path, scores: dict[str, torch.Tensor]) -> dict[str, dict]:
    """``dev_racing.py``'s recorded batches (named by k on the exact scores), keyed by head set instead."""
    batches = {}
    for name, by_set in json.loads(path.read_text())["batches"].items():
        k, alpha, exponent = (float(part.split("=")[1]) for part in name.split())
        batches[key_of(Candidate(int(k), alpha, intersect_top_k(scores, int(k)), {}, exponent))] = by_set
    return batches


def recorder(model: PastaModel, dev_sets: dict, steer_generated: bool, results: dict, out: Path,
             asked: dict[tuple[str, str], int], path_name: str) -> Score:
    """A race's ``score``: the recorded batches of a prefix, answering (and saving) only those not yet recorded;
    ``asked`` keeps the longest prefix asked of each (candidate, dev set)."""

    def score(candidate: Candidate, set_name: str, end: int) -> Tally:
        key = key_of(candidate)
        asked[(key, set_name)] = max(asked.get((key, set_name), 0), end)
        done = results["batches"].setdefault(key, {}).setdefault(set_name, [])
        answer_batches(model, candidate, dev_sets[set_name], done, end, steer_generated,
                       lambda: out.write_text(json.dumps(results, indent=1)),
                       f"{path_name} {label(candidate)} {set_name}")
        return tally(done, end)

    return score


def choose(scores: dict[str, torch.Tensor], ks: list[int], job, sizes: dict[str, int], score: Score,
           racing: bool) -> Candidate:
    """The pick of ``profile_head_set``'s dev choice: the k x alpha grid, then the exponents at its best."""

    def full(pool: list[Candidate]) -> list[Candidate]:
        return rank([with_tallies(c, {name: score(c, name, size) for name, size in sizes.items()}) for c in pool])

    def choice(pool: list[Candidate]) -> list[Candidate]:
        return race(pool, sizes, score, BATCH) if racing else full(pool)

    first = choice(candidate_pool(scores, ks, job.alphas, [1.0]))
    best = first[0]
    exponents = [Candidate(best.k, best.alpha, best.heads, {}, e) for e in job.generated_exponents if e != 1.0]
    return rank(first + choice(exponents))[0]


def screening_summary(exact: dict[str, torch.Tensor], screened: dict[str, torch.Tensor], pool: list,
                      ks: list[int]) -> dict:
    """Per task: Spearman of the screened ranking against the exact one, and of the exact top-k, how many are in the
    rescoring pool."""
    pooled = set(pool)
    return {task: {"spearman": round(spearman(screened[task], table), 3),
                   "exact_top_k_in_pool": {k: sum(pair in pooled for pair in top_k(table, k)) for k in ks}}
            for task, table in exact.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--job", default="context", choices=sorted(JOBS))
    parser.add_argument("--candidates", type=float, default=2.0, help="the rescored pool: this x the largest k")
    parser.add_argument("--exact-choice", choices=("full", "race"), default="full",
                        help="the exact path's dev choice (pasta-rag profile --exact answers in full)")
    parser.add_argument("--reuse", type=Path, help="dev_racing.py's results for the same model and job")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    job = JOBS[args.job]
    model = PastaModel.from_pretrained(args.model)
    dev_sets = shipped_tasks("dev", job.dev)
    sizes = {name: len(examples) for name, examples in dev_sets.items()}
    exact = exact_scores(model, job.purpose)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results |= {"command": "python " + " ".join(sys.argv), "model": model.name, "job": job.purpose,
                "machine": f"{machine(str(model.device))}, {torch.get_num_threads()} threads", "batch": BATCH,
                "dev_sizes": sizes}
    batches = results.setdefault("batches", {})
    if args.reuse:
        for key, by_set in reused_batches(args.reuse, exact).items():
            batches.setdefault(key, by_set)

    if "screened" not in results:
        started = time.perf_counter()
        screened = screen_tasks(model, shipped_tasks("train", job.train), 0.01)
        results["screened"] = {"seconds": round(time.perf_counter() - started, 1),
                               "scores": {task: table.tolist() for task, table in screened.items()}}
        args.out.write_text(json.dumps(results, indent=1))
    screened = {task: torch.tensor(table) for task, table in results["screened"]["scores"].items()}
    pool = rescoring_pool(screened, args.candidates, max(default_ks(screened)))
    rescored = {task: only(table, pool) for task, table in exact.items()}

    picks = {}
    ks = {"exact": default_ks(exact), "screened": default_ks(rescored)}
    for path_name, scores, racing in (("exact", exact, args.exact_choice == "race"), ("screened", rescored, True)):
        asked: dict[tuple[str, str], int] = {}
        score = recorder(model, dev_sets, job.steer_generated, results, args.out, asked, path_name)
        pick = choose(scores, ks[path_name], job, sizes, score, racing)
        whole = with_tallies(pick, {name: score(pick, name, size) for name, size in sizes.items()})
        picks[path_name] = label(pick) | {"objective": round(whole.objective, 4), "ks": ks[path_name],
                                          "dev_answers": sum(asked.values())}

    exact_grid = {key_of(c) for c in candidate_pool(exact, ks["exact"], job.alphas, [1.0])}
    screened_grid = {key_of(c) for c in candidate_pool(rescored, ks["screened"], job.alphas, [1.0])}
    layers, heads = next(iter(exact.values())).shape
    pooled = set(pool)
    results["summary"] = {
        "heads": layers * heads, "rescored": len(pool),
        "left_out": [[layer, head] for layer in range(layers) for head in range(heads) if (layer, head) not in pooled],
        "screening_s": results["screened"]["seconds"],
        "ranking": screening_summary(exact, screened, pool, ks["exact"]),
        "grid_candidates_shared": f"{len(exact_grid & screened_grid)} of {len(screened_grid)}",
        "exact": picks["exact"] | {"dev_choice": args.exact_choice},
        "screened": picks["screened"] | {"dev_choice": "race"},
        "objective_gap": round(picks["exact"]["objective"] - picks["screened"]["objective"], 4),
    }
    args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results["summary"], indent=1))


if __name__ == "__main__":
    main()
