"""Dev answers of many candidates in one batch, the prompt before the emphasis computed once per example.

Choosing k and alpha asks every candidate for greedy answers to the same dev
examples, and most of an answer's time is its prompt. Two things are shared:

* steering changes nothing before the first emphasized token (every key such a
  token sees gets the same bias, which softmax cancels), so that part of a
  prompt has the same keys and values under every candidate and the unsteered
  model: it is computed once per example and given to each row as its cache;
* the rows of one batch may steer different heads with different alphas
  (``RowSteering``), so one ``generate`` call answers several candidates, and a
  batch stays full when only a few candidates are left to answer.

A batch row is ``[padding][shared prefix][padding][rest of the prompt]``: the
prefixes end at one column (the end of the cache), the rests end at the last
prompt column, and rows are packed by the length of their rest, so little is
padding. The attention mask skips both paddings and positions are counted from
it, so each row computes what it computes alone (up to float rounding).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, StoppingCriteriaList

from ...batching import answer_text, check_window
from ...engine import PastaModel
from ...heads import HeadSet
from ...settings import SamplingSettings
from ...steering import SteeringState, generated_key_bias, steering
from ...stopping import StopOnText
from ...tokens import EncodedPrompt

ROW_TOKENS = 4096
"""Rows x the longest rest of the prompt in one batch: what one batched prefill computes at most."""
MAX_ROWS = 32
"""Rows in one batch at most (every row keeps its own cache while it decodes)."""


@dataclass(frozen=True)
class Steered:
    """How a row is steered: a candidate's heads and alpha, and the scale of generated keys."""

    heads: HeadSet
    alpha: float
    steer_generated: bool = False
    generated_alpha: float | None = None
    """None: ``alpha`` (with ``steer_generated``)."""

    @property
    def log_generated_alpha(self) -> float:
        return generated_key_bias(self.alpha, self.steer_generated, self.generated_alpha)


@dataclass(frozen=True)
class Row:
    """One answer to generate: an encoded prompt (the engine's own encoding) steered one way."""

    prompt: EncodedPrompt
    steered: Steered
    sampling: SamplingSettings

    @property
    def shared(self) -> int:
        """Leading tokens every steering computes alike: those before the first emphasized token (the last
        prompt token is never among them: generation starts from it)."""
        emphasized = self.prompt.emphasized
        first = emphasized.index(True) if any(emphasized) else len(emphasized)
        return min(first, len(self.prompt.input_ids) - 1)

    @property
    def rest(self) -> int:
        return len(self.prompt.input_ids) - self.shared


