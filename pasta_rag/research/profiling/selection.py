"""Choosing heads from the per-task scores: the paper's multi-task selection, then k and alpha on dev.

Scores rank heads per task; PASTA steers the heads in the top k of every task
at once, and which k (and alpha) works is decided by generating on a dev split,
so this module holds the ranking, the candidates and the head set written out.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch

from ...batching import prepare
from ...engine import PastaModel
from ...errors import PastaError
from ...heads import HeadSet
from ...settings import SamplingSettings
from ...tokens import EncodedPrompt
from ..evaluation import NEW_TOKENS, Example, answer_hits, prompt_for, stop_strings
from .checkpoint import Checkpoint
from .dev_answers import PrefixCache, Row, Steered, answer_rows
from .dev_choice import FINALISTS, Stage, dev_choice
from .racing import Advance, Tally, ignore

Pair = tuple[int, int]
DEV_BATCH = 8
"""Dev answers are generated in batches of this size, from the start of each set."""


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


def candidate_model(model: PastaModel, candidate: Candidate, steer_generated: bool) -> PastaModel:
    """``model``'s weights steered the way ``candidate`` says, to be scored on dev."""
    return PastaModel(model.model, model.tokenizer, heads=HeadSet.from_pairs(candidate.heads), alpha=candidate.alpha,
                      steer_generated=steer_generated, generated_alpha=candidate.generated_alpha, name=model.name)


def choose_heads(
    model: PastaModel,
    task_scores: Mapping[str, torch.Tensor],
    dev_sets: Mapping[str, Sequence[Example]],
    ks: Sequence[int],
    alphas: Sequence[float],
    checkpoint: Checkpoint,
    stage: Stage | None = None,
    steer_generated: bool = False,
    generated_exponents: Sequence[float] = (1.0,),
    racing: bool = False,
    finalists: int = FINALISTS,
) -> list[Candidate]:
    """Every distinct top-k intersection x alpha scored on dev, then the other generated exponents at the best
    ``finalists`` (``dev_choice``); every candidate tried, best first (``rank``).

    ``steer_generated``: the candidates generate with generated keys steered too (``SteeringState``), scaled by
    ``alpha ** exponent`` for each of ``generated_exponents`` (1: by alpha, like the prompt; the first stage uses
    1, or the first given). ``racing``: successive halving (the ``racing`` module): only the last few answer the
    whole dev split; without it, every candidate does (the reference). ``stage`` opens each stage's progress."""
    if not dev_sets:
        raise PastaError("Choosing k and alpha needs at least one dev set.")
    if not generated_exponents or any(not exponent > 0 for exponent in generated_exponents):
        raise PastaError(f"Generated exponents must be > 0 (1: generated keys scaled like the prompt), got "
                         f"{list(generated_exponents)}.")
    if not steer_generated and list(generated_exponents) != [1.0]:
        raise PastaError("Generated exponents apply to generated keys, which only steer_generated steers: "
                         "pass --steer-generated, or leave the exponents out.")
    first = 1.0 if 1.0 in generated_exponents else generated_exponents[0]
    grid = candidate_pool(task_scores, ks, alphas, [first])
    if not grid:
        raise PastaError(f"No top-k in {list(ks)} leaves a head common to all tasks; try larger k.")
    score = DevScorer(model, dev_sets, checkpoint, steer_generated)
    sizes = {name: len(examples) for name, examples in dev_sets.items()}
    return dev_choice(grid, generated_exponents, sizes, score, DEV_BATCH, racing, finalists, stage).ranked


def candidate_pool(task_scores: Mapping[str, torch.Tensor], ks: Sequence[int], alphas: Sequence[float],
                   generated_exponents: Sequence[float]) -> list[Candidate]:
    """One candidate per distinct top-k intersection, alpha and exponent (two k with the same heads are one)."""
    pool, seen = [], set()
    for k in ks:
        pairs = intersect_top_k(task_scores, k)
        if pairs and tuple(pairs) not in seen:
            seen.add(tuple(pairs))
            pool += [Candidate(k, alpha, pairs, {}, exponent) for alpha in alphas for exponent in generated_exponents]
    return pool


