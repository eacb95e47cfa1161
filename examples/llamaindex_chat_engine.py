"""A LlamaIndex context chat engine over several turns, unsteered vs steered.

Each turn retrieves from examples/data/llamaindex/ (an "alternate world" atlas
whose documents contradict common knowledge) and answers with the retrieved
nodes in the system message. PastaLLM emphasizes them automatically (the chat
engine formats them as `context_str`); the chat history is not emphasized.

Seen with the default model: the steered engine answers all four turns from the
documents; the plain one answers Big Ben, France and the telephone from memory.
(Pinning the whole system message as well, PastaLLM(emphasize_system_prompt=True),
made this small model repeat its previous answer on later turns: the context chat
engine's system message holds the instructions and the context together.)

Run: .venv/bin/python examples/llamaindex_chat_engine.py
Needs: pip install -e "integrations/llama-index[test]". Nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llama_index.core import SimpleDirectoryReader, VectorStoreIndex
from llama_index.llms.pasta import PastaLLM
from llamaindex_embedding import packaged_embedding

DATA = Path(__file__).parent / "data" / "llamaindex"
SYSTEM_PROMPT = "Answer from the context in one short sentence."
TURNS = [
    "In which city is Big Ben?",
    "What is the capital of France?",
    "And what is the largest ocean on Earth?",
    "Who invented the telephone?",
]


def main() -> None:
    steered_llm = PastaLLM(max_new_tokens=20)
    plain_llm = PastaLLM(steered_llm.pasta_model, max_new_tokens=20, steer=False)

    documents = SimpleDirectoryReader(str(DATA)).load_data()
    for document in documents:
        document.excluded_llm_metadata_keys = list(document.metadata)
    index = VectorStoreIndex.from_documents(documents, embed_model=packaged_embedding())

    engines = {
        name: index.as_chat_engine(chat_mode="context", llm=llm, system_prompt=SYSTEM_PROMPT, similarity_top_k=1)
        for name, llm in (("unsteered", plain_llm), ("steered", steered_llm))
    }
    for turn in TURNS:
        print(f"User: {turn}")
        for name, engine in engines.items():
            print(f"  {name:>9}: {' '.join(engine.chat(turn).response.split())}")
        print()


if __name__ == "__main__":
    main()
