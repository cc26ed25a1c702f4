"""Metrics of training steps kept on the device until a logging point, then read in one transfer.

Reading a device tensor on the host (`.item()`, `float(t)`, `if t:`) makes the host wait for the
device's queue to drain: on a GPU, once per step, that stalls the step pipeline. The train loop
adds each update's metrics (0-d tensors) here and reads them only where it logs
(`logging.log_updates`) and at the end of a stage, together with what is needed to report a
non-finite loss: the update and the batch's items.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class PendingStep:
    """One update's (or batch's) metrics: 0-d tensors or floats; `items` describe its batch."""

    step: int
    metrics: dict[str, torch.Tensor | float]
    items: list[Any]
    weight: float = 1.0


class PendingMetrics:
    """Steps whose metrics are not read yet, in order."""

    def __init__(self) -> None:
        self.steps: list[PendingStep] = []

    def __len__(self) -> int:
        return len(self.steps)

    def add(self, step: int, metrics: dict[str, torch.Tensor | float], items: list[Any], weight: float = 1.0) -> None:
        """Keep a step's metrics (tensors are detached, not read)."""
        metrics = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in metrics.items()}
        self.steps.append(PendingStep(step, metrics, list(items), weight))

    def read(self) -> list[PendingStep]:
        """Every pending step with its metrics as floats, read with one device-to-host transfer; empties the list."""
        steps, self.steps = self.steps, []
        tensors = [v for s in steps for v in s.metrics.values() if isinstance(v, torch.Tensor)]
        values = iter([])
        if tensors:
            device = tensors[0].device
            values = iter(torch.stack([t.reshape(()).to(device, torch.float64) for t in tensors]).tolist())
        for s in steps:
            s.metrics = {k: next(values) if isinstance(v, torch.Tensor) else float(v) for k, v in s.metrics.items()}
        return steps
