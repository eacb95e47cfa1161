"""LlamaIndex LLM over pasta-rag: answers steered toward the retrieved context (PASTA)."""

from llama_index.llms.pasta.base import PastaLLM
from llama_index.llms.pasta.loading import load_shared_model
from llama_index.llms.pasta.options import CALL_OPTIONS
from llama_index.llms.pasta.postprocessor import PastaNodePostprocessor
from llama_index.llms.pasta.templates import DEFAULT_CONTEXT_VARIABLES

__all__ = ["CALL_OPTIONS", "DEFAULT_CONTEXT_VARIABLES", "PastaLLM", "PastaNodePostprocessor", "load_shared_model"]
