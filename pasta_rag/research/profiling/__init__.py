"""The multi-task head profiler behind ``pasta-rag profile``.

PASTA steers the heads that, steered one at a time, move the model most toward
the emphasized text on several tasks at once (the paper's multi-task
profiling): rank heads per task, keep the intersection of the per-task top-k,
and choose k (and alpha) on a dev split.

A head's score on an example is a log-probability margin, not a generation:
the prompt is followed by the shared start of the answer that obeys the
context (``target_new``, ``answer``) and the one that ignores it
(``target_true``, ``violation``), and the score is ``log p(obeying token) -
log p(ignoring token)`` at the first token where they part. A head's task score
is the mean gain of that margin over the unsteered model.

A stop row (``stop_row``) scores the other thing steering can break: after a
complete answer that follows the context, the log-odds that the model ends its
turn. A head that lowers it makes the steered model repeat its answer.

``score_heads`` computes exactly what ``score_heads_plainly`` (one forward per
head per example) computes, without the work the variants share:

* layers below the steered head compute what the unsteered model computes, so
  every variant starts from the unsteered input of its own layer;
* prompt tokens before the first emphasized token are not changed by steering
  at any layer (every key they see gets the same bias, which softmax cancels),
  so their keys and values come from the unsteered run's cache;
* all heads of a layer times many examples run as one batch, and only the
  last position's logits are computed.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from transformers import DynamicCache

from ...engine import PastaModel
from ...errors import PastaError
from ..evaluation import Example, prompt_for
from ...heads import HeadSet
from ...prompts import PLAIN_FORMAT, PLAIN_NEXT_TURN
from ...steering import SteeringState, steering
from ...tokens import EncodedPrompt, encode, pad_left

Pair = tuple[int, int]


# --- what is scored -----------------------------------------------------------------------


@dataclass(frozen=True)
class ScoringRow:
    """One example as the profiler scores it.

    input_ids: the prompt, then the tokens the two answers share.
    unbiased: per token, True where steering adds no bias: emphasized prompt tokens
        and the shared answer tokens (scored the paper's way: answer keys are left alone, as generated ones are
        without ``steer_generated``).
    first_affected: the first emphasized token; steering changes nothing before it.
    ignoring: None scores ``obeying`` alone, by its log-odds log p - log(1 - p) (stop rows).
    """

    input_ids: list[int]
    unbiased: list[bool]
    first_affected: int
    obeying: int
    ignoring: int | None


def contrast(example: Example) -> tuple[str, str]:
    """The answer that follows the emphasized text and the one that ignores it."""
    if example.task == "knowledge_conflict":
        return example.target_new or "", example.target_true or ""
    if not (example.answer and example.violation):
        raise PastaError(
            f"Instruction example {example.id!r} has no 'answer' and 'violation' fields; the profiler scores "
            "log p(answer) against log p(violation), so a profiling set must give both."
        )
    return example.answer, example.violation


def scoring_row(model: PastaModel, example: Example) -> ScoringRow:
    prompted = prompt_for(example, "pasta")
    encoded = encode(model.tokenizer, model.render(prompted.messages))
    obeying, ignoring = (model.tokenizer(text, add_special_tokens=False)["input_ids"] for text in contrast(example))
    shared = 0
    while shared < min(len(obeying), len(ignoring)) and obeying[shared] == ignoring[shared]:
        shared += 1
    if shared == min(len(obeying), len(ignoring)):
        raise PastaError(
            f"Example {example.id!r}: one answer is a prefix of the other ({contrast(example)!r}), so no token "
            "tells them apart. Give answers that differ."
        )
    return ScoringRow(
        input_ids=encoded.input_ids + obeying[:shared],
        unbiased=encoded.emphasized + [True] * shared,
        first_affected=encoded.emphasized.index(True),
        obeying=obeying[shared],
        ignoring=ignoring[shared],
    )


def stop_row(model: PastaModel, example: Example) -> ScoringRow:
    """The prompt, then ``example.answer`` (a complete answer that follows the context), scored on ending the turn."""
    if not example.answer:
        raise PastaError(
            f"Example {example.id!r} has no 'answer' field; a stop row needs the complete answer sentence "
            "that follows the context, e.g. \"The capital of France is Rome.\""
        )
    rendered = model.render(prompt_for(example, "pasta").messages)
    encoded = encode(model.tokenizer, rendered)
    answer = model.tokenizer(example.answer, add_special_tokens=False)["input_ids"]
    return ScoringRow(
        input_ids=encoded.input_ids + answer,
        unbiased=encoded.emphasized + [True] * len(answer),
        first_affected=encoded.emphasized.index(True),
        obeying=end_of_turn_token(model, rendered.format),
        ignoring=None,
    )


def end_of_turn_token(model: PastaModel, prompt_format: str) -> int:
    """The token that ends an assistant turn: what the chat template writes after one, or the plain format's next turn."""
    tokenizer = model.tokenizer
    if prompt_format == PLAIN_FORMAT:
        return tokenizer(PLAIN_NEXT_TURN, add_special_tokens=False)["input_ids"][0]
    answer = "Done."
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": answer}], tokenize=False
    )
    after = text[text.rindex(answer) + len(answer) :] if answer in text else ""
    if not after:
        raise PastaError(
            f"The chat template of {model.name} writes nothing after an assistant message, so pasta-rag cannot tell "
            "which token ends a turn; stop rows need one."
        )
    return tokenizer(after, add_special_tokens=False)["input_ids"][0]


