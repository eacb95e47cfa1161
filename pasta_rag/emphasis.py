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

CONTEXT = "context"
INSTRUCTIONS = "instructions"

GROUP_MARKERS: dict[str, tuple[str, str]] = {
    CONTEXT: (EMPHASIS_START, EMPHASIS_END),
    INSTRUCTIONS: ("\ue002", "\ue003"),
}
"""The marker pair of each emphasis group. A group is steered with its own head set: ``context`` (retrieved
passages) with the model's context set, ``instructions`` (the chain's own instruction, the user's question)
with its instructions set, so trusted text and documents are pushed up by different heads."""

UNTRUSTED_MARKERS = ("\ue004", "\ue005")
"""The marker pair around text nobody vouches for (a retrieved document, a tool result). It steers nothing: it
only keeps the text out of pinning (``emphasize_unmarked``), so that pinning a message that carries a document
never pins the document's unemphasized sentences (an attacker's order among them) as instructions."""

Span = tuple[int, int]
"""A half-open character range ``[start, end)``."""

_EMPHASIS_MARKERS = "".join(start + end for start, end in GROUP_MARKERS.values())
_ALL_MARKERS = _EMPHASIS_MARKERS + "".join(UNTRUSTED_MARKERS)
_MARKERS = re.compile(f"[{_ALL_MARKERS}]")
_GROUP_OF = {marker: group for group, pair in GROUP_MARKERS.items() for marker in pair}
_OPENERS = {start for start, _ in GROUP_MARKERS.values()} | {UNTRUSTED_MARKERS[0]}


def strip_markers(text: str) -> str:
    """Remove every marker character of every group: the way to neutralise untrusted text."""
    return _MARKERS.sub("", text)


def has_markers(text: str) -> bool:
    """Does ``text`` emphasize anything (the untrusted markers steer nothing, so they do not count)?"""
    return re.search(f"[{_EMPHASIS_MARKERS}]", text) is not None


def mark_untrusted(text: str) -> str:
    """``text`` (already emphasized as it should be) inside the untrusted markers: never pinned."""
    start, end = UNTRUSTED_MARKERS
    return f"{start}{text}{end}" if text else text


def emphasize(text: str, group: str = CONTEXT) -> str:
    """Wrap ``text`` in the markers of ``group``, after removing any markers it already holds.

    >>> parse_marked("Answer from: " + emphasize("the sky is green"))
    ('Answer from: the sky is green', [(13, 29)])
    """
    if group not in GROUP_MARKERS:
        raise EmphasisError(f"Unknown emphasis group {group!r}; the groups with markers are {list(GROUP_MARKERS)}.")
    start, end = GROUP_MARKERS[group]
    return f"{start}{strip_markers(text)}{end}"


def emphasize_unmarked(text: str, group: str = INSTRUCTIONS) -> str:
    """``text`` with every stretch that no group emphasizes yet wrapped in the markers of ``group``.

    The way to pin a message that may already carry emphasized documents (a RAG prompt formats its
    retrieved passages into the system or user message): pinning the whole message would put the
    untrusted passages into the instructions group as well, steering the instructions heads toward
    them. Stretches of whitespace only are left alone.

    >>> parse_groups(emphasize_unmarked("Answer from: " + emphasize("the sky is green")))[1]
    {'instructions': [(0, 12)], 'context': [(13, 29)]}
    """
    if group not in GROUP_MARKERS:
        raise EmphasisError(f"Unknown emphasis group {group!r}; the groups with markers are {list(GROUP_MARKERS)}.")
    start, end = GROUP_MARKERS[group]
    pieces, depth = [], 0
    for piece in re.split(f"([{_ALL_MARKERS}])", text):
        if piece in _GROUP_OF or piece in UNTRUSTED_MARKERS:
            depth += 1 if piece in _OPENERS else -1
            pieces.append(piece)
        elif depth == 0 and piece.strip():
            lead, trail = len(piece) - len(piece.lstrip()), len(piece.rstrip())
            pieces.append(f"{piece[:lead]}{start}{piece[lead:trail]}{end}{piece[trail:]}")
        else:
            pieces.append(piece)
    return "".join(pieces)


def parse_marked(text: str) -> tuple[str, list[Span]]:
    """Strip the markers of ``text``; return the plain text and the emphasized spans on it (every group's)."""
    plain, groups = parse_groups(text)
    return plain, merge_spans(span for spans in groups.values() for span in spans)


def parse_groups(text: str) -> tuple[str, dict[str, list[Span]]]:
    """Strip the markers of ``text``; return the plain text and, per group that has any, its spans on it.

    Each group is read on its own: markers of one group may nest (the spans are a union) and may
    overlap another group's. The untrusted markers steer nothing and leave no span. An unbalanced marker
    (of any pair) is an error, because silently dropping it would steer toward the wrong text, or pin it.
    """
    plain: list[str] = []
    spans: dict[str, list[Span]] = {}
    depth = dict.fromkeys(GROUP_MARKERS, 0)
    opened_at = dict.fromkeys(GROUP_MARKERS, 0)
    position = untrusted_depth = 0
    for piece in re.split(f"([{_ALL_MARKERS}])", text):
        group = _GROUP_OF.get(piece)
        if piece in UNTRUSTED_MARKERS:
            untrusted_depth += 1 if piece == UNTRUSTED_MARKERS[0] else -1
            if untrusted_depth < 0:
                raise EmphasisError(
                    f"An untrusted-text end marker at character {position} of the plain text has no start "
                    "marker. Wrap untrusted text with pasta_rag.emphasis.mark_untrusted(text), not by hand."
                )
            continue
        if group is None:
            plain.append(piece)
            position += len(piece)
        elif piece == GROUP_MARKERS[group][0]:
            if depth[group] == 0:
                opened_at[group] = position
            depth[group] += 1
        else:
            if depth[group] == 0:
                raise EmphasisError(
                    f"An emphasis end marker ({group}) at character {position} of the plain text has no start "
                    "marker. Build emphasized text with pasta_rag.emphasize(text), not by hand."
                )
            depth[group] -= 1
            if depth[group] == 0:
                spans.setdefault(group, []).append((opened_at[group], position))
    if untrusted_depth:
        raise EmphasisError(
            "An untrusted-text start marker is never closed. Wrap untrusted text with "
            "pasta_rag.emphasis.mark_untrusted(text), not by hand."
        )
    for group, open_count in depth.items():
        if open_count:
            raise EmphasisError(
                f"An emphasis start marker ({group}) at character {opened_at[group]} is never closed. "
                "Build emphasized text with pasta_rag.emphasize(text), not by hand."
            )
    return "".join(plain), {group: merge_spans(found) for group, found in spans.items()}


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
