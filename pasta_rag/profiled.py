"""Head sets profiled on this machine, found again by the model's identity.

``pasta-rag profile --model X`` saves the sets it finds here, so that
``PastaModel.from_pretrained(X)`` steers with them next time, whatever path or
name X is loaded under. A model is known by what it computes: its config and
its weight files (names, sizes and a hash of a few slices of each), which is
cheap to read even for a model of many gigabytes.

Folder: ``$PASTA_RAG_HEAD_SETS``, else ``<pasta-rag cache>/head_sets``; files
``<identity>.json`` (context) and ``<identity>.instructions.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path

import torch

from .heads import PURPOSES, HeadSet
from .loading import cache_root

HEAD_SETS_ENV = "PASTA_RAG_HEAD_SETS"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
SLICE_BYTES = 1 << 16
"""Bytes hashed at the start, middle and end of each weight file: the header and tensors there differ between models."""
VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version", "_commit_hash")


def head_sets_dir() -> Path:
    """``$PASTA_RAG_HEAD_SETS``, else ``head_sets`` under the pasta-rag cache (``$PASTA_RAG_CACHE``)."""
    if os.environ.get(HEAD_SETS_ENV):
        return Path(os.environ[HEAD_SETS_ENV]).expanduser()
    return cache_root() / "head_sets"


def model_identity(folder: str | os.PathLike) -> str | None:
    """A short hash of the model in ``folder``: its config and its weight files; None when it has neither."""
    folder = Path(folder)
    config_file = folder / "config.json"
    weights = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES) if folder.is_dir() else []
    if not config_file.is_file() or not weights:
        return None
    config = {k: v for k, v in json.loads(config_file.read_text()).items() if k not in VOLATILE_CONFIG_KEYS}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for path in weights:
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with path.open("rb") as file:
            for start in (0, max(0, size // 2 - SLICE_BYTES // 2), max(0, size - SLICE_BYTES)):
                file.seek(start)
                digest.update(file.read(SLICE_BYTES))
    return digest.hexdigest()[:20]


def path_for(identity: str, purpose: str = "context") -> Path:
    name = f"{identity}.json" if purpose == "context" else f"{identity}.{purpose}.json"
    return head_sets_dir() / name


def find(identity: str | None, purpose: str = "context") -> HeadSet | None:
    """The set profiled for the model with this identity and purpose, or None."""
    if identity is None or purpose not in PURPOSES:
        return None
    path = path_for(identity, purpose)
    return HeadSet.load(path) if path.is_file() else None


def save(identity: str, purpose: str, head_set: HeadSet) -> Path:
    path = path_for(identity, purpose)
    path.parent.mkdir(parents=True, exist_ok=True)
    head_set.save(path)
    return path


def missing_message(name: str, source: str | None, model: torch.nn.Module, purpose: str = "context") -> str:
    """What to do when a model has no head set: the one command that profiles it, and how long it may take."""
    what = "head set" if purpose == "context" else f"{purpose!r} head set"
    command = f"pasta-rag profile --model {source or '<the model folder or id>'} --out heads.json"
    return (
        f"pasta-rag ships no {what} for {name!r}, and none was profiled for it (looked in {head_sets_dir()}). "
        f"Profile one with: {command} (an estimate: about {_duration(estimate_profile_seconds(model))} on this "
        "machine for a model of this size); it is found again by this model's identity. Or pass heads= "
        '(a JSON file, {"layer": [heads]} or a list of layers).'
    )


# --- the estimate ----------------------------------------------------------------------

PROFILE_WORK = {"examples": 120, "tokens": 260, "rescored_share": 0.5, "dev_runs": 6248, "raced_share": 0.35,
                "dev_tokens": 200, "dev_new_tokens": 40}
"""The shipped jobs' size, roughly: training examples and their mean tokens, the share of heads rescored, dev
generations of a full dev choice (context: 228 dev examples x 26 candidates, the exponents at 2 finalists;
instructions: 32 x 10) and the share of those the default race answers (benchmarks/dev_racing.py), their
prompt tokens from the emphasis on (candidates share the start: ``dev_answers``) and decoded tokens."""


def estimate_profile_seconds(model: torch.nn.Module, flops_per_second: float | None = None) -> float:
    """Seconds that ``pasta-rag profile`` may take: its token-forwards at 2 FLOPs per parameter, at this machine's speed.

    Screening costs about four forwards per example, rescoring a head about a quarter of one (the layers above it,
    the tokens from the emphasis on), and choosing on dev a prefill and the decoded tokens per example and
    candidate the race keeps answering (a decoded token counted as 8, for the overhead of one-token steps).
    It is an estimate.
    """
    parameters = sum(p.numel() for p in model.parameters())
    config = model.config.get_text_config()
    heads = config.num_hidden_layers * config.num_attention_heads
    work = PROFILE_WORK
    scoring_tokens = work["examples"] * work["tokens"] * (4 + work["rescored_share"] * heads * 0.25)
    dev_tokens = work["dev_runs"] * work["raced_share"] * (work["dev_tokens"] + 8 * work["dev_new_tokens"])
    flops = 2 * parameters * (scoring_tokens + dev_tokens)
    return flops / (flops_per_second or measured_flops_per_second())


def measured_flops_per_second(size: int = 1024, repeats: int = 4, rounds: int = 3) -> float:
    """This machine's float32 matmul speed, measured now (best of a few rounds; a fraction of a second)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm up
    best = math.inf
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 * repeats / max(best, 1e-9)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{math.ceil(seconds)} s"
    if seconds < 90 * 60:
        return f"{math.ceil(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"
