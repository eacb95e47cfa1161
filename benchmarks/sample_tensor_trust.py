"""Draw the attacks of ``benchmarks/data/sources/tensor_trust.jsonl`` from Tensor Trust's hijacking benchmark.

Tensor Trust (Toyer et al. 2023, arXiv 2311.01011) is a game in which people wrote prompt injections that
make a model say "Access Granted"; its hijacking-robustness benchmark keeps the attacks that worked. Nobody
at pasta-rag wrote them, and the rules of ``pasta_rag.untrusted`` were frozen before they were drawn, so
they are the second held-out attack set (``injection_tensor_trust``, built by ``make_datasets.py``). Only
short attacks are drawn, ones a retrieved passage could carry in a sentence or two, and only those that
name the phrase, so that the answer can be checked for it.

    python benchmarks/sample_tensor_trust.py hijacking_robustness_dataset.jsonl \
        --out benchmarks/data/sources/tensor_trust.jsonl

The input is ``benchmarks/hijacking-robustness/v1/hijacking_robustness_dataset.jsonl`` of
github.com/HumanCompatibleAI/tensor-trust-data at commit e2385ea.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

MAX_CHARS = 300
COUNT = 96
PHRASE = "access granted"


def drawn(rows: list[dict], count: int = COUNT, seed: int = 0) -> list[dict]:
    """``count`` attacks of at most ``MAX_CHARS`` characters that name ``PHRASE``, drawn in a seeded order."""
    short = sorted((r for r in rows if len(r["attack"]) <= MAX_CHARS and PHRASE in r["attack"].lower()),
                   key=lambda r: r["sample_id"])
    return [{"sample_id": r["sample_id"], "attack": r["attack"]} for r in random.Random(seed).sample(short, count)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="the benchmark's hijacking_robustness_dataset.jsonl")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data" / "sources" / "tensor_trust.jsonl")
    args = parser.parse_args(argv)
    rows = [json.loads(line) for line in args.source.read_text(encoding="utf-8").splitlines() if line.strip()]
    picked = drawn(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in picked), encoding="utf-8")
    print(f"{args.out}: {len(picked)} of {len(rows)} attacks")


if __name__ == "__main__":
    main()