class DevScorer:
    """Candidates' hits on the first examples of a dev set, each answer generated once and kept in the checkpoint.

    The candidates asked for together are answered together (``dev_answers``: one example's shared prompt
    computed once, several candidates per batch); each answer is the one a candidate gives the example alone,
    so a prefix's tally is what a whole-set run gives, and a race that asks for more only answers the new ones."""

    def __init__(self, model: PastaModel, dev_sets: Mapping[str, Sequence[Example]], checkpoint: Checkpoint,
                 steer_generated: bool) -> None:
        self.model, self.dev_sets, self.checkpoint, self.steer_generated = model, dev_sets, checkpoint, steer_generated
        self.fingerprint = hashlib.sha256(
            json.dumps({name: [asdict(e) for e in examples] for name, examples in dev_sets.items()}).encode()
        ).hexdigest()[:16]
        self.asked: dict[tuple[str, str], int] = {}
        self.prompts: dict[tuple[str, int], tuple[EncodedPrompt, SamplingSettings]] = {}
        self.prefixes = PrefixCache()

    def key(self, candidate: Candidate) -> str:
        """The checkpoint's key for a candidate on these dev sets (its answers are filed under it)."""
        return json.dumps({"heads": candidate.heads, "alpha": candidate.alpha, "dev": self.fingerprint}
                          | ({"steer_generated": True} if self.steer_generated else {})
                          | ({"generated_exponent": candidate.generated_exponent}
                             if candidate.generated_exponent != 1 else {}))

    def __call__(self, candidates: Sequence[Candidate], set_name: str, end: int, advance: Advance = ignore
                 ) -> list[Tally]:
        examples = self.dev_sets[set_name]
        keys = [self.key(c) for c in candidates]
        hits = [self.checkpoint.dev_answers(key, set_name) for key in keys]
        asking: list[tuple[int, int]] = []  # (candidate, example) still to answer
        for c, key in enumerate(keys):
            before = self.asked.get((key, set_name), 0)
            if end > before:
                advance(sum(str(i) in hits[c] for i in range(before, end)))  # answered by an earlier run
                self.asked[key, set_name] = end
            asking += [(c, i) for i in range(end) if str(i) not in hits[c]]
        rows = []
        for c, i in asking:
            encoded, sampling = self.prompt(candidates[c], set_name, i)
            rows.append(Row(encoded, self.steered(candidates[c]), sampling))

        def answered(indices: list[int], texts: list[str]) -> None:
            for index, text in zip(indices, texts):
                c, i = asking[index]
                hits[c][str(i)] = [int(hit) for hit in answer_hits(examples[i], text)]
            self.checkpoint.save()
            advance(len(indices))

        if rows:
            answer_rows(self.model, rows, answered, self.prefixes)
        return [Tally(sum(h[str(i)][0] for i in range(end)), sum(h[str(i)][1] for i in range(end)), end) for h in hits]

    def steered(self, candidate: Candidate) -> Steered:
        return Steered(HeadSet.from_pairs(candidate.heads), candidate.alpha, self.steer_generated,
                       candidate.generated_alpha)

    def prompt(self, candidate: Candidate, set_name: str, index: int) -> tuple[EncodedPrompt, SamplingSettings]:
        """Example ``index``'s prompt encoded as the engine encodes it for ``candidate`` (the same for every
        candidate: steering settings do not change the tokens), and how long its answer may be."""
        if (set_name, index) not in self.prompts:
            example = self.dev_sets[set_name][index]
            prompted = prompt_for(example, "pasta")
            sampling = SamplingSettings(max_new_tokens=NEW_TOKENS[example.task],
                                        stop=stop_strings(self.model, prompted.messages))
            steered = candidate_model(self.model, candidate, self.steer_generated)
            batch = prepare(steered, [prompted.messages], None, None, prompted.steering, sampling).batch
            encoded = EncodedPrompt(batch.input_ids[0].tolist(), batch.emphasized[0].tolist())
            self.prompts[set_name, index] = encoded, sampling
        return self.prompts[set_name, index]


def profiled_head_set(
    model_name: str,
    task_scores: Mapping[str, torch.Tensor],
    task_sizes: Mapping[str, int],
    profile_alpha: float,
    ranked: Sequence[Candidate],
    steer_generated: bool = False,
    screened: Mapping[str, torch.Tensor] | None = None,
    racing: bool = False,
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
        f"intersection of per-task top-k; k, alpha (and generated_alpha) chosen on dev by mean(acc - rep)"
        + (", raced by successive halving (dev n: the answers each candidate reached)" if racing else ""),
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
