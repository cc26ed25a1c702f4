"""Base class of every conditioner: `tokenize` (cheap, may run in a data worker) then `forward`.

Shapes: `B` batch, `S` condition steps (tokens or frames), `D` output width.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

ConditionTensor = tuple[torch.Tensor, torch.Tensor]  # (embedding [B, S, D], mask [B, S])


class BaseConditioner(nn.Module):
    """Turns one kind of condition into an embedding and a mask.

    Subclasses set `kind` to the ConditioningAttributes group they read (`text`, `wav` or
    `symbolic`) and implement `tokenize` (list of per-sample values, `None` = null) and `forward`.
    """

    kind: ClassVar[str] = ""

    def __init__(self, output_dim: int):
        super().__init__()
        self.output_dim = output_dim

    def tokenize(self, values: list[Any]) -> Any:
        """Prepare a batch of raw per-sample values (None = null) for `forward`."""
        raise NotImplementedError

    def forward(self, tokens: Any) -> ConditionTensor:
        """Return `(embedding [B, S, D], mask [B, S])`."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        """Device of the conditioner's parameters (CPU when it has none)."""
        for p in self.parameters():
            return p.device
        return torch.device("cpu")