@dataclass(frozen=True)
class _Batch:
    """Left-padded rows: the scored position is the last one of every row."""

    input_ids: torch.Tensor  # (rows, length)
    attention_mask: torch.Tensor  # (rows, length)
    position_ids: torch.Tensor  # (rows, length)
    unbiased: torch.Tensor  # (rows, length) bool
    obeying: torch.Tensor  # (rows,)
    ignoring: torch.Tensor  # (rows,) -1 where the row scores the log-odds of ``obeying`` alone
    first_affected: int  # the smallest first affected position over the rows, padded coordinates

    @classmethod
    def of(cls, rows: Sequence[ScoringRow], pad_token_id: int) -> _Batch:
        padded = pad_left([EncodedPrompt(row.input_ids, row.unbiased) for row in rows], pad_token_id)
        length = padded.prompt_len
        return cls(
            padded.input_ids,
            padded.attention_mask,
            (padded.attention_mask.cumsum(-1) - 1).clamp(min=0),
            padded.emphasized,  # here: the keys steering leaves alone
            torch.tensor([row.obeying for row in rows]),
            torch.tensor([-1 if row.ignoring is None else row.ignoring for row in rows]),
            min(length - len(row.input_ids) + row.first_affected for row in rows),
        )

    def margin(self, logits: torch.Tensor, repeats: int = 1) -> torch.Tensor:
        """(rows * repeats,) log p(obeying) - log p(ignoring), or the log-odds of obeying where there is no ignoring
        token, from last-position logits (rows * repeats, vocab)."""
        log_probs = logits.float().log_softmax(dim=-1)
        obeying = self.obeying.repeat_interleave(repeats).to(logits.device)[:, None]
        ignoring = self.ignoring.repeat_interleave(repeats).to(logits.device)[:, None]
        log_p = log_probs.gather(1, obeying)[:, 0]  # (rows * repeats,)
        log_not_p = torch.log(-torch.expm1(log_p))  # log(1 - p), exact near p = 1
        against = torch.where(ignoring[:, 0] >= 0, log_probs.gather(1, ignoring.clamp(min=0))[:, 0], log_not_p)
        return log_p - against


