"""pasta-rag: post-hoc attention steering (PASTA) for local LLMs in RAG chains and agents."""

from .batching import Generation
from .emphasis import EMPHASIS_END, EMPHASIS_START, emphasize, has_markers, parse_marked, strip_markers
from .engine import PastaModel
from .errors import (
    ContextWindowError,
    EmphasisError,
    HeadSetError,
    ModelLoadError,
    PastaError,
    SteeringError,
)
from .heads import HeadSet
from .settings import UNSET, SamplingSettings, Steering
from .streaming import AsyncTextStream, TextStream

__all__ = [
    "UNSET",
    "AsyncTextStream",
    "EMPHASIS_END",
    "EMPHASIS_START",
    "ContextWindowError",
    "EmphasisError",
    "Generation",
    "HeadSet",
    "HeadSetError",
    "ModelLoadError",
    "PastaError",
    "PastaModel",
    "SamplingSettings",
    "Steering",
    "SteeringError",
    "TextStream",
    "emphasize",
    "has_markers",
    "parse_marked",
    "strip_markers",
]
