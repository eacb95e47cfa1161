"""Choosing heads from the per-task scores: the paper's multi-task selection, then k and alpha on dev.

Scores rank heads per task; PASTA steers the heads in the top k of every task
at once, and which k (and alpha) works is decided by generating on a dev split,
so this module holds the ranking, the candidates and the head set written out.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import torch

from ...engine import PastaModel
from ...errors import PastaError
from ...heads import HeadSet
from ..evaluation import Example, evaluate
from .checkpoint import Checkpoint

Pair = tuple[int, int]


def top_k(scores: torch.Tensor, k: int) -> list[Pair]:
    """The k best (layer, head) pairs of a (layers, heads) score table; ties go to the lower layer and head."""
    pairs = [(layer, head) for layer in range(scores.shape[0]) for head in range(scores.shape[1])]
    scored = [pair for pair in pairs if not math.isnan(float(scores[pair]))]
    return sorted(scored, key=lambda pair: (-float(scores[pair]), pair))[:k]


def intersect_top_k(task_scores: Mapping[str, torch.Tensor], k: int) -> list[Pair]:
    """The heads in the top k of every task: the paper's multi-task selection."""
    if not task_scores:
        raise PastaError("Profiling needs at least one task.")
    chosen = [set(top_k(scores, k)) for scores in task_scores.values()]
    return sorted(set.intersection(*chosen))


@dataclass(frozen=True)
class Candidate:
    k: int
    alpha: float
    heads: list[Pair]
    dev: dict[str, dict[str, float]]
    """Per dev set: acc and rep of greedy answers steered with these heads."""
    generated_exponent: float = 1.0
    """With steer_generated, generated keys are scaled by alpha ** generated_exponent (1: like the prompt)."""

    @property
    def generated_alpha(self) -> float | None:
        """The ``generated_alpha`` this candidate steers with; None when it is alpha itself."""
        return None if self.generated_exponent == 1 else self.alpha**self.generated_exponent

    @property
    def objective(self) -> float:
        """Mean over dev sets of acc - rep: accuracy bought with looping does not count."""
        return sum(m["acc"] - m["rep"] for m in self.dev.values()) / len(self.dev)


def default_ks(task_scores: Mapping[str, torch.Tensor]) -> list[int]:
    """Top-k sizes to try: the smallest k whose intersection keeps 4%, 8%, 12%, 18% and 24% of all heads.

    Tasks disagree, so the intersection is far smaller than k (none at all for small k); sizing k by
    what the intersection keeps spans the useful range whatever the model.
    """
    total = next(iter(task_scores.values())).numel()
    ks = []
    for share in (0.04, 0.08, 0.12, 0.18, 0.24):
        wanted = max(1, round(total * share))
        k = next((k for k in range(1, total + 1) if len(intersect_top_k(task_scores, k)) >= wanted), total)
        ks.append(k)
    return sorted(set(ks))