@dataclass
class _OneHeadPerRow(SteeringState):
    """Steers head ``row_heads[i]`` of ``layer`` in row i, and nothing else."""

    layer: int = 0
    row_heads: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))  # (batch,)

    def head_switch(self, layer: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
        if layer != self.layer:
            return None
        return torch.nn.functional.one_hot(self.row_heads, self.num_heads).to(device=device, dtype=dtype)


# --- the two scorers ------------------------------------------------------------------------


LayerDone = Callable[[int, torch.Tensor], None]
"""Called with (layer, (heads,) scores) as soon as a layer is scored: the checkpoint hook."""


def score_heads(
    model: PastaModel,
    rows: Sequence[ScoringRow],
    alpha: float,
    *,
    layers: Sequence[int] | None = None,
    batch_tokens: int = 4096,
    on_layer: LayerDone | None = None,
) -> torch.Tensor:
    """(layers, heads): mean margin gain when each head alone is steered; NaN for layers not asked for."""
    decoder_layers = _decoder_layers(model)
    num_layers, num_heads = model.num_layers, model.num_heads
    layers = list(range(num_layers)) if layers is None else list(layers)
    scores = torch.full((num_layers, num_heads), math.nan)
    chunks = [_Unsteered.run(model, decoder_layers, chunk) for chunk in _chunks(model, rows, num_heads, batch_tokens)]
    for layer in layers:
        gains = [chunk.steered_gains(model, decoder_layers, layer, alpha) for chunk in chunks]  # (rows, heads) each
        scores[layer] = torch.cat(gains).mean(dim=0)
        if on_layer:
            on_layer(layer, scores[layer])
    return scores


def score_heads_plainly(
    model: PastaModel,
    rows: Sequence[ScoringRow],
    alpha: float,
    *,
    layers: Sequence[int] | None = None,
    on_layer: LayerDone | None = None,
) -> torch.Tensor:
    """The plain loop: one full forward per head per example. The reference ``score_heads`` must match."""
    num_layers, num_heads = model.num_layers, model.num_heads
    layers = list(range(num_layers)) if layers is None else list(layers)
    scores = torch.full((num_layers, num_heads), math.nan)
    batches = [_Batch.of([row], model.pad_token_id) for row in rows]
    with torch.no_grad():
        unsteered = [batch.margin(_last_logits(model, batch)) for batch in batches]
        for layer in layers:
            for head in range(num_heads):
                heads = HeadSet.from_pairs([(layer, head)])
                gains = []
                for batch, base in zip(batches, unsteered):
                    state = SteeringState(batch.unbiased, heads, alpha, num_heads)
                    with steering(state):
                        gains.append(batch.margin(_last_logits(model, batch)) - base)
                scores[layer, head] = torch.cat(gains).mean()
            if on_layer:
                on_layer(layer, scores[layer])
    return scores


def _last_logits(model: PastaModel, batch: _Batch) -> torch.Tensor:
    output = model.model(input_ids=batch.input_ids.to(model.device), logits_to_keep=1)
    return output.logits[:, -1]  # (rows, vocab)


@dataclass
class _Unsteered:
    """One chunk of rows run once unsteered: each layer's input, the prefix cache and the base margin."""

    batch: _Batch
    layer_inputs: list[torch.Tensor]  # per layer (rows, length, hidden)
    prefix: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values), each (rows, kv_heads, p, dim)
    base: torch.Tensor  # (rows,)

    @classmethod
    def run(cls, model: PastaModel, decoder_layers: torch.nn.ModuleList, rows: Sequence[ScoringRow]) -> _Unsteered:
        batch = _Batch.of(rows, model.pad_token_id)
        device = model.device
        with torch.no_grad(), _capture_inputs(decoder_layers) as layer_inputs:
            output = model.model(
                input_ids=batch.input_ids.to(device),
                attention_mask=batch.attention_mask.to(device),
                position_ids=batch.position_ids.to(device),
                use_cache=True,
                logits_to_keep=1,
            )
        length = batch.input_ids.shape[1]
        cached = [(layer.keys, layer.values) for layer in output.cache.layers]
        # A sliding-window layer keeps only its window: then recompute the whole row (no shared prefix).
        shared = batch.first_affected if all(keys.shape[2] == length for keys, _ in cached) else 0
        batch = replace(batch, first_affected=shared)
        prefix = [(keys[:, :, :shared], values[:, :, :shared]) for keys, values in cached]
        return cls(batch, list(layer_inputs), prefix, batch.margin(output.logits[:, -1]))

    def steered_gains(
        self, model: PastaModel, decoder_layers: torch.nn.ModuleList, layer: int, alpha: float
    ) -> torch.Tensor:
        """(rows, heads): the margin gain of steering each head of ``layer`` alone."""
        heads, batch, start = model.num_heads, self.batch, self.batch.first_affected
        rows = batch.input_ids.shape[0]
        device = model.device
        state = _OneHeadPerRow(
            batch.unbiased.repeat_interleave(heads, dim=0),  # (rows * heads, length)
            HeadSet.from_layers([layer]),
            alpha,
            heads,
            layer=layer,
            row_heads=torch.arange(heads).repeat(rows),  # row r * heads + h steers head h
        )
        cache = None
        if start:
            cache = DynamicCache(config=model.model.config)
            for index, (keys, values) in enumerate(self.prefix):
                cache.update(keys.repeat_interleave(heads, dim=0), values.repeat_interleave(heads, dim=0), index)
        hidden = self.layer_inputs[layer][:, start:].repeat_interleave(heads, dim=0)  # (rows * heads, suffix, hidden)
        with torch.no_grad(), steering(state), _start_at(decoder_layers, layer, hidden):
            output = model.model(
                input_ids=batch.input_ids[:, start:].repeat_interleave(heads, dim=0).to(device),
                attention_mask=batch.attention_mask.repeat_interleave(heads, dim=0).to(device),
                position_ids=batch.position_ids[:, start:].repeat_interleave(heads, dim=0).to(device),
                cache=cache,
                use_cache=cache is not None,
                logits_to_keep=1,
            )
        margins = batch.margin(output.logits[:, -1], repeats=heads).view(rows, heads)
        return margins - self.base[:, None].to(margins.device)


