"""Synthetic audio with known chords, onsets and melody for the metric tests."""
from __future__ import annotations

import math

import numpy as np
import torch


def click_track(times: list[float] | np.ndarray, duration: float, sr: int, seed: int = 0
                ) -> torch.Tensor:
    """Short decaying noise bursts (5 ms decay) starting at `times` `[N]`."""
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(int(duration * sr))
    length = int(0.04 * sr)
    burst = torch.randn(length, generator=g) * torch.exp(-torch.arange(length) / (0.005 * sr))
    for time in times:
        start = round(time * sr)
        piece = burst[: max(0, min(length, out.numel() - start))]
        out[start:start + piece.numel()] += piece
    return 0.5 * out / out.abs().max().clamp(min=1e-9)


def note_sequence(midis: list[int], note_s: float, sr: int) -> torch.Tensor:
    """Consecutive harmonic tones (6 partials, 10 ms fades) of `note_s` seconds each `[N]`."""
    n = round(note_s * sr)
    t = torch.arange(n, dtype=torch.float64) / sr
    fade = int(0.01 * sr)
    env = torch.ones(n, dtype=torch.float64)
    env[:fade], env[-fade:] = torch.linspace(0, 1, fade), torch.linspace(1, 0, fade)
    parts = []
    for midi in midis:
        f0 = 440.0 * 2 ** ((midi - 69) / 12)
        tone = sum(0.6 ** k * torch.sin(2 * math.pi * (k + 1) * f0 * t)
                   for k in range(6) if (k + 1) * f0 < sr / 2)
        parts.append(0.3 * tone * env)
    return torch.cat(parts).float()
