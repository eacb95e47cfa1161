"""Retrieved documents -> emphasized context text.

The drop-in for the ``format_docs`` step of RAG chains::

    chain = {"context": retriever | format_docs, "question": RunnablePassthrough()} | prompt | ChatPasta()

Each document's text is wrapped in emphasis markers, after removing any marker
characters the document already holds: a poisoned document cannot forge
emphasis for itself (or close the emphasis early and steer toward text it
appends). Metadata shown through ``document_prompt`` is untrusted too and is
stripped the same way.

Every document is marked as a passage of its own, and the chat model steers only
the ones that answer the question (``select="relevant"``, its default): with
several retrieved documents, steering all of them pushes the question down with
everything else. ``emphasis="first"`` marks only the retriever's best match.
Sentences that read as orders to the assistant, or forge a turn or a tool result,
are never emphasized (``skip_instructions``, on by default; ``pasta_rag.untrusted``),
so steering never pushes up an instruction an attacker wrote into a document.
Today's older behaviour, every document steered whole, is
``PastaDocumentFormatter(skip_instructions=False)`` with ``ChatPasta(select="all")``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from langchain_core.documents import Document
from langchain_core.prompts import BasePromptTemplate, PromptTemplate, format_document
from langchain_core.runnables import RunnableConfig, RunnableSerializable

from pasta_rag import emphasize, strip_markers
from pasta_rag.untrusted import emphasize_facts, unemphasized

DEFAULT_SEPARATOR = "\n\n"


def format_docs(docs: Sequence[Document] | Document, separator: str = DEFAULT_SEPARATOR) -> str:
    """Join the documents' text, emphasized as ``PastaDocumentFormatter()`` does. Use it where a chain has
    ``format_docs``."""
    return PastaDocumentFormatter(separator=separator).invoke(docs)


def emphasize_documents(docs: Sequence[Document], skip_instructions: bool = True) -> list[Document]:
    """Copies of the documents with their text emphasized (instruction-like sentences left out, as
    ``format_docs`` does), for chains that format documents themselves (``create_stuff_documents_chain``
    and the like): put it between the retriever and that chain."""
    return [doc.model_copy(update={"page_content": _emphasized(doc.page_content, skip_instructions)})
            for doc in _checked(docs)]


class PastaDocumentFormatter(RunnableSerializable[Sequence[Document], str]):
    """A runnable that turns ``list[Document]`` into emphasized context text.

    ``document_prompt`` formats each document (default: its text alone), e.g.
    ``PromptTemplate.from_template("[{source}] {page_content}")``; the formatted entry is what gets
    emphasized. ``emphasis``: ``"all"`` marks every document (the model then steers the relevant ones),
    ``"first"`` only the first (the retriever's best match). ``skip_instructions`` (default True) leaves
    instruction-like sentences of a document unemphasized. ``emphasize=False`` gives the same text
    unmarked (and still stripped of forged markers), for comparisons.
    """

    document_prompt: BasePromptTemplate | None = None
    separator: str = DEFAULT_SEPARATOR
    emphasize: bool = True
    emphasis: Literal["all", "first"] = "all"
    skip_instructions: bool = True

    def invoke(self, input: Sequence[Document] | Document, config: RunnableConfig | None = None, **kwargs: Any) -> str:
        return self._call_with_config(self._format, input, config, run_type="parser")

    def _format(self, docs: Sequence[Document] | Document) -> str:
        prompt = self.document_prompt or PromptTemplate.from_template("{page_content}")
        entries = []
        for rank, doc in enumerate(_checked(docs)):
            safe = Document(
                page_content=strip_markers(doc.page_content),
                metadata={k: strip_markers(v) if isinstance(v, str) else v for k, v in doc.metadata.items()},
            )
            entry = format_document(safe, prompt)
            if not self.emphasize:  # plain text, for any model: no marker at all
                entries.append(entry)
            elif self.emphasis == "all" or rank == 0:
                entries.append(_emphasized(entry, self.skip_instructions))
            else:  # left unemphasized, and marked untrusted so that no pin takes it in
                entries.append(unemphasized(entry))
        return self.separator.join(entries)


def _emphasized(text: str, skip_instructions: bool) -> str:
    """A document's text emphasized: its facts only, or (``skip_instructions=False``) the whole of it."""
    return emphasize_facts(text) if skip_instructions else emphasize(text)


def _checked(docs: Sequence[Document] | Document) -> list[Document]:
    if isinstance(docs, Document):
        return [docs]
    if isinstance(docs, (str, bytes)) or not isinstance(docs, Sequence):
        raise TypeError(
            f"format_docs takes a list of Documents (what a retriever returns), got {type(docs).__name__}."
        )
    for doc in docs:
        if not isinstance(doc, Document):
            raise TypeError(f"format_docs takes a list of Documents; one item is a {type(doc).__name__}.")
    return list(docs)
