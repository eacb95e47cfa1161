"""Head sets: which (layer, head) pairs PASTA steers.

The file format is the reference repository's: ``{"layer": [heads]}`` as JSON,
or a plain list of layers meaning every head of those layers. A shipped or
profiled file may wrap it as ``{"heads": {...}, "metadata": {...}}`` so that it
says where the set came from.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import HeadSetError


@dataclass(frozen=True)
class HeadSet:
    """An immutable set of attention heads, by layer.

    ``all_heads_of`` layers are resolved against the model in ``resolve``;
    until then the set only records them, so that a file can say "layers 15-29"
    without knowing the head count.
    """

    heads: Mapping[int, frozenset[int]] = field(default_factory=dict)
    all_heads_of: frozenset[int] = frozenset()
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[int, int]], metadata: Mapping[str, Any] | None = None) -> HeadSet:
        by_layer: dict[int, set[int]] = {}
        for layer, head in pairs:
            by_layer.setdefault(int(layer), set()).add(int(head))
        return cls({layer: frozenset(heads) for layer, heads in by_layer.items()}, metadata=metadata or {})

    @classmethod
    def from_layers(cls, layers: Iterable[int], metadata: Mapping[str, Any] | None = None) -> HeadSet:
        return cls(all_heads_of=frozenset(int(layer) for layer in layers), metadata=metadata or {})

    @classmethod
    def from_json(cls, data: Any) -> HeadSet:
        """Read the reference format, a list of layers, or the wrapped ``{"heads", "metadata"}`` form."""
        metadata: dict[str, Any] = {}
        if isinstance(data, dict) and "heads" in data:
            metadata = dict(data.get("metadata") or {})
            data = data["heads"]
        if isinstance(data, list):
            if not all(isinstance(layer, int) for layer in data):
                raise HeadSetError(f"A head set given as a list must list layer numbers (ints), got {data!r}.")
            return cls.from_layers(data, metadata)
        if isinstance(data, dict):
            pairs = []
            for layer, heads in data.items():
                try:
                    layer_index = int(layer)
                except ValueError:
                    raise HeadSetError(f"Head set key {layer!r} is not a layer number.") from None
                if not isinstance(heads, list) or not all(isinstance(h, int) for h in heads):
                    raise HeadSetError(f"Layer {layer} of the head set must map to a list of head numbers.")
                pairs.extend((layer_index, head) for head in heads)
            return cls.from_pairs(pairs, metadata)
        raise HeadSetError(
            'A head set must be {"layer": [heads]} or a list of layers; '
            f"got a {type(data).__name__}."
        )

    @classmethod
    def load(cls, path: str | Path) -> HeadSet:
        path = Path(path)
        try:
            return cls.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            raise HeadSetError(f"Head set file {path} does not exist.") from None
        except json.JSONDecodeError as error:
            raise HeadSetError(f"Head set file {path} is not valid JSON: {error}.") from None

    def to_json(self) -> dict[str, Any]:
        heads = {str(layer): sorted(heads) for layer, heads in sorted(self.heads.items())}
        if self.all_heads_of:
            raise HeadSetError("Resolve the head set against a model before saving it (HeadSet.resolve).")
        return {"heads": heads, "metadata": dict(self.metadata)} if self.metadata else heads

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    def resolve(self, num_layers: int, num_heads: int) -> HeadSet:
        """Expand whole layers and check every pair against the model's shape."""
        for layer in sorted(set(self.heads) | self.all_heads_of):
            if not 0 <= layer < num_layers:
                raise HeadSetError(
                    f"Head set names layer {layer}, but the model has layers 0..{num_layers - 1}. "
                    "Was this head set profiled for another model?"
                )
        for layer, heads in self.heads.items():
            bad = sorted(h for h in heads if not 0 <= h < num_heads)
            if bad:
                raise HeadSetError(
                    f"Head set names head(s) {bad} of layer {layer}, but the model has heads 0..{num_heads - 1}. "
                    "Was this head set profiled for another model?"
                )
        pairs = [(layer, head) for layer, heads in self.heads.items() for head in heads]
        pairs += [(layer, head) for layer in self.all_heads_of for head in range(num_heads)]
        return HeadSet.from_pairs(pairs, self.metadata)

    def pairs(self) -> list[tuple[int, int]]:
        return sorted((layer, head) for layer, heads in self.heads.items() for head in heads)

    def __len__(self) -> int:
        if self.all_heads_of:
            raise HeadSetError("Resolve the head set against a model before counting its heads.")
        return sum(len(heads) for heads in self.heads.values())

    def __bool__(self) -> bool:
        return bool(self.all_heads_of) or any(self.heads.values())


PURPOSES = ("context", "instructions")
"""The shipped sets of a model, by what they are profiled for.

``context`` (the default): emphasized retrieved passages and knowledge conflicts, short and long.
``instructions``: emphasized instructions (format, wording). Heads that pull a model onto a passage
make it loop on an emphasized instruction, and the reverse heads do not find a passage lost among
others, so one set cannot serve both (measured: README, "Head sets and the profiler").
"""


@functools.lru_cache(maxsize=None)
def shipped_head_set(name: str, purpose: str = "context") -> HeadSet | None:
    """The head set shipped for model ``name`` and ``purpose``, or None.

    Read once per process: a call that names ``heads="instructions"`` (or emphasizes the instructions
    group) resolves it on every call.

    Files: ``pasta_rag/head_sets/<name>.json`` (context) and ``<name>.<purpose>.json``.
    """
    if purpose not in PURPOSES:
        raise HeadSetError(f"Unknown head set purpose {purpose!r}; shipped sets are {', '.join(PURPOSES)}.")
    file_name = f"{name}.json" if purpose == "context" else f"{name}.{purpose}.json"
    resource = resources.files("pasta_rag").joinpath("head_sets", file_name)
    if not resource.is_file():
        return None
    return HeadSet.from_json(json.loads(resource.read_text()))


def as_head_set(value: HeadSet | Mapping | list | str | Path) -> HeadSet:
    """Accept what users pass: a HeadSet, the JSON data itself, or a path to a JSON file."""
    if isinstance(value, HeadSet):
        return value
    if isinstance(value, (str, Path)):
        return HeadSet.load(value)
    return HeadSet.from_json(value)
