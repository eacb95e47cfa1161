"""Profiler speed: the batched scorer against the plain loop (one forward per head per example).

The batched scorer runs in full, every head of every layer on every task, and
saves its scores as a ``pasta-rag profile`` checkpoint, so the profile command
that follows reuses them. The plain loop costs the same for every layer (a full
forward per head per example), so it runs on one layer and is multiplied by
the number of layers; on that layer both scorers' results are compared.

    python benchmarks/profile_speed.py --model default \
        --train benchmarks/data/train/conflicts.jsonl --train benchmarks/data/train/json.jsonl \
        --train benchmarks/data/train/pronouns.jsonl \
        --checkpoint benchmarks/results/profile_smollm2.partial.json \
        --out benchmarks/results/profile_speed_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from pasta_rag import PastaModel
from pasta_rag.research.bench import machine
from pasta_rag.research.evaluation import read_examples
from pasta_rag.research.profiling import Checkpoint, profile_tasks, scoring_row

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the plain loop is a test reference
from reference import score_heads_plainly


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--train", type=Path, action="append", required=True, help="one task's file; repeat")
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--plain-layer", type=int, default=None, help="layer the plain loop runs on (default: middle)")
    parser.add_argument("--checkpoint", type=Path, required=True, help="fresh profile checkpoint to write")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    model = PastaModel.from_pretrained(args.model)
    tasks = {path.stem: read_examples(path)[0] for path in args.train}
    if args.checkpoint.exists():
        args.checkpoint.unlink()  # time the whole run, not a resumed one

    started = time.perf_counter()
    batched = profile_tasks(model, tasks, args.alpha, Checkpoint.open(args.checkpoint, model.name, args.alpha))
    batched_s = time.perf_counter() - started

    layer = model.num_layers // 2 if args.plain_layer is None else args.plain_layer
    started = time.perf_counter()
    plain = {
        name: score_heads_plainly(model, [scoring_row(model, e) for e in examples], args.alpha, layers=[layer])
        for name, examples in tasks.items()
    }
    plain_layer_s = time.perf_counter() - started
    plain_s = plain_layer_s * model.num_layers

    differences = {name: float((batched[name][layer] - plain[name][layer]).abs().max()) for name in tasks}
    same_order = {
        name: batched[name][layer].argsort().tolist() == plain[name][layer].argsort().tolist() for name in tasks
    }
    report = {
        "model": model.name,
        "machine": f"{machine(str(model.device))}, {torch.get_num_threads()} threads, float32",
        "heads": model.num_layers * model.num_heads,
        "tasks": {name: len(examples) for name, examples in tasks.items()},
        "batched_s": round(batched_s, 1),
        "plain_s_estimated": round(plain_s, 1),
        "plain_one_layer_s": round(plain_layer_s, 1),
        "plain_layer": layer,
        "speedup": round(plain_s / batched_s, 2),
        "max_score_difference_on_plain_layer": differences,
        "same_head_order_on_plain_layer": same_order,
        "command": "python benchmarks/profile_speed.py " + " ".join(
            f"--train {p}" for p in args.train) + f" --model {args.model} --checkpoint {args.checkpoint} "
        f"--out {args.out}",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