def _chunks(
    model: PastaModel, rows: Sequence[ScoringRow], num_heads: int, batch_tokens: int
) -> Iterator[list[ScoringRow]]:
    """Rows sorted by length (less padding), cut so one layer's variants stay under ``batch_tokens``."""
    ordered = sorted(rows, key=lambda row: len(row.input_ids))
    chunk: list[ScoringRow] = []
    for row in ordered:
        if chunk and (len(chunk) + 1) * num_heads * len(row.input_ids) > batch_tokens:
            yield chunk
            chunk = []
        chunk.append(row)
    if chunk:
        yield chunk


def _decoder_layers(model: PastaModel) -> torch.nn.ModuleList:
    layers = getattr(model.model.get_decoder(), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) != model.num_layers:
        raise PastaError(
            f"pasta-rag cannot find the decoder layers of {type(model.model).__name__} (expected "
            "model.get_decoder().layers); profile it with score_heads_plainly instead."
        )
    return layers


@contextmanager
def _capture_inputs(layers: torch.nn.ModuleList) -> Iterator[list[torch.Tensor]]:
    """Record the hidden states each decoder layer receives."""
    captured: list[torch.Tensor] = [torch.empty(0)] * len(layers)

    def recorder(index: int):
        def record(module, args, kwargs):
            captured[index] = args[0] if args else kwargs["hidden_states"]

        return record

    handles = [layer.register_forward_pre_hook(recorder(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def _pass_through(hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    return hidden_states


@contextmanager
def _start_at(layers: torch.nn.ModuleList, start: int, hidden: torch.Tensor) -> Iterator[None]:
    """Skip the layers below ``start`` and hand ``hidden`` (their unsteered output) to layer ``start``."""

    def feed(module, args, kwargs):
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    skipped = list(layers)[:start]
    for layer in skipped:
        layer.forward = _pass_through  # an instance attribute: the module keeps its other attributes
    handle = layers[start].register_forward_pre_hook(feed, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
        for layer in skipped:
            del layer.forward


# --- choosing heads -------------------------------------------------------------------------


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


def fingerprint(model_name: str, rows: Sequence[ScoringRow]) -> str:
    """Identifies a task's rows, so a checkpoint is reused only for the same model and data."""
    digest = hashlib.sha256(model_name.encode())
    for row in rows:
        digest.update(json.dumps([row.input_ids, row.unbiased, row.obeying, row.ignoring]).encode())
    return digest.hexdigest()[:16]


@dataclass
class Checkpoint:
    """Per-layer scores saved as they come, so a killed profile run continues where it stopped."""

    path: Path | None
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path | None, model_name: str, alpha: float) -> Checkpoint:
        header = {"model": model_name, "alpha": alpha}
        if path is not None and path.exists():
            data = json.loads(path.read_text())
            if {key: data.get(key) for key in header} == header:
                return cls(path, data)
        return cls(path, {**header, "tasks": {}, "dev": {}})

    def layers_done(self, task: str, task_fingerprint: str) -> dict[int, list[float]]:
        entry = self.data["tasks"].get(task)
        if not entry or entry.get("fingerprint") != task_fingerprint:
            self.data["tasks"][task] = {"fingerprint": task_fingerprint, "layers": {}}
            return {}
        return {int(layer): scores for layer, scores in entry["layers"].items()}

    def record_layer(self, task: str, layer: int, scores: torch.Tensor) -> None:
        self.data["tasks"][task]["layers"][str(layer)] = [round(float(s), 6) for s in scores]
        self.save()

    def dev_result(self, key: str) -> dict | None:
        return self.data["dev"].get(key)

    def record_dev(self, key: str, result: dict) -> None:
        self.data["dev"][key] = result
        self.save()

    def save(self) -> None:
        if self.path is not None:
            self.path.write_text(json.dumps(self.data))


# --- the whole profile: score every task, then choose k and alpha on dev ---------------------


Progress = Callable[[float], None]
"""Advanced by work done, in layer-forwards of one task: a steered layer l costs (layers - l)."""


def profile_cost(num_layers: int) -> int:
    """The work of scoring one task, in the units ``Progress`` counts."""
    return sum(num_layers - layer for layer in range(num_layers))


def profile_tasks(
    model: PastaModel,
    tasks: Mapping[str, Sequence[Example]],
    alpha: float,
    checkpoint: Checkpoint,
    progress: Progress | None = None,
    row: Callable[[PastaModel, Example], ScoringRow] = scoring_row,
) -> dict[str, torch.Tensor]:
    """``{task: (layers, heads) scores}``, resuming from (and saving to) ``checkpoint``; ``row`` scores an example."""
    task_scores = {}
    for name, examples in tasks.items():
        if not examples:
            raise PastaError(f"Profiling task {name!r} has no examples.")
        rows = [row(model, example) for example in examples]
        done = checkpoint.layers_done(name, fingerprint(model.name, rows))
        todo = [layer for layer in range(model.num_layers) if layer not in done]
        if progress and done:
            progress(sum(model.num_layers - layer for layer in done))

        def record(layer: int, scores: torch.Tensor, name: str = name) -> None:
            checkpoint.record_layer(name, layer, scores)
            if progress:
                progress(model.num_layers - layer)

        scores = score_heads(model, rows, alpha, layers=todo, on_layer=record) if todo else None
        table = torch.tensor([done.get(layer, [math.nan] * model.num_heads) for layer in range(model.num_layers)])
        if scores is not None:
            table[todo] = scores[todo]
        task_scores[name] = table
    return task_scores


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
    from .evaluation import evaluate

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
) -> HeadSet:
    """The chosen heads, with the metadata that says how they were found (the ``--heads`` format)."""
    best = ranked[0]
    metadata = {
        "model": model_name,
        "alpha": best.alpha,
        "steer_generated": steer_generated,
        "generated_alpha": best.generated_alpha,  # stated even when null (= alpha), so it is never inherited
        **({"generated_exponent": best.generated_exponent} if best.generated_alpha is not None else {}),
        "k": best.k,
        "method": "pasta-rag profile: one head steered at a time, log-prob margin gain per task, "
        "intersection of per-task top-k; k, alpha (and generated_alpha) chosen on dev by mean(acc - rep)",
        "profile_alpha": profile_alpha,
        "tasks": {name: {"n": task_sizes[name]} for name in task_scores},
        "dev": best.dev,
        "candidates": [
            {"k": c.k, "alpha": c.alpha, "heads": len(c.heads), "objective": round(c.objective, 4), "dev": c.dev}
            | ({"generated_exponent": c.generated_exponent} if c.generated_exponent != 1 else {})
            for c in ranked
        ],
        "head_scores": {
            name: {str(layer): [round(float(s), 4) for s in scores[layer]] for layer in range(scores.shape[0])}
            for name, scores in task_scores.items()
        },
    }
    return HeadSet.from_pairs(best.heads, metadata)
