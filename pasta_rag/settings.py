"""The two settings objects of a call: what to steer (``Steering``) and how to decode (``SamplingSettings``).

Each is frozen and validated once, when it is made, the way transformers' ``GenerationConfig`` and
``httpx.Timeout`` carry theirs: a keyword call, a LangChain field, a LlamaIndex option or a server
request builds one, and every layer below passes it along unchanged. A new steering option is one
field and one check here.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, TypedDict

from transformers import GenerationConfig

from .emphasis import CONTEXT, INSTRUCTIONS
from .errors import HeadSetError, PastaError, SteeringError
from .heads import HeadSet

HeadSetLike = HeadSet | Mapping | list | str | os.PathLike
"""A HeadSet, its JSON data, a JSON file, or the name of a set shipped for the model ("context", "instructions")."""


class _Unset:
    """The type of ``UNSET``."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:  # one instance, so that ``is UNSET`` holds after copy and pickle
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __reduce__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()
"""A field not set here: it is inherited (from the named head set's own settings, else from the model's)."""

DEFAULT_ALPHA = 0.01
"""The paper's alpha, for a head set that does not record the one it was chosen with."""


@dataclass(frozen=True)
class Steering:
    """What one call steers. Every field left ``UNSET`` is inherited.

    Resolution (``PastaModel.resolve_steering``): a field set here wins; else, when ``heads`` names a
    head set, that set's own setting (a set records the alpha and generated-token settings it was
    profiled with); else the model's. ``None`` is accepted where a field has no None of its own
    (``heads``, ``alpha``, ``steer_generated``, ``enabled``) and means UNSET there; ``generated_alpha=None``
    means "the same as alpha".
    """

    heads: HeadSetLike | _Unset = UNSET
    """The heads to steer: a head set, or "context" (retrieved passages) / "instructions" (pinned instructions)."""
    alpha: float | _Unset = UNSET
    """Attention scale of non-emphasized prompt keys in the steered heads; smaller steers harder (paper: 0.01)."""
    steer_generated: bool | _Unset = UNSET
    """Also scale the keys of generated tokens (and of a scored continuation) in the steered heads."""
    generated_alpha: float | None | _Unset = UNSET
    """With steer_generated, the scale of generated keys; None: alpha."""
    enabled: bool | _Unset = UNSET
    """False runs the plain model; emphasis is then ignored."""
    select: str | _Unset = UNSET
    """Which of the group's emphasized spans to steer: ``"all"``, or ``"relevant"``: of its separate spans
    (one per retrieved document), those most relevant to the rest of the prompt (``pasta_rag.relevance``)."""
    groups: Mapping[str, Steering] | _Unset = UNSET
    """The settings of the other emphasis groups, by name (these fields are the ``context`` group's). Unset:
    each group is steered with the model's head set of its name (``instructions``) and that set's own settings."""

    def __post_init__(self) -> None:
        for name in ("heads", "alpha", "steer_generated", "enabled", "select", "groups"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, UNSET)
        for name, check in _CHECKS.items():
            value = getattr(self, name)
            if value is not UNSET:
                object.__setattr__(self, name, check(value))

    @classmethod
    def from_head_set(cls, head_set: HeadSet) -> Steering:
        """The head set with the settings its metadata records (the ones it was chosen with)."""
        recorded = {}
        for name in ("alpha", "steer_generated", "generated_alpha"):
            if name in head_set.metadata:
                try:
                    recorded[name] = _CHECKS[name](head_set.metadata[name])
                except SteeringError as error:
                    raise HeadSetError(f"The head set's metadata {name!r} is wrong: {error}") from None
        return cls(heads=head_set, **recorded)

    def override(self, other: Steering | None = None, /, **changes: Any) -> Steering:
        """A copy where every field set in ``other`` (then in ``changes``) replaces this one's."""
        given = other.given() if other is not None else {}
        given.update(Steering(**changes).given())  # checked, and None read as each field reads it
        return dataclasses.replace(self, **given) if given else self

    @property
    def named_groups(self) -> Mapping[str, Steering]:
        """The other groups' settings, by name (none when ``groups`` is unset)."""
        return self.groups if self.groups is not UNSET else MappingProxyType({})  # type: ignore[return-value]

    def given(self) -> dict[str, Any]:
        """The fields set here, by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not UNSET}


def _checked_heads(heads: Any) -> HeadSetLike:
    if isinstance(heads, (HeadSet, Mapping, list, str, os.PathLike)):
        return heads
    raise SteeringError(
        f"heads must be a HeadSet, {{'layer': [heads]}}, a list of layers, a JSON file or 'context' / "
        f"'instructions', got {type(heads).__name__}."
    )


def _checked_alpha(alpha: Any) -> float:
    if not _is_scale(alpha):
        raise SteeringError(f"alpha must be > 0 (the paper uses 0.01; smaller steers harder), got {alpha!r}.")
    return float(alpha)


def _checked_steer_generated(steer_generated: Any) -> bool:
    if not isinstance(steer_generated, bool):
        raise SteeringError(
            f"steer_generated must be True, False or None (None: the head set's choice), got {steer_generated!r}."
        )
    return steer_generated


def _checked_generated_alpha(generated_alpha: Any) -> float | None:
    if generated_alpha is None:
        return None
    if not _is_scale(generated_alpha):
        raise SteeringError(
            f"generated_alpha must be a number > 0 (the attention scale of generated tokens in steered heads, "
            f"used with steer_generated) or None (alpha), got {generated_alpha!r}."
        )
    return float(generated_alpha)


def _checked_enabled(enabled: Any) -> bool:
    if not isinstance(enabled, bool):
        raise SteeringError(f"enabled (steer) must be True or False, got {enabled!r}.")
    return enabled


SELECTIONS = ("all", "relevant")


def _checked_select(select: Any) -> str:
    if select not in SELECTIONS:
        raise SteeringError(
            f"select must be 'all' (every emphasized span) or 'relevant' (the emphasized passages most relevant "
            f"to the question), got {select!r}."
        )
    return select


def _checked_groups(groups: Any) -> Mapping[str, Steering]:
    if not isinstance(groups, Mapping):
        raise SteeringError(f"groups must map group names to Steering objects, got {type(groups).__name__}.")
    for name, group in groups.items():
        if not isinstance(name, str) or not name or name == CONTEXT:
            raise SteeringError(
                f"groups names the other emphasis groups ({INSTRUCTIONS!r}, or your own), not {name!r}: the "
                "context group's settings are the Steering's own fields."
            )
        if not isinstance(group, Steering) or group.groups is not UNSET:
            raise SteeringError(f"groups[{name!r}] must be a Steering without groups of its own, got {group!r}.")
    return MappingProxyType(dict(groups))


_CHECKS = {
    "heads": _checked_heads,
    "alpha": _checked_alpha,
    "steer_generated": _checked_steer_generated,
    "generated_alpha": _checked_generated_alpha,
    "enabled": _checked_enabled,
    "select": _checked_select,
    "groups": _checked_groups,
}


def _is_scale(value: Any) -> bool:
    """An attention scale: a positive number (not a bool, which Python counts as one)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


