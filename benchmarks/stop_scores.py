"""Per-head stop scores: how much steering one head alone keeps the model from ending its turn.

A steered model that writes the right answer and then repeats it has lost the wish to stop. Each
conflict record's ``answer`` is the complete sentence that follows the context; its stop row is the
prompt plus that sentence, scored on the log-odds of the token that ends the turn (``stop_row``).
A head's score is the mean change of that log-odds when it alone is steered: negative = the head
makes the model go on talking. Scored like ``pasta-rag profile`` scores its tasks (same batching,
resumable through ``--checkpoint``).

    python benchmarks/stop_scores.py --model default \
        --train benchmarks/data/train/conflicts.jsonl --train benchmarks/data/train/conflicts_long.jsonl \
        --out benchmarks/results/stop_scores_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pasta_rag import PastaModel
from pasta_rag.research.bench import machine
from pasta_rag.research.evaluation import read_examples
from pasta_rag.research.profiling import Checkpoint, profile_tasks, stop_row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--train", type=Path, action="append", required=True, help="a conflict set; repeat")
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--checkpoint", type=Path, help="progress file (default: OUT with .partial.json)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    model = PastaModel.from_pretrained(args.model)
    tasks = {path.stem: read_examples(path)[0] for path in args.train}
    checkpoint = Checkpoint.open(args.checkpoint or args.out.with_suffix(".partial.json"), model.name, args.alpha)
    started = time.perf_counter()
    scores = profile_tasks(model, tasks, args.alpha, checkpoint, row=stop_row)
    report = {
        "model": model.name,
        "alpha": args.alpha,
        "what": "per head (layer -> heads): mean change, when that head alone is steered, of the log-odds of "
        "ending the turn right after the record's complete answer (its 'answer' field); negative = the head "
        "keeps the model from ending its turn (looping)",
        "tasks": {
            name: {str(layer): [float(s) for s in table[layer]] for layer in range(table.shape[0])}
            for name, table in scores.items()
        },
        "n": {name: len(examples) for name, examples in tasks.items()},
        "seconds": round(time.perf_counter() - started, 1),
        "machine": f"{machine(str(model.device))}, {torch.get_num_threads()} threads, float32",
        "command": "python benchmarks/stop_scores.py --model " + args.model
        + "".join(f" --train {path}" for path in args.train) + f" --out {args.out}",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
