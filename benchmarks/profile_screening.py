"""Screening against exact scores: how well attribution patching ranks heads, and the time it saves.

Two comparisons, on the default model:

* ``--same-examples N``: the first N examples of each task (``--tasks``), scored both ways and timed: the exact
  batched profiler (every head steered alone) and screening (one doubled forward and one backward per chunk).
  Besides rank agreement, ``recall_in_pool`` says what rescoring needs: the share of the exact top-k heads that are
  among the screened top (m x k), which rescoring then puts in their exact order.
* default: screening against the exact scores already in each shipped head set's metadata (``head_scores``, from
  the full training sets), for the first ``--examples`` examples of each job's tasks; the set that screening +
  rescoring would select is read off the exact table restricted to the candidates (rescoring gives them exactly
  those scores).

    python benchmarks/profile_screening.py --model default --same-examples 4 --tasks conflicts,json \
        --out benchmarks/results/profile_screening_smollm2.json
    python benchmarks/profile_screening.py --model default --examples 8 \
        --out benchmarks/results/profile_screening_smollm2_shipped.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from pasta_rag import PastaModel
from pasta_rag.heads import shipped_head_set
from pasta_rag.research.bench import machine
from pasta_rag.research.profiling import (
    JOBS,
    intersect_top_k,
    score_heads,
    scoring_row,
    screen_heads,
    shipped_tasks,
    top_k,
)
from pasta_rag.research.profiling.screening import METHODS, candidate_heads, spearman, top_k_overlap


def exact_table(scores: dict[str, list[float]], shape: tuple[int, int]) -> torch.Tensor:
    table = torch.full(shape, math.nan)
    for layer, row in scores.items():
        table[int(layer)] = torch.tensor([math.nan if s is None else s for s in row])
    return table


def only(table: torch.Tensor, pairs: list[tuple[int, int]]) -> torch.Tensor:
    """The table with every head but ``pairs`` unscored (what rescoring the candidates yields)."""
    kept = torch.full_like(table, math.nan)
    for pair in pairs:
        kept[pair] = table[pair]
    return kept


def same_examples(model: PastaModel, names: list[str], count: int, alpha: float, ks: list[int]) -> dict:
    """Both scorers on the same rows, timed."""
    results = {}
    for name in names:
        rows = [scoring_row(model, e) for e in shipped_tasks("train", (name,))[name][:count]]
        screened, seconds = {}, {}
        for method in METHODS:
            started = time.perf_counter()
            screened[method] = screen_heads(model, rows, alpha, method=method)
            seconds[method] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        exact = score_heads(model, rows, alpha)
        results[name] = {
            "n": len(rows), "tokens_per_row": round(sum(len(r.input_ids) for r in rows) / len(rows)),
            "exact_s": round(time.perf_counter() - started, 1),
            **{method: {
                "screening_s": seconds[method],
                "spearman": round(spearman(scores, exact), 3),
                "top_k_overlap": {str(k): round(top_k_overlap(scores, exact, k), 3) for k in ks},
                "recall_in_pool": {f"{m}x{k}": round(len(set(top_k(exact, k)) & set(top_k(scores, m * k))) / k, 3)
                                   for k in ks for m in (2, 3, 4)},
            } for method, scores in screened.items()},
        }
        print(json.dumps({name: results[name]}), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--examples", type=int, default=None, help="screen only the first N examples of each task")
    parser.add_argument("--same-examples", type=int, default=None, help="score N examples both ways, timed")
    parser.add_argument("--tasks", default="conflicts,json", help="with --same-examples: shipped train tasks")
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--ks", default="10,30", help="with --same-examples: top-k sizes compared")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    model = PastaModel.from_pretrained(args.model)
    shape = (model.num_layers, model.num_heads)
    report: dict = {"model": model.name, "machine": f"{machine(str(model.device))}, {torch.get_num_threads()} threads",
                    "command": " ".join(["python", *sys.argv])}
    if args.same_examples:
        started = time.perf_counter()
        report["alpha"] = args.alpha
        report["tasks"] = same_examples(model, args.tasks.split(","), args.same_examples, args.alpha,
                                        [int(k) for k in args.ks.split(",")])
        report["seconds"] = round(time.perf_counter() - started, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        return
    report["jobs"] = {}
    for purpose, job in JOBS.items():
        shipped = shipped_head_set(model.name, purpose)
        if shipped is None or "head_scores" not in shipped.metadata:
            continue
        alpha, k = shipped.metadata["profile_alpha"], shipped.metadata["k"]
        tasks = shipped_tasks("train", job.train)
        exact, screened, seconds = {}, {}, {}
        for name, examples in tasks.items():
            examples = examples[: args.examples] if args.examples else examples
            rows = [scoring_row(model, example) for example in examples]
            started = time.perf_counter()
            screened[name] = screen_heads(model, rows, alpha)
            seconds[name] = round(time.perf_counter() - started, 1)
            exact[name] = exact_table(shipped.metadata["head_scores"][name], shape)
        exact_set = intersect_top_k(exact, k)
        entry: dict = {"profile_alpha": alpha, "shipped_k": k, "exact_set_size": len(exact_set), "per_task": {},
                       "by_candidates": {}}
        for name in tasks:
            entry["per_task"][name] = {
                "n": len(tasks[name][: args.examples] if args.examples else tasks[name]),
                "screening_s": seconds[name],
                "spearman": round(spearman(screened[name], exact[name]), 3),
                **{f"top{n}_overlap": round(top_k_overlap(screened[name], exact[name], n), 3) for n in (10, 30, k)},
            }
        for multiple in (2, 3, 4):
            pool = candidate_heads(screened, multiple * k)
            rescored = {name: only(exact[name], pool) for name in tasks}
            chosen = intersect_top_k(rescored, k)
            entry["by_candidates"][f"{multiple}x k"] = {
                "candidates": len(pool), "of_heads": model.num_layers * model.num_heads,
                "selected_equals_exact": chosen == exact_set,
                "selected_overlap": round(len(set(chosen) & set(exact_set)) / max(1, len(exact_set)), 3),
            }
        report["jobs"][purpose] = entry
        print(json.dumps({purpose: entry}, indent=2), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
