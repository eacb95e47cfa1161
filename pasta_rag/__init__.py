"""pasta-rag: post-hoc attention steering (PASTA) for local LLMs in RAG chains and agents."""

from .batching import Generation
from .emphasis import EMPHASIS_END, EMPHASIS_START, emphasize, has_markers, parse_marked, strip_markers
from .engine import PastaModel
from .errors import (
    ContextWindowError,
    EmphasisError,
    GrammarError,
    HeadSetError,
    ModelLoadError,
    PastaError,
    SteeringError,
    ToolError,
)
from .heads import HeadSet
from .settings import UNSET, SamplingSettings, Steering
from .streaming import AsyncTextStream, TextStream
from .tools import InvalidToolCall, ToolCall

__all__ = [
    "UNSET",
    "AsyncTextStream",
    "EMPHASIS_END",
    "EMPHASIS_START",
    "ContextWindowError",
    "EmphasisError",
    "Generation",
    "GrammarError",
    "HeadSet",
    "HeadSetError",
    "InvalidToolCall",
    "ModelLoadError",
    "PastaError",
    "PastaModel",
    "SamplingSettings",
    "Steering",
    "SteeringError",
    "TextStream",
    "ToolCall",
    "ToolError",
    "emphasize",
    "has_markers",
    "parse_marked",
    "strip_markers",
]
