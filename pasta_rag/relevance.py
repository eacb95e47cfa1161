"""Which emphasized passages answer the question: ``Steering(select="relevant")``.

A chain emphasizes what it retrieved, and with top-4 retrieval that is three passages too many:
steering then pushes the whole context up and the question down, and the model quotes whichever
passage it lands on. With ``select="relevant"`` the engine keeps, of a group's separate emphasized
spans (each retrieved document is one), those that BM25 (``bm25s``) ranks highest for the rest of
the prompt (the question, the instruction around it), and steers only those. The retriever ranked the
documents against the question already; this ranks them again against the words the prompt
actually asks with, so a relevant passage the retriever put second is still found.

The passages are their own BM25 corpus, so a word they all share looks common and weighs little. Copies
of one passage (a page and its mirror, overlapping chunks) count as one document there: otherwise the
question's subject, which every copy names, would weigh less than a word of the question that only an
unrelated passage holds, and the copies would lose to it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import bm25s

from .emphasis import Span

RELEVANT_SHARE = 1.0
"""A span is kept when its score is at least this share of the best span's: 1.0 keeps the best (and its
ties). Chosen on the dev long-context chains against 0.5 and 0.7 (benchmarks/README.md, "RAG chains")."""

COPY_OVERLAP = 0.9
"""Two passages are copies when this share of the shorter one's distinct words is in the other."""


def relevant_spans(text: str, spans: Sequence[Span], share: float | None = None) -> list[Span]:
    """The spans of ``text`` most relevant to the text around them; all of them when there is one.

    ``share`` (default ``RELEVANT_SHARE``, read at each call so a benchmark can vary it) is how close to
    the best score a span must come to be kept too.
    """
    share = RELEVANT_SHARE if share is None else share
    if len(spans) < 2:
        return list(spans)
    passages = [text[start:end] for start, end in spans]
    scores = _bm25_scores(passages, _outside(text, spans))
    best = max(scores)
    if best <= 0:
        warnings.warn(
            "select='relevant' found no word of the question in any emphasized passage; steering toward the "
            "first one (a retriever's best match). Emphasize the passages you mean, or use select='all'.",
            stacklevel=6,
        )
        return [spans[0]]
    return [span for span, score in zip(spans, scores) if score >= share * best]


def _outside(text: str, spans: Sequence[Span]) -> str:
    """The prompt's text outside the spans: what it asks."""
    pieces, position = [], 0
    for start, end in spans:
        pieces.append(text[position:start])
        position = end
    pieces.append(text[position:])
    return " ".join(pieces)


def _bm25_scores(passages: list[str], query: str) -> list[float]:
    """BM25 score of each passage for ``query``, the passages themselves as the corpus (English stopwords);
    a copy of an earlier passage is not indexed again and gets that passage's score."""
    words = bm25s.tokenize(passages, stopwords="en", return_ids=False, show_progress=False)
    if not any(words):  # every passage is stopwords and one-letter words: nothing to rank them by
        return [0.0] * len(passages)
    query_words = bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)
    if not query_words[0]:
        return [0.0] * len(passages)
    original = _originals(words)
    indexed = sorted(set(original))
    retriever = bm25s.BM25()
    retriever.index([words[i] for i in indexed], show_progress=False)
    documents, scores = retriever.retrieve(query_words, k=len(indexed), show_progress=False)
    by_indexed = {indexed[d]: float(score) for d, score in zip(documents[0].tolist(), scores[0].tolist())}
    return [by_indexed.get(original[i], 0.0) for i in range(len(passages))]


def _originals(words: list[list[str]]) -> list[int]:
    """For each passage, the first passage it is a copy of (``COPY_OVERLAP``), itself when none."""
    sets = [set(w) for w in words]
    original = []
    for i, mine in enumerate(sets):
        original.append(next((j for j in range(i) if original[j] == j and _copies(mine, sets[j])), i))
    return original


def _copies(a: set[str], b: set[str]) -> bool:
    shorter = min(len(a), len(b))
    return shorter > 0 and len(a & b) >= COPY_OVERLAP * shorter
