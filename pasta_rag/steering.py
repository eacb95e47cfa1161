"""The steered attention function, registered with transformers' AttentionInterface.

PASTA adds ``log(alpha)`` to the pre-softmax score of every prompt key that is
NOT emphasized, in the steered heads only. The bias depends on (row, head, key)
and never on the query, so it is kept as a per-key vector (batch, keys) and a
per-head switch (1 or batch, heads), never as a (batch, heads, queries, keys) tensor:

* prefill (many queries): one extra q/k channel carries it. The query gets
  ``c_h`` (1 in steered heads, 0 elsewhere), the key gets ``b_k / scaling``, so
  ``scaling * <q', k'> = scaling * <q, k> + c_h * b_k``. SDPA keeps its fused
  kernels, including ``is_causal``.
* decode (one query) and soft-capped eager attention: a (batch, heads, 1, keys)
  additive mask is small, and it is added after soft-capping as PASTA defines.

Which rows, keys and heads are steered is per-call state in a ContextVar, so
two threads generating on one model never see each other's emphasis, and
with no state every head computes exactly what the wrapped implementation does.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

from .errors import SteeringError
from .heads import HeadSet

STEERABLE_IMPLEMENTATIONS = ("sdpa", "eager")
"""The attention implementations we wrap; ``pasta_<name>`` is the registered steered version."""

DENSE_BASELINE = "pasta_dense_sdpa"
"""The reference repository's approach (a dense (batch, heads, q, k) mask), kept for benchmarks only."""


