"""Marked text -> plain text + character spans.

Emphasis travels through prompt templates and chains as two private-use
characters around the emphasized text. They survive any string formatting,
and no tokenizer, template or document uses them, so they can be stripped
without a trace right before tokenization. Untrusted text (retrieved
documents, tool output) goes through ``emphasize`` or ``strip_markers``,
which remove marker characters already present, so a document cannot forge
emphasis for itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from .errors import EmphasisError

EMPHASIS_START = "\ue000"
EMPHASIS_END = "\ue001"

Span = tuple[int, int]
"""A half-open character range ``[start, end)``."""

_MARKERS = re.compile(f"[{EMPHASIS_START}{EMPHASIS_END}]")


def strip_markers(text: str) -> str:
    """Remove every marker character: the way to neutralise untrusted text."""
    return _MARKERS.sub("", text)


def has_markers(text: str) -> bool:
    return _MARKERS.search(text) is not None


def emphasize(text: str) -> str:
    """Wrap ``text`` in emphasis markers, after removing any markers it already holds.

    >>> parse_marked("Answer from: " + emphasize("the sky is green"))
    ('Answer from: the sky is green', [(13, 29)])
    """
    return f"{EMPHASIS_START}{strip_markers(text)}{EMPHASIS_END}"


def parse_marked(text: str) -> tuple[str, list[Span]]:
    """Strip the markers of ``text``; return the plain text and the emphasized spans on it.

    Nested markers are allowed (the spans are a union); an unbalanced marker is an error,
    because silently dropping it would steer toward the wrong text.
    """
    plain: list[str] = []
    spans: list[Span] = []
    depth = 0
    opened_at = 0
    position = 0
    for piece in re.split(f"([{EMPHASIS_START}{EMPHASIS_END}])", text):
        if piece == EMPHASIS_START:
            if depth == 0:
                opened_at = position
            depth += 1
        elif piece == EMPHASIS_END:
            if depth == 0:
                raise EmphasisError(
                    f"An emphasis end marker at character {position} of the plain text has no start marker. "
                    "Build emphasized text with pasta_rag.emphasize(text), not by hand."
                )
            depth -= 1
            if depth == 0:
                spans.append((opened_at, position))
        else:
            plain.append(piece)
            position += len(piece)
    if depth:
        raise EmphasisError(
            f"An emphasis start marker at character {opened_at} is never closed. "
            "Build emphasized text with pasta_rag.emphasize(text), not by hand."
        )
    return "".join(plain), merge_spans(spans)


def find_substrings(text: str, substrings: Iterable[str]) -> list[Span]:
    """Spans of every occurrence of each substring; a substring absent from ``text`` is an error."""
    spans: list[Span] = []
    for substring in substrings:
        if not substring:
            raise EmphasisError("An emphasized substring is empty; pass non-empty text to emphasize.")
        found = [(m.start(), m.start() + len(substring)) for m in re.finditer(re.escape(substring), text)]
        if not found:
            preview = substring if len(substring) <= 60 else substring[:57] + "..."
            raise EmphasisError(
                f"Emphasized text {preview!r} does not occur in the prompt. Emphasis must be an exact "
                "substring of the prompt as sent to the model (after the chat template)."
            )
        spans.extend(found)
    return merge_spans(spans)


def check_spans(spans: Sequence[Span], text_length: int) -> list[Span]:
    """Validate explicit spans against the text they index, then merge them."""
    for start, end in spans:
        if not (0 <= start < end <= text_length):
            raise EmphasisError(
                f"Span ({start}, {end}) is not a non-empty range inside the prompt of {text_length} "
                "characters; spans are half-open [start, end) character offsets into the final prompt."
            )
    return merge_spans(spans)


def merge_spans(spans: Iterable[Span]) -> list[Span]:
    """Union of spans as sorted, disjoint, non-touching ranges (empty spans dropped)."""
    merged: list[list[int]] = []
    for start, end in sorted(s for s in spans if s[1] > s[0]):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end) for start, end in merged]
