"""Audio conversion: mono mixdown, channel count and sample rate (julius resampling).

Shapes: `C` channels, `N` samples.
"""
from __future__ import annotations

import julius
import torch


def to_mono(wav: torch.Tensor) -> torch.Tensor:
    """`[N]` or `[C, N]` float audio -> `[N]` mono (channel mean); raises on other shapes."""
    if not isinstance(wav, torch.Tensor):
        raise TypeError(f"Expected a torch.Tensor waveform [N] or [C, N], got {type(wav).__name__}.")
    if wav.dim() == 2:
        if wav.shape[0] == 0:
            raise ValueError("Waveform has 0 channels; expected [N] or [C, N] with C >= 1.")
        wav = wav.mean(dim=0)
    elif wav.dim() != 1:
        raise ValueError(f"Waveform has shape {tuple(wav.shape)}; expected [N] or [C, N] "
                         "(one clip, channels first).")
    if not torch.is_floating_point(wav):
        raise TypeError(f"Waveform dtype is {wav.dtype}; expected float samples in [-1, 1].")
    return wav.float()


def convert_audio_channels(wav: torch.Tensor, channels: int) -> torch.Tensor:
    """Change `[..., C, N]` to `[..., channels, N]`: mean for a mono mix, repeat mono to N."""
    src = wav.shape[-2]
    if src == channels:
        return wav
    if channels == 1:
        return wav.mean(dim=-2, keepdim=True)
    if src == 1:
        return wav.expand(*wav.shape[:-2], channels, wav.shape[-1]).contiguous()
    if src > channels:
        return wav[..., :channels, :]
    raise ValueError(f"Cannot convert {src} audio channels to {channels}; "
                     "only mono<->N and dropping extra channels are supported.")


def convert_audio(wav: torch.Tensor, from_rate: float, to_rate: float, to_channels: int) -> torch.Tensor:
    """Convert `[..., C, N]` audio to `to_channels` channels at `to_rate` (julius resampling)."""
    wav = convert_audio_channels(wav, to_channels)
    if int(from_rate) != int(to_rate):
        wav = julius.resample_frac(wav, int(from_rate), int(to_rate))
    return wav
