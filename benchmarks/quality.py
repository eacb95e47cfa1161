"""The README's quality table: none / marked / cad / pasta on every task set of a split.

``pasta`` steers with the model's shipped set for the set's task: the ``context`` set on the
knowledge-conflict sets, the ``instructions`` set on the instruction sets (``--heads`` overrides both).
Each (set, method) result is written as soon as it is measured, so a killed run
resumes where it stopped (delete the output file to start over).

    python benchmarks/quality.py --model default --split test --out benchmarks/results/quality_smollm2_test.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from rich.progress import Progress

from pasta_rag import PastaModel
from pasta_rag.research.bench import machine
from pasta_rag.research.evaluation import evaluate, read_examples, shipped_heads_by_task

SETS = ("conflicts", "conflicts_long", "control", "json", "pronouns")
METHODS = ("none", "marked", "cad", "pasta")


def markdown(report: dict) -> str:
    """One row per task set, one column per method; each cell acc / es / rep (es for conflicts only)."""
    methods = [m for m in METHODS if any(m in by_method for by_method in report["sets"].values())]
    lines = ["| set (n) | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
    for name, by_method in report["sets"].items():
        cells, n = [], 0
        for method in methods:
            metrics = next(iter(by_method[method].values())) if method in by_method else None
            if metrics is None:
                cells.append("")
                continue
            n = metrics["n"]
            figures = [metrics["acc"], metrics.get("es"), metrics["rep"]]
            cells.append(" / ".join(f"{x:.2f}" for x in figures if x is not None))
        kind = "acc / es / rep" if "es" in next(iter(next(iter(by_method.values())).values())) else "acc / rep"
        lines.append(f"| {name} ({n}): {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--split", default="test")
    parser.add_argument("--data", type=Path, default=Path(__file__).parent / "data")
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--heads", default=None, help="one head set file for every set (default: the shipped sets)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    model = PastaModel.from_pretrained(args.model, heads=args.heads)
    by_task = shipped_heads_by_task(model) if args.heads is None else {}
    head_sets = {"knowledge_conflict": model.heads}
    head_sets["instruction"] = model.resolve_heads(by_task["instruction"]) if by_task else model.heads
    report = json.loads(args.out.read_text()) if args.out.exists() else {}
    report.update({
        "model": model.name,
        "head_sets": {
            task: {"heads": len(head_set), "alpha": head_set.metadata.get("alpha", model.alpha),
                   "steer_generated": head_set.metadata.get("steer_generated", model.steer_generated),
                   "generated_alpha": head_set.metadata.get("generated_alpha", model.generated_alpha),
                   "tasks": list(head_set.metadata.get("tasks", {}))}
            for task, head_set in head_sets.items() if head_set is not None
        },
        "machine": f"{machine(str(model.device))}, {torch.get_num_threads()} threads, float32",
        "command": "python " + " ".join(sys.argv),
    })
    report.setdefault("sets", {})
    report.setdefault("seconds", {})
    sets = [s for s in args.sets.split(",") if (args.data / args.split / f"{s}.jsonl").exists()]
    methods = args.methods.split(",")
    with Progress() as progress:
        for name in sets:
            examples, problems = read_examples(args.data / args.split / f"{name}.jsonl")
            if problems:
                raise SystemExit(f"{name}: {problems}")
            for method in methods:
                if method in report["sets"].get(name, {}):
                    continue
                task = progress.add_task(f"{name} / {method}", total=len(examples))
                started = time.perf_counter()
                result = evaluate(model, examples, [method], progress=lambda n, t=task: progress.advance(t, n),
                                  heads=by_task)
                report["seconds"][f"{name}/{method}"] = round(time.perf_counter() - started, 1)
                report["sets"].setdefault(name, {})[method] = result[method]
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))


if __name__ == "__main__":
    main()
