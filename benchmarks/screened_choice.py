"""Screening + rescoring + race against the exact profiler, end to end: the head set each path chooses on dev.

``profile_screening.py`` judges screening by rank agreement; what a user gets is the head set chosen on dev.
This benchmark follows both paths of ``pasta-rag profile`` for one job:

* exact (``--exact``): every head scored exactly (the shipped set's ``head_scores``), the ``default_ks`` x alpha
  grid answered on the whole dev split (``--exact-choice full``, the reference) or raced, then the exponents.
* screened (the default): every head screened at once on the job's whole training sets (the library's
  ``screen_tasks``, run here), the first ``candidates x (the largest head set)`` heads in screened order
  rescored exactly (``rescoring_pool``).
  Rescoring gives a head exactly its ``head_scores`` entry (the batched profiler is deterministic), so the
  screened path's scores are the exact table with every head outside the pool unscored. Its own ``default_ks``
  grid is raced, then the exponents at the race's best ``FINALISTS``: the library's ``dev_choice``, as
  ``pasta-rag profile`` runs it.

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
from pathlib import Path

import torch
from dev_racing import BATCH, exact_scores, recorder
from profile_screening import only

from pasta_rag import PastaModel
from pasta_rag.research.bench import machine
from pasta_rag.research.profiling import JOBS, intersect_top_k, shipped_tasks, top_k
from pasta_rag.research.profiling.dev_choice import FINALISTS, dev_choice
from pasta_rag.research.profiling.racing import one_at_a_time, with_tallies
from pasta_rag.research.profiling.screening import rescoring_pool, screen_tasks, spearman
from pasta_rag.research.profiling.selection import Candidate, candidate_pool, default_ks


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


def screening_summary(exact: dict[str, torch.Tensor], screened: dict[str, torch.Tensor], pool: list,
                      ks: list[int]) -> dict:
    """Per task: Spearman of the screened ranking against the exact one, and of the exact top-k, how many are in the
    rescoring pool; and of each exact head set (the intersection at each k), how many of its heads are."""
    pooled = set(pool)
    tasks = {task: {"spearman": round(spearman(screened[task], table), 3),
                    "exact_top_k_in_pool": {k: sum(pair in pooled for pair in top_k(table, k)) for k in ks}}
             for task, table in exact.items()}
    sets = {k: f"{sum(pair in pooled for pair in intersect_top_k(exact, k))} of {len(intersect_top_k(exact, k))}"
            for k in ks}
    return tasks | {"exact_head_sets_in_pool": sets}


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

    picks, grids = {}, {}
    ks = {"exact": default_ks(exact), "screened": default_ks(rescored)}
    tally_one = recorder(model, dev_sets, job.steer_generated, results, args.out, key_of)
    for path_name, scores, racing in (("exact", exact, args.exact_choice == "race"), ("screened", rescored, True)):
        grids[path_name] = candidate_pool(scores, ks[path_name], job.alphas, [1.0])
        chosen = dev_choice(grids[path_name], job.generated_exponents, sizes, one_at_a_time(tally_one), BATCH, racing)
        pick = chosen.ranked[0]
        whole = with_tallies(pick, {name: tally_one(pick, name, size) for name, size in sizes.items()})
        picks[path_name] = label(pick) | {"objective": round(whole.objective, 4), "ks": ks[path_name],
                                          "dev_answers": chosen.answers}

    exact_grid, screened_grid = ({key_of(c) for c in grids[path]} for path in ("exact", "screened"))
    layers, heads = next(iter(exact.values())).shape
    pooled = set(pool)
    results["summary"] = {
        "heads": layers * heads, "rescored": len(pool), "finalists": FINALISTS,
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
