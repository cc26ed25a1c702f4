"""Condition dropout for training: classifier-free guidance dropout and per-attribute dropout.

Both act on lists of ConditioningAttributes before tokenization and return new objects.
The published models draw ONE decision per batch (`per_sample=False`, the default).
"""
from __future__ import annotations

import torch
from torch import nn

from jasco.data.attributes import ConditioningAttributes


def _draws(p: float, n: int, per_sample: bool, generator: torch.Generator | None) -> list[bool]:
    if p <= 0:
        return [False] * n
    if per_sample:
        return (torch.rand(n, generator=generator) < p).tolist()
    return [bool(torch.rand(1, generator=generator).item() < p)] * n


class ClassifierFreeGuidanceDropout(nn.Module):
    """With probability `p`, replace ALL conditions of the batch (or of a sample) by null values."""

    def __init__(self, p: float, per_sample: bool = False, seed: int | None = None):
        super().__init__()
        self.p, self.per_sample = p, per_sample
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def forward(self, attributes: list[ConditioningAttributes],
                generator: torch.Generator | None = None) -> list[ConditioningAttributes]:
        """Return new attributes, some nullified (only in training mode); draws from `generator` when given."""
        if not self.training:
            return attributes
        out = []
        draws = _draws(self.p, len(attributes), self.per_sample, self.generator if generator is None else generator)
        for attr, drop in zip(attributes, draws):
            attr = attr.copy()
            if drop:
                attr.nullify_all()
            out.append(attr)
        return out


class AttributeDropout(nn.Module):
    """Drops single conditions: `p = {'text': {'description': 0.}, 'wav': {'self_wav': .3}, ...}`."""

    def __init__(self, p: dict[str, dict[str, float]], active_on_eval: bool = False,
                 per_sample: bool = False, seed: int | None = None):
        super().__init__()
        for kind in p:
            if kind not in ("text", "wav", "symbolic"):
                raise ValueError(f"attribute_dropout: unknown kind {kind!r} (text, wav, symbolic)")
        self.p = {kind: dict(v or {}) for kind, v in p.items()}
        self.active_on_eval, self.per_sample = active_on_eval, per_sample
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def forward(self, attributes: list[ConditioningAttributes],
                generator: torch.Generator | None = None) -> list[ConditioningAttributes]:
        """Return new attributes with each configured condition dropped with its probability
        (drawn from `generator` when given)."""
        if not self.training and not self.active_on_eval:
            return attributes
        generator = self.generator if generator is None else generator
        out = [attr.copy() for attr in attributes]
        for kind, probs in self.p.items():
            for name, p in probs.items():
                for attr, drop in zip(out, _draws(p, len(out), self.per_sample, generator)):
                    if drop and name in getattr(attr, kind):
                        attr.nullify(kind, name)
        return out
