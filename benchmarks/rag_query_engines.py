"""Real LlamaIndex query engines over the long-context conflict sets: the automatic context emphasis, measured.

The twin of ``rag_chains.py`` for LlamaIndex: each record's 13 passages become the nodes of a real
``VectorStoreIndex`` (all-MiniLM-L6-v2 from the packaged wheel), and ``as_query_engine(similarity_top_k=k,
response_mode="compact")`` answers the record's question with ``PastaLLM`` as the LLM. Nothing is marked by
hand: the LLM emphasizes the retrieved context itself. Variants differ only in PastaLLM's settings.

    python benchmarks/rag_query_engines.py --split test --k 4 --out benchmarks/results/rag_query_engines_smollm2_test_k4.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from llama_index.core import Document, VectorStoreIndex
from llama_index.llms.pasta import PastaLLM
from rag_chains import score

from pasta_rag import PastaModel
from pasta_rag.research.bench import machine
from pasta_rag.research.evaluation import Example, passages, read_examples

sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))
from llamaindex_embedding import packaged_embedding  # noqa: E402

VARIANTS = {  # what shipped before issue 15 is "all"; "default" is what ships now
    "unsteered": {"steer": False},
    "all": {"select": "all"},
    "default": {},
}
SETTINGS = ("conflict", "control")


def answer(llm: PastaLLM, embed_model, example: Example, k: int, control: bool) -> str:
    nodes = [Document(text=p) for p in passages(example, control)]
    index = VectorStoreIndex.from_documents(nodes, embed_model=embed_model)
    engine = index.as_query_engine(llm=llm, similarity_top_k=k, response_mode="compact")
    return str(engine.query(example.question))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--split", default="test")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--data", type=Path, default=Path(__file__).parent / "data")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    examples, problems = read_examples(args.data / args.split / "conflicts_long.jsonl")
    if problems:
        raise SystemExit(f"Malformed records: {problems}")
    embed_model = packaged_embedding()
    model = PastaModel.shared(args.model)
    report = {
        "command": f"python benchmarks/rag_query_engines.py --model {args.model} --split {args.split} --k {args.k}",
        "machine": machine(None), "model": model.name, "k": args.k, "response_mode": "compact", "sets": {},
    }
    for setting in args.settings.split(","):
        control = setting == "control"
        results: dict = {"variants": {}}
        for name in args.variants.split(","):
            started = time.perf_counter()
            llm = PastaLLM(model, max_new_tokens=args.max_tokens, **VARIANTS[name])
            answers = [answer(llm, embed_model, e, args.k, control) for e in examples]
            results["variants"][name] = {**score(examples, answers, control), "answers": answers}
            shown = {k: v for k, v in results["variants"][name].items() if k != "answers"}
            print(f"{setting:8} {name:10} {json.dumps(shown)}  ({time.perf_counter() - started:.0f} s)", flush=True)
        report["sets"][setting] = results
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