@dataclass
class RowSteering(SteeringState):
    """Row i steered as ``rows[i]`` says: its own heads, alpha and scale of generated keys."""

    rows: Sequence[Steered] = ()

    def head_switch(self, layer: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
        """(rows, heads): 1 for the heads row i steers in ``layer``; None when no row steers it."""
        if layer not in self._head_switch:
            switch = torch.zeros(len(self.rows), self.num_heads)
            for row, steered in enumerate(self.rows):
                switch[row, sorted(steered.heads.heads.get(layer, ()))] = 1
            self._head_switch[layer] = switch if bool(switch.any()) else None
        switch = self._head_switch[layer]
        return None if switch is None else switch.to(device=device, dtype=dtype)

    def row_biases(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, 1) each: row i's log(alpha) on non-emphasized prompt keys and its bias on generated keys."""
        return (torch.tensor([[math.log(s.alpha)] for s in self.rows], device=device),
                torch.tensor([[s.log_generated_alpha] for s in self.rows], device=device))


@dataclass
class PrefixCache:
    """The keys and values of the shared prefixes computed lately, per layer, for rows to start from."""

    size: int = 8
    """Prefixes kept besides those of the batch at hand: the rows of one prompt are packed next to each other,
    so a prompt whose rows span two batches is still here for the second."""
    _kept: OrderedDict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=OrderedDict)

    def get(self, model: PastaModel, prefixes: Sequence[tuple[int, ...]]) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Per prefix, per layer (keys, values), each (kv_heads, len(prefix), dim); the missing ones in one pass."""
        missing = list(dict.fromkeys(p for p in prefixes if p not in self._kept))  # every prefix holds a token
        if missing:
            for prefix, layers in zip(missing, _unsteered_prefixes(model, missing)):
                self._kept[prefix] = layers
        for prefix in prefixes:
            self._kept.move_to_end(prefix)
        while len(self._kept) > max(self.size, len(set(prefixes))):
            self._kept.popitem(last=False)
        return [self._kept[prefix] for prefix in prefixes]


def _unsteered_prefixes(model: PastaModel, prefixes: Sequence[tuple[int, ...]]) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """One left-padded unsteered forward; each prefix's own columns of every layer's cache."""
    length = max(len(p) for p in prefixes)
    input_ids = torch.full((len(prefixes), length), model.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prefixes), length), dtype=torch.long)
    for row, prefix in enumerate(prefixes):
        input_ids[row, length - len(prefix):] = torch.tensor(prefix)
        attention_mask[row, length - len(prefix):] = 1
    with torch.no_grad():
        output = model.model(
            input_ids=input_ids.to(model.device),
            attention_mask=attention_mask.to(model.device),
            position_ids=(attention_mask.cumsum(-1) - 1).clamp(min=0).to(model.device),
            use_cache=True,
            logits_to_keep=1,
        )
    layers = output.cache.layers
    return [[(layer.keys[row, :, length - len(prefix):].clone(), layer.values[row, :, length - len(prefix):].clone())
             for layer in layers] for row, prefix in enumerate(prefixes)]


def batches(rows: Sequence[Row], row_tokens: int = ROW_TOKENS, max_rows: int = MAX_ROWS) -> list[list[int]]:
    """Row indices per batch: ordered by the length of their rest (rows of one prompt next to each other, as
    their answers use the same settings), cut where rows x the longest rest would pass ``row_tokens``."""
    order = sorted(range(len(rows)), key=lambda i: (rows[i].rest, rows[i].prompt.input_ids, rows[i].sampling.stop))
    cut: list[list[int]] = []
    for index in order:
        current = cut[-1] if cut else None
        fits = (current is not None and len(current) < max_rows and rows[current[0]].sampling == rows[index].sampling
                and (len(current) + 1) * rows[index].rest <= row_tokens)
        if fits:
            current.append(index)
        else:
            cut.append([index])
    return cut


def answer_rows(model: PastaModel, rows: Sequence[Row], done: Callable[[list[int], list[str]], None] | None = None,
                prefixes: PrefixCache | None = None) -> list[str]:
    """The greedy answer text of every row, in order; ``done(indices, texts)`` after each batch."""
    prefixes = PrefixCache() if prefixes is None else prefixes
    answers: list[str] = [""] * len(rows)
    for indices in batches(rows, ROW_TOKENS, MAX_ROWS):
        texts = _answer_batch(model, [rows[i] for i in indices], prefixes)
        for index, text in zip(indices, texts):
            answers[index] = text
        if done:
            done(indices, texts)
    return answers


def _answer_batch(model: PastaModel, rows: Sequence[Row], prefixes: PrefixCache) -> list[str]:
    sampling = rows[0].sampling
    shared = max(row.shared for row in rows) if _can_share(model, rows, sampling.max_new_tokens) else 0
    own = [row.shared if shared else 0 for row in rows]  # each row's cached columns
    rest = max(len(row.prompt.input_ids) - cached for row, cached in zip(rows, own))
    length = shared + rest
    check_window(model, length, sampling.max_new_tokens)
    input_ids = torch.full((len(rows), length), model.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    emphasized = torch.zeros((len(rows), length), dtype=torch.bool)
    for i, (row, cached) in enumerate(zip(rows, own)):
        ids, flags = row.prompt.input_ids, row.prompt.emphasized
        for start, stop, first in ((shared - cached, shared, 0), (length - (len(ids) - cached), length, cached)):
            input_ids[i, start:stop] = torch.tensor(ids[first:first + stop - start], dtype=torch.long)
            attention_mask[i, start:stop] = 1
            emphasized[i, start:stop] = torch.tensor(flags[first:first + stop - start], dtype=torch.bool)
    cache = _shared_cache(model, rows, shared, prefixes) if shared else None
    state = RowSteering(emphasized, _union(rows), rows[0].steered.alpha, model.num_heads, rows=[r.steered for r in rows])
    config = sampling.generation_config(model.model.generation_config, model.pad_token_id)
    stopper = StopOnText(model.tokenizer, length, sampling.stop)
    with torch.no_grad(), steering(state):
        output = model.model.generate(
            input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device), cache=cache,
            generation_config=config, stopping_criteria=StoppingCriteriaList([stopper]),
        )
    generated = output[:, length:].cpu()
    return [answer_text(model, row.tolist(), sampling.stop)[0] for row in generated]


def _shared_cache(model: PastaModel, rows: Sequence[Row], shared: int, prefixes: PrefixCache) -> DynamicCache:
    """A cache of ``shared`` columns: each row's prefix right-aligned at its end, zeros (masked) before it."""
    found = prefixes.get(model, [tuple(row.prompt.input_ids[:row.shared]) for row in rows])
    cache = DynamicCache(config=model.model.config)
    for layer in range(len(found[0])):
        keys, values = found[0][layer]
        shape = (len(rows), keys.shape[0], shared)
        all_keys = keys.new_zeros(*shape, keys.shape[-1])  # (rows, kv_heads, shared, dim)
        all_values = values.new_zeros(*shape, values.shape[-1])
        for i, layers in enumerate(found):
            row_keys, row_values = layers[layer]
            all_keys[i, :, shared - row_keys.shape[1]:] = row_keys
            all_values[i, :, shared - row_values.shape[1]:] = row_values
        cache.update(all_keys, all_values, layer)
    return cache


def _can_share(model: PastaModel, rows: Sequence[Row], new_tokens: int) -> bool:
    """Whether a cached prefix gives what a whole prompt gives: every row has one, and a sliding-window layer
    (which keeps only its window) holds the whole batch row and its answer."""
    config = model.model.config.get_text_config()
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    sliding = window is not None and ("sliding_attention" in layer_types if layer_types is not None
                                      else getattr(config, "use_sliding_window", True))
    longest = max(row.shared for row in rows) + max(row.rest for row in rows)  # a row's columns, paddings included
    fits = longest + new_tokens <= model.context_window  # else a row that fits alone is refused for the paddings
    return fits and all(row.shared for row in rows) and (not sliding or longest + new_tokens <= window)


def _union(rows: Sequence[Row]) -> HeadSet:
    return HeadSet.from_pairs(sorted({pair for row in rows for pair in row.steered.heads.pairs()}))
