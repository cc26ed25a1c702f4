"""ConditionProvider: runs every conditioner over a batch of ConditioningAttributes."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from jasco.data.attributes import ConditioningAttributes
from jasco.modules.conditioners.base import BaseConditioner, ConditionTensor


class ConditionProvider(nn.Module):
    """Holds the conditioners by name; `tokenize` then `forward`, like each conditioner."""

    def __init__(self, conditioners: dict[str, BaseConditioner]):
        super().__init__()
        self.conditioners = nn.ModuleDict(conditioners)

    def names(self, kind: str) -> list[str]:
        """Names of the conditioners reading one kind of attribute (`text`, `wav`, `symbolic`)."""
        return [name for name, c in self.conditioners.items() if c.kind == kind]

    def tokenize(self, attributes: list[ConditioningAttributes]) -> dict[str, Any]:
        """Tokenize every condition of the batch; a condition absent from a sample is null."""
        tokens = {}
        for name, conditioner in self.conditioners.items():
            group = conditioner.kind
            values = [getattr(attr, group).get(name) for attr in attributes]
            tokens[name] = conditioner.tokenize(values)
        return tokens

    def forward(self, tokens: dict[str, Any]) -> dict[str, ConditionTensor]:
        """Tokens → `{name: (embedding [B, S, D], mask [B, S])}`."""
        return {name: self.conditioners[name](tok) for name, tok in tokens.items()}

    def condition_tensors(self, attributes: list[ConditioningAttributes]) -> dict[str, ConditionTensor]:
        """`forward(tokenize(attributes))`."""
        return self(self.tokenize(attributes))

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters that require gradients (the frozen codec and T5 are excluded)."""
        return [p for p in self.parameters() if p.requires_grad]
