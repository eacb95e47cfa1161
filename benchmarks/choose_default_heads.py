"""Compare candidate head sets for a model on a small dev set of knowledge conflicts.

Each example's context contradicts what the model knows; a steered answer
should follow the context. Greedy answers (24 new tokens) are counted as
following the context when they contain target_new and not target_true, and
as looping when a word 4-gram occurs three or more times.

    python benchmarks/choose_default_heads.py --model default --out benchmarks/results/heads_smollm2.json
    python benchmarks/choose_default_heads.py --model default --bands 15-21,22-29,18-25,24-29 \
        --out benchmarks/results/heads_smollm2_round2.json
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import Counter
from pathlib import Path

from pasta_rag import HeadSet, PastaModel, emphasize

DATA = Path(__file__).parent / "data" / "conflicts_dev.jsonl"


def loops(text: str) -> bool:
    words = re.findall(r"\w+", text.lower())
    grams = Counter(tuple(words[i : i + 4]) for i in range(len(words) - 3))
    return bool(grams) and max(grams.values()) >= 3


def follows_context(answer: str, example: dict) -> bool:
    text = answer.lower()
    return example["target_new"].lower() in text and example["target_true"].lower() not in text


def messages(example: dict) -> list[dict]:
    content = f"Context: {emphasize(example['context'])}\nQuestion: {example['question']}"
    return [{"role": "user", "content": content}]


def candidates(num_layers: int, bands: str | None) -> dict[str, HeadSet | None]:
    """Bands of whole layers: the given ones ("15-21,22-29"), else halves, quarters and the whole model."""
    if bands:
        ranges = [tuple(int(x) for x in band.split("-")) for band in bands.split(",")]
        named = {f"layers {a}-{b}": HeadSet.from_layers(range(a, b + 1)) for a, b in ranges}
        return {"none": None, **named}
    half, quarter = num_layers // 2, num_layers // 4
    bands = {
        "none": None,
        f"layers {half}-{num_layers - 1}": range(half, num_layers),
        f"layers {quarter}-{half - 1}": range(quarter, half),
        f"layers {half}-{half + quarter - 1}": range(half, half + quarter),
        f"layers {half + quarter}-{num_layers - 1}": range(half + quarter, num_layers),
        f"layers {quarter}-{num_layers - quarter - 1}": range(quarter, num_layers - quarter),
        f"all {num_layers} layers": range(num_layers),
    }
    return {name: None if layers is None else HeadSet.from_layers(layers) for name, layers in bands.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--bands", help='comma-separated layer ranges to compare, e.g. "15-21,22-29"')
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    model = PastaModel.from_pretrained(args.model, heads=[0])
    examples = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    results = {}
    for name, heads in candidates(model.num_layers, args.bands).items():
        started = time.perf_counter()
        answers = [
            model.generate(messages(e), steer=heads is not None, heads=heads, alpha=args.alpha, max_new_tokens=24).text
            for e in examples
        ]
        results[name] = {
            "layers": None if heads is None else sorted(heads.all_heads_of),
            "acc": sum(follows_context(a, e) for a, e in zip(answers, examples)) / len(examples),
            "rep": sum(loops(a) for a in answers) / len(examples),
            "n": len(examples),
            "seconds": round(time.perf_counter() - started, 1),
            "answers": answers,
        }
        print(f"{name:>22}: acc {results[name]['acc']:.2f}  rep {results[name]['rep']:.2f}", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        report = {"model": model.name, "alpha": args.alpha, "data": str(DATA.name), "results": results}
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
