"""The errors pasta-rag raises.

Every error is a ``PastaError`` (a ``ValueError``), so callers can catch the
whole family; the subclasses say which input was wrong.
"""

from __future__ import annotations


class PastaError(ValueError):
    """Base class of every error raised for bad input to pasta-rag."""


class EmphasisError(PastaError):
    """The emphasis could not be resolved on the prompt (missing text, bad spans, unbalanced markers)."""


class HeadSetError(PastaError):
    """A head set is empty, malformed, or does not fit the model."""


class ModelLoadError(PastaError):
    """A model could not be found or read."""


class SteeringError(PastaError):
    """Steering was asked for in a way the model cannot do (alpha, attention implementation, context window)."""


class ContextWindowError(PastaError):
    """The prompt plus the tokens to generate do not fit the model's context window."""


class ToolError(PastaError):
    """A tool, a tool choice or a tool-call message is malformed."""


class GrammarError(PastaError):
    """A schema the grammar library cannot compile for constrained decoding, or a malformed response_format."""
