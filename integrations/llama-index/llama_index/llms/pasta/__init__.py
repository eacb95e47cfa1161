"""LlamaIndex LLM over pasta-rag: answers steered toward the retrieved context (PASTA)."""

from llama_index.llms.pasta.base import CALL_OPTIONS, DEFAULT_CONTEXT_VARIABLES, PastaLLM, load_shared_model
from llama_index.llms.pasta.postprocessor import PastaNodePostprocessor

__all__ = ["CALL_OPTIONS", "DEFAULT_CONTEXT_VARIABLES", "PastaLLM", "PastaNodePostprocessor", "load_shared_model"]
