"""The waveform argument of every metric: a torch tensor or numpy array `[N]` or `[C, N]`.

Shapes: `C` channels, `N` samples.
"""
from __future__ import annotations

import numpy as np
import torch

from jasco.audio.convert import convert_audio, to_mono

Waveform = torch.Tensor | np.ndarray


def mono(wav: Waveform) -> torch.Tensor:
    """Mono float32 `[N]` on the CPU of a tensor or array `[N]` / `[C, N]` (channels averaged)."""
    if isinstance(wav, np.ndarray):
        wav = torch.from_numpy(np.ascontiguousarray(wav))
    if not isinstance(wav, torch.Tensor):
        raise TypeError(f"Expected a waveform (torch.Tensor or numpy array [N] or [C, N]), "
                        f"got {type(wav).__name__}.")
    if not torch.is_floating_point(wav):
        raise TypeError(f"Waveform dtype is {wav.dtype}; expected float samples in [-1, 1].")
    return to_mono(wav.detach().to("cpu", torch.float32))


def mono_at(wav: Waveform, sample_rate: int, target_rate: int) -> torch.Tensor:
    """Mono float32 `[N']` resampled from `sample_rate` to `target_rate`."""
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}.")
    x = mono(wav)
    if sample_rate == target_rate or x.numel() == 0:
        return x
    return convert_audio(x[None], sample_rate, target_rate, 1)[0]
