"""ConditionFuser: how each condition tensor enters the network (prepend, sum, cross, ...).

Shapes: `B` batch, `T` input steps, `S` condition steps, `D` model width.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from jasco.modules.conditioners.base import ConditionTensor
from jasco.modules.transformer import sin_embedding

FUSE_METHODS = ("sum", "prepend", "cross", "input_interpolate", "ignore")


class ConditionFuser(nn.Module):
    """Fuses condition tensors with the network input.

    Methods: `prepend` (concatenate before the input along time), `sum` (add, aligned at the
    start), `cross` (concatenate along the token axis into the cross-attention source),
    `input_interpolate` (resample to the input length, then add), `ignore` (left to the caller:
    JASCO concatenates its temporal controls to the input features itself).
    """

    def __init__(self, fuse2cond: dict[str, list[str]], cross_attention_pos_emb: bool = False,
                 cross_attention_pos_emb_scale: float = 1.0):
        super().__init__()
        unknown = set(fuse2cond) - set(FUSE_METHODS)
        if unknown:
            raise ValueError(f"Unknown fuse methods {sorted(unknown)}; choose from {FUSE_METHODS}")
        self.fuse2cond = {k: list(v) for k, v in fuse2cond.items()}
        self.cond2fuse = {c: method for method, conds in self.fuse2cond.items() for c in conds}
        self.cross_attention_pos_emb = cross_attention_pos_emb
        self.cross_attention_pos_emb_scale = cross_attention_pos_emb_scale

    def forward(self, x: torch.Tensor, conditions: dict[str, ConditionTensor]
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Fuse `conditions` into `x [B, T, D]`; returns `(x', cross_src [B, S, D] or None)`."""
        unknown = set(conditions) - set(self.cond2fuse)
        if unknown:
            raise ValueError(f"Conditions {sorted(unknown)} have no fuse method; add them to the "
                             f"fuser config (one of {FUSE_METHODS}).")
        cross: list[torch.Tensor] = []
        for name, (cond, _mask) in conditions.items():
            method = self.cond2fuse[name]
            if method == "sum":
                length = min(cond.shape[1], x.shape[1])
                x = torch.cat([x[:, :length] + cond[:, :length], x[:, length:]], dim=1)
            elif method == "input_interpolate":
                cond = F.interpolate(cond.transpose(1, 2), size=x.shape[1]).transpose(1, 2)
                x = x + cond
            elif method == "prepend":
                x = torch.cat([cond, x], dim=1)
            elif method == "cross":
                cross.append(cond)
        if not cross:
            return x, None
        src = torch.cat(cross, dim=1)
        if self.cross_attention_pos_emb:
            positions = torch.arange(src.shape[1], device=src.device)
            src = src + self.cross_attention_pos_emb_scale * sin_embedding(positions, src.shape[-1])[None]
        return x, src
