"""The batched exact scorer: every head of a layer, steered alone, scored in one batch.

Profiling steers every head alone on every example. Done plainly, that is a
full forward per head per example, too slow for a real model; this module is
the fast path ``pasta-rag profile`` runs.

``score_heads`` computes exactly what ``score_heads_plainly`` (one forward per
head per example; the reference in ``tests/reference.py``) computes, without
the work the variants share:

* layers below the steered head compute what the unsteered model computes, so
  every variant starts from the unsteered input of its own layer;
* prompt tokens before the first emphasized token are not changed by steering
  at any layer (every key they see gets the same bias, which softmax cancels),
  so their keys and values come from the unsteered run's cache;
* all heads of a layer times many examples run as one batch, and only the
  last position's logits are computed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch
from transformers import DynamicCache

from ...engine import PastaModel
from ...errors import PastaError
from ...heads import HeadSet
from ...steering import SteeringState, steering
from .rows import ScoringRow, _Batch

LayerDone = Callable[[int, torch.Tensor], None]
"""Called with (layer, (heads,) scores) as soon as a layer is scored: the checkpoint hook."""


def score_heads(
    model: PastaModel,
    rows: Sequence[ScoringRow],
    alpha: float,
    *,
    layers: Sequence[int] | None = None,
    heads: Mapping[int, Sequence[int]] | None = None,
    batch_tokens: int = 4096,
    on_layer: LayerDone | None = None,
) -> torch.Tensor:
    """(layers, heads): mean margin gain when each head alone is steered; NaN for heads not asked for.

    ``heads`` (``{layer: [heads]}``) scores those heads only (screening's candidates); else every head of ``layers``.
    """
    decoder_layers = _decoder_layers(model)
    num_layers, num_heads = model.num_layers, model.num_heads
    layers = list(range(num_layers)) if layers is None else list(layers)
    asked = {layer: list(range(num_heads)) for layer in layers} if heads is None else {
        layer: sorted(heads[layer]) for layer in sorted(heads) if heads[layer]}
    scores = torch.full((num_layers, num_heads), math.nan)
    widest = max((len(h) for h in asked.values()), default=1)
    chunks = [_Unsteered.run(model, decoder_layers, chunk) for chunk in _chunks(model, rows, widest, batch_tokens)]
    for layer, layer_heads in asked.items():
        # (rows, len(layer_heads)) each
        gains = [chunk.steered_gains(model, decoder_layers, layer, alpha, layer_heads) for chunk in chunks]
        scores[layer, layer_heads] = torch.cat(gains).mean(dim=0)
        if on_layer:
            on_layer(layer, scores[layer])
    return scores


@dataclass
class _OneHeadPerRow(SteeringState):
    """Steers head ``row_heads[i]`` of ``layer`` in row i, and nothing else."""

    layer: int = 0
    row_heads: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))  # (batch,)

    def head_switch(self, layer: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
        if layer != self.layer:
            return None
        return torch.nn.functional.one_hot(self.row_heads, self.num_heads).to(device=device, dtype=dtype)


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
        self, model: PastaModel, decoder_layers: torch.nn.ModuleList, layer: int, alpha: float,
        layer_heads: Sequence[int],
    ) -> torch.Tensor:
        """(rows, len(layer_heads)): the margin gain of steering each of ``layer_heads`` alone."""
        heads, batch, start = len(layer_heads), self.batch, self.batch.first_affected
        rows = batch.input_ids.shape[0]
        device = model.device
        state = _OneHeadPerRow(
            batch.unbiased.repeat_interleave(heads, dim=0),  # (rows * heads, length)
            HeadSet.from_layers([layer]),
            alpha,
            model.num_heads,
            layer=layer,
            row_heads=torch.tensor(list(layer_heads)).repeat(rows),  # row r * heads + i steers head layer_heads[i]
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
            "model.get_decoder().layers); profile it with the plain loop (score_heads_plainly in "
            "tests/reference.py) instead."
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
