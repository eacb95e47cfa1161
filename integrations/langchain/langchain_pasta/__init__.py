"""LangChain integration of pasta-rag: local chat/text models steered toward retrieved documents and
pinned instructions (PASTA, Zhang et al., ICLR 2024).

    from langchain_pasta import ChatPasta, format_docs, pin

    chain = {"context": retriever | format_docs, "question": RunnablePassthrough()} | prompt | ChatPasta()
"""

from pasta_rag import emphasize, strip_markers

from ._common import load_engine
from .chat_models import ChatPasta
from .documents import PastaDocumentFormatter, emphasize_documents, format_docs
from .llms import PastaLLM
from .messages import EMPHASIS_KEY, pin

__all__ = [
    "EMPHASIS_KEY",
    "ChatPasta",
    "PastaDocumentFormatter",
    "PastaLLM",
    "emphasize",
    "emphasize_documents",
    "format_docs",
    "load_engine",
    "pin",
    "strip_markers",
]