BUILT_IN_STEERING = Steering(alpha=DEFAULT_ALPHA, steer_generated=False, generated_alpha=None, enabled=True,
                             select="all")
"""What a model without a head set's settings steers with: the paper's method."""

CHAIN_STEERING = Steering(select="relevant")
"""What the framework integrations steer with unless told otherwise. A chain marks every document it
retrieved, and steering all of them pushes the question down with them; so of the emphasized
passages only those that answer the question are steered. A caller who marks spans by hand gets the
core's ``select="all"``."""


class SamplingKwargs(TypedDict, total=False):
    """The decoding keywords generate() and stream() take; see SamplingSettings."""

    max_new_tokens: int
    min_new_tokens: int
    temperature: float
    top_p: float
    top_k: int | None
    repetition_penalty: float
    stop: Sequence[str] | None
    seed: int | None


@dataclass(frozen=True)
class SamplingSettings:
    """Decoding settings, by the names transformers users know. temperature 0 means greedy."""

    max_new_tokens: int = 256
    min_new_tokens: int = 0
    """Benchmarks set it to max_new_tokens so every variant decodes the same number of tokens."""
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int | None = None
    repetition_penalty: float = 1.0
    stop: Sequence[str] | None = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        stop = self.stop or ()
        if isinstance(stop, str):
            stop = (stop,)
        object.__setattr__(self, "stop", tuple(stop))  # None, a string, a list or a tuple
        _check_sampling(self)

    def generation_config(self, base: GenerationConfig, pad_token_id: int) -> GenerationConfig:
        sample = self.temperature > 0
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            min_new_tokens=self.min_new_tokens or None,
            do_sample=sample,
            temperature=self.temperature if sample else None,
            top_p=self.top_p if sample else None,
            top_k=self.top_k if sample else None,
            repetition_penalty=self.repetition_penalty,
            pad_token_id=pad_token_id,
            eos_token_id=base.eos_token_id,
            bos_token_id=base.bos_token_id,
        )


