"""The profile's progress file: scores saved as they come, reused only for the same model, alpha and data.

A full profile of a real model runs for a long time; a run that is killed
continues from this file instead of starting again, and a changed model,
alpha or task set never reuses stale scores (the fingerprint tells them apart).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .rows import ScoringRow


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
        return cls(path, {**header, "tasks": {}, "dev_answers": {}})

    def layers_done(self, task: str, task_fingerprint: str) -> dict[int, list[float]]:
        entry = self.data["tasks"].get(task)
        if not entry or entry.get("fingerprint") != task_fingerprint:
            self.data["tasks"][task] = {"fingerprint": task_fingerprint, "layers": {}}
            return {}
        return {int(layer): scores for layer, scores in entry["layers"].items()}

    def record_layer(self, task: str, layer: int, scores: torch.Tensor) -> None:
        self.data["tasks"][task]["layers"][str(layer)] = [round(float(s), 6) for s in scores]
        self.save()

    def dev_answers(self, key: str, dev_set: str) -> dict[str, list[int]]:
        """``{example index: [acc hit, rep hit]}`` of one candidate on one dev set, answered so far; filled in
        place (then ``save``)."""
        return self.data.setdefault("dev_answers", {}).setdefault(key, {}).setdefault(dev_set, {})

    def save(self) -> None:
        if self.path is not None:
            self.path.write_text(json.dumps(self.data))
