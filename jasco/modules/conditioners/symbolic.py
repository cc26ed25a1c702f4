"""Symbolic conditioners: chords (frame indices → embedding) and melody (salience → projection).

Shapes: `B` batch, `T` latent frames, `K` melody bins (53), `D` output width.
"""
from __future__ import annotations

import torch
from torch import nn

from jasco.controls.melody.salience import N_MELODY_BINS
from jasco.modules.conditioners.base import BaseConditioner, ConditionTensor


def _stack_frames(values: list[torch.Tensor | None], null: torch.Tensor, n_frames: int) -> torch.Tensor:
    """Stack per-sample `[..., T_i]` tensors into `[B, ..., T]`, nulls and short rows padded with `null`."""
    lengths = [v.shape[-1] for v in values if v is not None]
    length = max(lengths) if lengths else n_frames
    rows = []
    for v in values:
        row = null.expand(*null.shape[:-1], length).clone()
        if v is not None:
            row[..., : v.shape[-1]] = v.to(row.dtype)
        rows.append(row)
    return torch.stack(rows)


class ChordsConditioner(BaseConditioner):
    """Chord index per frame → `Embedding(card + 1, D)`; index `card` is the null chord."""

    kind = "symbolic"

    def __init__(self, output_dim: int, card: int = 194, n_frames: int = 500):
        super().__init__(output_dim)
        self.card = card
        self.n_frames = n_frames
        self.emb = nn.Embedding(card + 1, output_dim)

    @property
    def null_index(self) -> int:
        """Index of the null (dropped or absent) chord."""
        return self.card

    def tokenize(self, values: list[torch.Tensor | None]) -> torch.Tensor:
        """Per-sample frame chords `[T]` (or None) → `[B, T]` int64."""
        for v in values:
            if v is not None and (v.dim() != 1 or v.dtype not in (torch.int64, torch.int32)):
                raise ValueError(f"chords must be integer frame indices [T], got {tuple(v.shape)} {v.dtype}")
            if v is not None and v.numel() and (int(v.max()) > self.card or int(v.min()) < 0):
                raise ValueError(f"chord index out of range [0, {self.card}]: the vocabulary used by the "
                                 f"data does not match the model's card={self.card}")
        null = torch.full((1,), self.null_index, dtype=torch.long)
        return _stack_frames(values, null, self.n_frames).to(self.device)

    def forward(self, tokens: torch.Tensor) -> ConditionTensor:
        """`[B, T]` → `([B, T, D], ones [B, T])`."""
        emb = self.emb(tokens)
        return emb, torch.ones_like(tokens, dtype=emb.dtype)


class MelodyConditioner(BaseConditioner):
    """Melody salience `[K, T]` (one-hot per voiced frame) → `Linear(K → D)` per frame."""

    kind = "symbolic"

    def __init__(self, output_dim: int, card: int = N_MELODY_BINS, n_frames: int = 500):
        super().__init__(output_dim)
        self.card = card
        self.n_frames = n_frames
        self.output_proj = nn.Linear(card, output_dim)

    def tokenize(self, values: list[torch.Tensor | None]) -> torch.Tensor:
        """Per-sample salience `[K, T]` (or None) → `[B, K, T]`."""
        for v in values:
            if v is not None and (v.dim() != 2 or v.shape[0] != self.card):
                raise ValueError(f"melody salience must be [{self.card}, T], got {tuple(v.shape)}")
        null = torch.zeros(self.card, 1)
        return _stack_frames(values, null, self.n_frames).to(self.device)

    def forward(self, tokens: torch.Tensor) -> ConditionTensor:
        """`[B, K, T]` → `([B, T, D], ones [B, T])`."""
        out = self.output_proj(tokens.transpose(1, 2).to(self.output_proj.weight.dtype))  # [B, T, D]
        return out, torch.ones(out.shape[:2], dtype=out.dtype, device=out.device)