def choose_heads(
    model: PastaModel,
    task_scores: Mapping[str, torch.Tensor],
    dev_sets: Mapping[str, Sequence[Example]],
    ks: Sequence[int],
    alphas: Sequence[float],
    checkpoint: Checkpoint,
    progress: Callable[[int], None] | None = None,
    steer_generated: bool = False,
    generated_exponents: Sequence[float] = (1.0,),
) -> list[Candidate]:
    """Every distinct (top-k intersection, alpha, generated exponent) scored on dev, best first (ties: fewer heads,
    then smaller alpha, then the exponent closest to 1).

    ``steer_generated``: the candidates generate with generated keys steered too (``SteeringState``), scaled by
    ``alpha ** exponent`` for each of ``generated_exponents`` (1: by alpha, like the prompt)."""
    if not dev_sets:
        raise PastaError("Choosing k and alpha needs at least one dev set.")
    if not generated_exponents or any(not exponent > 0 for exponent in generated_exponents):
        raise PastaError(f"Generated exponents must be > 0 (1: generated keys scaled like the prompt), got "
                         f"{list(generated_exponents)}.")
    if not steer_generated and list(generated_exponents) != [1.0]:
        raise PastaError("Generated exponents apply to generated keys, which only steer_generated steers: "
                         "pass --steer-generated, or leave the exponents out.")
    candidates: list[Candidate] = []
    seen: set[tuple[Pair, ...]] = set()
    dev_fingerprint = hashlib.sha256(
        json.dumps({name: [asdict(e) for e in examples] for name, examples in dev_sets.items()}).encode()
    ).hexdigest()[:16]
    for k in ks:
        pairs = intersect_top_k(task_scores, k)
        if not pairs or tuple(pairs) in seen:
            continue
        seen.add(tuple(pairs))
        for alpha, exponent in ((a, e) for a in alphas for e in generated_exponents):
            candidate = Candidate(k, alpha, pairs, {}, exponent)
            key = json.dumps({"heads": pairs, "alpha": alpha, "dev": dev_fingerprint}
                             | ({"steer_generated": True} if steer_generated else {})
                             | ({"generated_exponent": exponent} if exponent != 1 else {}))
            dev = checkpoint.dev_result(key)
            if dev is None:
                steered = PastaModel(model.model, model.tokenizer, heads=HeadSet.from_pairs(pairs), alpha=alpha,
                                     steer_generated=steer_generated, generated_alpha=candidate.generated_alpha,
                                     name=model.name)
                dev = {}
                for name, examples in dev_sets.items():
                    report = evaluate(steered, examples, ["pasta"], progress=progress, es=False)["pasta"]
                    metrics = next(iter(report.values()))
                    dev[name] = {"acc": metrics["acc"], "rep": metrics["rep"]}
                checkpoint.record_dev(key, dev)
            elif progress:
                progress(sum(len(examples) for examples in dev_sets.values()))
            candidates.append(replace(candidate, dev=dev))
    if not candidates:
        raise PastaError(f"No top-k in {list(ks)} leaves a head common to all tasks; try larger k.")
    return sorted(candidates, key=lambda c: (-c.objective, len(c.heads), c.alpha, abs(c.generated_exponent - 1)))


def profiled_head_set(
    model_name: str,
    task_scores: Mapping[str, torch.Tensor],
    task_sizes: Mapping[str, int],
    profile_alpha: float,
    ranked: Sequence[Candidate],
    steer_generated: bool = False,
    screened: Mapping[str, torch.Tensor] | None = None,
) -> HeadSet:
    """The chosen heads, with the metadata that says how they were found (the ``--heads`` format).

    ``screened``: the screening estimates, when only the candidates were scored exactly (the others' exact
    scores are then null, and ``rescored_heads`` of ``of_heads`` says how many were scored).
    """
    best = ranked[0]
    scoring = ("one head steered at a time" if screened is None else
               "every head screened at once by attribution patching, the candidates then steered one at a time")
    metadata = {
        "model": model_name,
        "alpha": best.alpha,
        "steer_generated": steer_generated,
        "generated_alpha": best.generated_alpha,  # stated even when null (= alpha), so it is never inherited
        **({"generated_exponent": best.generated_exponent} if best.generated_alpha is not None else {}),
        "k": best.k,
        "method": f"pasta-rag profile: {scoring}, log-prob margin gain per task, "
        "intersection of per-task top-k; k, alpha (and generated_alpha) chosen on dev by mean(acc - rep)",
        "profile_alpha": profile_alpha,
        "tasks": {name: {"n": task_sizes[name]} for name in task_scores},
        "dev": best.dev,
        "candidates": [
            {"k": c.k, "alpha": c.alpha, "heads": len(c.heads), "objective": round(c.objective, 4), "dev": c.dev}
            | ({"generated_exponent": c.generated_exponent} if c.generated_exponent != 1 else {})
            for c in ranked
        ],
        "head_scores": _score_tables(task_scores),
        **({"screened_scores": _score_tables(screened)} if screened is not None else {}),
        **({"rescored_heads": _scored_heads(task_scores)} if screened is not None else {}),
        "of_heads": next(iter(task_scores.values())).numel(),
    }
    return HeadSet.from_pairs(best.heads, metadata)


def _scored_heads(task_scores: Mapping[str, torch.Tensor]) -> int:
    """How many heads have an exact score in some task (the rescored pool; every head without screening)."""
    scored = torch.stack([~torch.isnan(scores) for scores in task_scores.values()]).any(dim=0)
    return int(scored.sum())


def _score_tables(task_scores: Mapping[str, torch.Tensor]) -> dict[str, dict[str, list[float | None]]]:
    """Per task ``{layer: [score per head]}``, rounded; null for a head not scored."""
    return {
        name: {str(layer): [None if math.isnan(float(s)) else round(float(s), 4) for s in scores[layer]]
               for layer in range(scores.shape[0])}
        for name, scores in task_scores.items()
    }