def _check_sampling(settings: SamplingSettings) -> None:
    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    def is_number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    if not is_int(settings.max_new_tokens) or settings.max_new_tokens < 1:
        raise PastaError(f"max_new_tokens must be at least 1, got {settings.max_new_tokens!r}.")
    if not is_int(settings.min_new_tokens) or not 0 <= settings.min_new_tokens <= settings.max_new_tokens:
        raise PastaError(
            f"min_new_tokens must be between 0 and max_new_tokens ({settings.max_new_tokens}), "
            f"got {settings.min_new_tokens!r}."
        )
    if not is_number(settings.temperature) or settings.temperature < 0:
        raise PastaError(f"temperature must be >= 0 (0 = greedy), got {settings.temperature!r}.")
    if not is_number(settings.top_p) or not 0 < settings.top_p <= 1:
        raise PastaError(f"top_p must be in (0, 1], got {settings.top_p!r}.")
    if settings.top_k is not None and (not is_int(settings.top_k) or settings.top_k < 1):
        raise PastaError(f"top_k must be at least 1 (or None: no top-k filtering), got {settings.top_k!r}.")
    if not is_number(settings.repetition_penalty) or settings.repetition_penalty <= 0:
        raise PastaError(f"repetition_penalty must be > 0 (1 = none), got {settings.repetition_penalty!r}.")
    if not all(isinstance(s, str) and s for s in settings.stop):  # type: ignore[union-attr]
        raise PastaError(f"stop must be non-empty strings, got {list(settings.stop)!r}.")  # type: ignore[arg-type]
    if settings.seed is not None and not is_int(settings.seed):
        raise PastaError(f"seed must be an int or None, got {settings.seed!r}.")


STEER = "steer"
"""The keyword shortcut of ``Steering.enabled`` (``generate(..., steer=False)``)."""


def steering_keywords() -> frozenset[str]:
    """The keyword arguments that set a Steering field: every field's name, and ``steer`` for ``enabled``."""
    return frozenset(f.name for f in dataclasses.fields(Steering)) | {STEER}


def split_options(
    steering: Steering | None, options: Mapping[str, Any]
) -> tuple[Steering, dict[str, Any]]:
    """A call's Steering (``steering`` overridden by the steering keywords) and its other keywords.

    So ``generate(prompt, alpha=0.05)`` and ``generate(prompt, steering=Steering(alpha=0.05))`` are one call.
    """
    if steering is not None and not isinstance(steering, Steering):
        raise SteeringError(f"steering must be a pasta_rag.Steering, got {type(steering).__name__}.")
    keywords = steering_keywords()
    given = {("enabled" if name == STEER else name): value for name, value in options.items() if name in keywords}
    if STEER in options and "enabled" in options:
        raise SteeringError("Pass steer or enabled, not both (they are the same setting).")
    rest = {name: value for name, value in options.items() if name not in keywords}
    return (steering or Steering()).override(**given), rest


def sampling_settings(options: Mapping[str, Any]) -> SamplingSettings:
    """SamplingSettings from keywords, refusing a name it does not know with the names it does."""
    known = {f.name for f in dataclasses.fields(SamplingSettings)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(
            f"Unknown keyword argument(s) {unknown}. Decoding settings are {sorted(known)}; "
            f"steering settings are {sorted(steering_keywords())} (or steering=Steering(...))."
        )
    return SamplingSettings(**options)