@dataclass
class SteeringState:
    """What one generate / score call steers.

    emphasized: (batch, prompt_len) bool, True for emphasized prompt tokens,
        in the padded coordinates of the prompt (left padding included).
    steer_generated: also add log(alpha) to the keys at positions >= prompt_len
        (generated tokens, a scored continuation). The paper leaves them alone; then a
        steered head that has written its answer keeps attending to it at full weight
        while the prompt around the emphasis is pushed down, and small models repeat
        the answer until the token limit. With it, steered heads keep reading the
        emphasized text only.
    generated_alpha: with ``steer_generated``, the attention scale of generated keys
        (None: ``alpha``). Pushing them down harder than the prompt (the shipped SmolLM2
        context set uses alpha**1.5) lets fewer steered answers restart after they are
        complete; it is chosen on dev like alpha.
    A row without any emphasized token is not steered at all.
    """

    emphasized: torch.Tensor
    heads: HeadSet
    alpha: float
    num_heads: int
    steer_generated: bool = False
    generated_alpha: float | None = None
    _head_switch: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)
    _kv_offsets: dict[int, int] = field(default_factory=dict, repr=False)
    _key_bias: dict[tuple, torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.alpha > 0:
            raise SteeringError(f"alpha must be > 0 (the paper uses 0.01); got {self.alpha}.")
        if self.generated_alpha is not None and not self.generated_alpha > 0:
            raise SteeringError(f"generated_alpha must be > 0 (None: alpha); got {self.generated_alpha}.")
        if self.emphasized.dim() != 2 or self.emphasized.dtype != torch.bool:
            raise SteeringError("emphasized must be a (batch, prompt_len) bool tensor.")

    @property
    def log_alpha(self) -> float:
        return math.log(self.alpha)

    @property
    def log_generated_alpha(self) -> float:
        return generated_key_bias(self.alpha, self.steer_generated, self.generated_alpha)

    def head_switch(self, layer: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
        """(1, heads) with 1 for the steered heads of ``layer``; None when the layer is not steered.

        A subclass may return (batch, heads) to steer different heads in different rows (the profiler does).
        """
        heads = self.heads.heads.get(layer)
        if not heads:
            return None
        if layer not in self._head_switch:
            switch = torch.zeros(1, self.num_heads, dtype=dtype, device=device)
            switch[0, sorted(heads)] = 1
            self._head_switch[layer] = switch
        return self._head_switch[layer]

    def record_kv_offset(self, kv_length: int, kv_offset: int) -> None:
        """Called by the mask function, which is the one place that knows where the keys start."""
        self._kv_offsets[kv_length] = kv_offset

    def key_bias(self, kv_length: int, batch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(batch, kv_length): log(alpha) on non-emphasized prompt keys of steered rows (and log(generated_alpha)
        on generated keys, with ``steer_generated``), 0 elsewhere."""
        if kv_length not in self._kv_offsets:
            raise SteeringError(
                "pasta-rag could not place the keys of this attention call: the model built no attention mask "
                "for them (a ready-made 4D attention_mask, or a paged cache). Pass a 2D attention_mask."
            )
        offset = self._kv_offsets[kv_length]
        cache_key = (kv_length, offset, batch, device, dtype)  # layers may sit on several devices
        if cache_key not in self._key_bias:
            if len(self._key_bias) > 8:
                self._key_bias.clear()
            self._key_bias[cache_key] = self._build_key_bias(offset, kv_length, batch, device, dtype)
        return self._key_bias[cache_key]

    def row_biases(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, 1) each: the bias of a row's non-emphasized prompt keys and of its generated keys. Every row
        gets the same here; a subclass may steer rows apart (the profiler's dev answers do)."""
        rows = self.emphasized.shape[0]
        return (torch.full((rows, 1), self.log_alpha, device=device),
                torch.full((rows, 1), self.log_generated_alpha, device=device))

    def _build_key_bias(
        self, offset: int, kv_length: int, batch: int, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        emphasized = self.emphasized.to(device)  # (rows, prompt_len)
        rows, prompt_len = emphasized.shape
        prompt_log, generated_log = self.row_biases(device)  # (rows, 1) each
        if batch != rows:
            if batch % rows:
                raise SteeringError(f"Attention batch {batch} does not match the {rows} steered prompts.")
            repeats = batch // rows  # num_return_sequences, beams
            emphasized, prompt_log, generated_log = (t.repeat_interleave(repeats, dim=0)
                                                     for t in (emphasized, prompt_log, generated_log))
        positions = offset + torch.arange(kv_length, device=device)  # (keys,)
        in_prompt = positions < prompt_len
        key_emphasized = emphasized[:, positions.clamp(max=prompt_len - 1)]  # (batch, keys)
        row_steered = emphasized.any(dim=1, keepdim=True)  # (batch, 1)
        prompt_bias = torch.where(in_prompt[None, :] & ~key_emphasized, prompt_log, 0.0)  # (batch, keys)
        generated_bias = torch.where(in_prompt[None, :], 0.0, generated_log)  # (batch, keys)
        return ((prompt_bias + generated_bias) * row_steered).to(dtype)


def generated_key_bias(alpha: float, steer_generated: bool, generated_alpha: float | None) -> float:
    """The bias of generated keys: 0 without ``steer_generated`` (the paper), else log(generated_alpha), which
    None makes log(alpha)."""
    if not steer_generated:
        return 0.0
    return math.log(alpha if generated_alpha is None else generated_alpha)


_current_state: ContextVar[tuple[SteeringState, ...]] = ContextVar("pasta_rag_steering_state", default=())


@contextmanager
def steering(state: SteeringState | Sequence[SteeringState] | None) -> Iterator[None]:
    """Steer every forward pass inside the block (in this thread / task only).

    Several states are several emphasis groups: each steers its own heads toward its own tokens, and
    their biases add (the engine gives each head to one group only).
    """
    states = () if state is None else (state,) if isinstance(state, SteeringState) else tuple(state)
    token = _current_state.set(states)
    try:
        yield
    finally:
        _current_state.reset(token)


# --- the attention functions ----------------------------------------------------------


def _model_eager_attention(module: torch.nn.Module) -> Callable:
    """The model's own eager attention (it may soft-cap), found next to its attention class."""
    function = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if function is None:
        raise SteeringError(f"{type(module).__name__} has no eager_attention_forward that pasta-rag can wrap.")
    return function


def _base_attention(module: torch.nn.Module, base: str) -> Callable:
    return sdpa_attention_forward if base == "sdpa" else _model_eager_attention(module)


def _with_bias_in_mask(
    attention_mask: torch.Tensor | None, bias: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """Fold a (batch, heads, 1, keys) additive bias into the model's mask (None, bool or float)."""
    if attention_mask is None:
        return bias
    if attention_mask.dtype == torch.bool:
        return bias.masked_fill(~attention_mask, torch.finfo(dtype).min)
    return attention_mask + bias


def _steer_through_mask(
    attend: Callable,
    module: torch.nn.Module,
    query: torch.Tensor,  # (batch, heads, q, dim)
    key: torch.Tensor,  # (batch, kv_heads, keys, dim)
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    steered: Sequence[tuple[torch.Tensor, torch.Tensor]],  # per group: switch (batch or 1, heads), bias (batch, keys)
    **kwargs,
):
    bias = sum(s[:, :, None, None] * b[:, None, None, :] for s, b in steered)  # (batch, heads, 1, keys)
    return attend(module, query, key, value, _with_bias_in_mask(attention_mask, bias, query.dtype), **kwargs)


def _steer_through_channel(
    attend: Callable,
    module: torch.nn.Module,
    query: torch.Tensor,  # (batch, heads, q, dim)
    key: torch.Tensor,  # (batch, kv_heads, keys, dim)
    value: torch.Tensor,  # (batch, kv_heads, keys, dim_v)
    attention_mask: torch.Tensor | None,
    steered: Sequence[tuple[torch.Tensor, torch.Tensor]],  # per group: switch (batch or 1, heads), bias (batch, keys)
    scaling: float | None = None,
    **kwargs,
):
    """scaling * <[q, c_h^g.., 0..], [k, b_k^g / scaling.., 0..]> = scaling * <q, k> + sum_g c_h^g * b_k^g.

    One extra channel per emphasis group carries that group's bias.
    """
    dim = query.shape[-1]
    if scaling is None:
        scaling = dim**-0.5
    pad = 8 * math.ceil(len(steered) / 8)  # keeps the head size a multiple of 8, which fused kernels want
    batch, heads, q_len, _ = query.shape
    kv_heads, keys = key.shape[1], key.shape[2]

    query_extra = query.new_zeros(batch, heads, q_len, pad)
    key_extra = key.new_zeros(batch, kv_heads, keys, pad)
    for channel, (switch, key_bias) in enumerate(steered):
        query_extra[..., channel] = switch[:, :, None]
        key_extra[..., channel] = (key_bias / scaling)[:, None, :]
    value_extra = value.new_zeros(*value.shape[:-1], pad + dim - value.shape[-1])

    output, weights = attend(
        module,
        torch.cat([query, query_extra], dim=-1),  # (batch, heads, q, dim + pad)
        torch.cat([key, key_extra], dim=-1),  # (batch, kv_heads, keys, dim + pad)
        torch.cat([value, value_extra], dim=-1),  # (batch, kv_heads, keys, dim + pad)
        attention_mask,
        scaling=scaling,
        **kwargs,
    )
    return output[..., : value.shape[-1]].contiguous(), weights  # (batch, q, heads, dim_v)


def _make_steered_attention(base: str, dense: bool = False) -> Callable:
    def steered_attention(
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **kwargs,
    ):
        attend = _base_attention(module, base)
        layer = getattr(module, "layer_idx", None)
        steered = [] if layer is None else _steered_groups(_current_state.get(), layer, query, key)
        if not steered:
            return attend(module, query, key, value, attention_mask, **kwargs)
        soft_capped = kwargs.get("softcap") is not None
        if dense or soft_capped or query.shape[2] == 1:
            if dense and attention_mask is None:
                attention_mask = _dense_causal_mask(query.shape[2], key.shape[2], query.device)
            return _steer_through_mask(attend, module, query, key, value, attention_mask, steered, **kwargs)
        return _steer_through_channel(attend, module, query, key, value, attention_mask, steered, **kwargs)

    steered_attention.__name__ = f"pasta_{base}_attention"
    return steered_attention


def _steered_groups(
    states: Sequence[SteeringState], layer: int, query: torch.Tensor, key: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(head switch (batch or 1, heads), key bias (batch, keys)) of every group that steers this layer."""
    steered = []
    for state in states:
        switch = state.head_switch(layer, query.device, query.dtype)
        if switch is None:
            continue
        if switch.shape[-1] != query.shape[1]:
            raise SteeringError(f"The head set was built for {switch.shape[-1]} heads; layer {layer} has {query.shape[1]}.")
        steered.append((switch, state.key_bias(key.shape[2], query.shape[0], query.device, query.dtype)))
    return steered


def _dense_causal_mask(q_len: int, keys: int, device: torch.device) -> torch.Tensor:
    """(1, 1, q, keys) bool: the causal mask SDPA would otherwise apply through is_causal."""
    return torch.ones(q_len, keys, dtype=torch.bool, device=device).tril(keys - q_len)[None, None]


def _make_recording_mask(base_mask: Callable) -> Callable:
    def recording_mask(*args, kv_length: int, kv_offset: int = 0, **kwargs):
        for state in _current_state.get():
            state.record_kv_offset(kv_length, kv_offset)
        return base_mask(*args, kv_length=kv_length, kv_offset=kv_offset, **kwargs)

    return recording_mask


def register() -> None:
    """Register ``pasta_sdpa``, ``pasta_eager`` (and the dense benchmark baseline) with transformers."""
    for base, mask in (("sdpa", sdpa_mask), ("eager", eager_mask)):
        AttentionInterface.register(f"pasta_{base}", _make_steered_attention(base))
        AttentionMaskInterface.register(f"pasta_{base}", _make_recording_mask(mask))
    AttentionInterface.register(DENSE_BASELINE, _make_steered_attention("sdpa", dense=True))
    AttentionMaskInterface.register(DENSE_BASELINE, _make_recording_mask(sdpa_mask))


def use_steerable_attention(model: torch.nn.Module) -> None:
    """Switch a loaded model to the steered twin of its attention implementation."""
    current = model.config._attn_implementation
    wanted = steered_implementation(current)
    if getattr(model.config.get_text_config(), "attn_logit_softcapping", None) and wanted == "pasta_sdpa":
        wanted = "pasta_eager"  # SDPA cannot soft-cap; the model's eager attention can
    if current != wanted:
        model.set_attn_implementation(wanted)


def steered_implementation(implementation: str | None) -> str:
    """Map what a user asks for ("sdpa", "eager", None) to the registered steered name."""
    implementation = implementation or "sdpa"
    if implementation.startswith("pasta_"):
        implementation = implementation.removeprefix("pasta_")
    if implementation == DENSE_BASELINE.removeprefix("pasta_"):
        return DENSE_BASELINE
    if implementation not in STEERABLE_IMPLEMENTATIONS:
        raise SteeringError(
            f"pasta-rag cannot steer attn_implementation={implementation!r}: it wraps "
            f"{', '.join(STEERABLE_IMPLEMENTATIONS)} only (kernels such as flash_attention_2 take no per-head bias). "
            "Load the model with attn_implementation='sdpa' (default) or 'eager'."
        )
    return f"pasta_{implementation}"


register()
