"""Audio conversion: mono mixdown, channel count and sample rate (julius resampling).

Building a julius resampler computes one sinc kernel per output phase (320 of them for
44.1 -> 32 kHz), which costs far more than resampling a 10 s segment with it; `resampler`
keeps one per reduced rate pair (and device, dtype) for the life of the process.

Shapes: `C` channels, `N` samples.
"""
from __future__ import annotations

import functools
import math

import julius
import torch

# Distinct (from, to, device, dtype) resamplers kept; a kernel is ~1 MB for common rate pairs.
RESAMPLER_CACHE_SIZE = 32


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


@functools.lru_cache(maxsize=RESAMPLER_CACHE_SIZE)
def _cached_resampler(from_rate: int, to_rate: int, device: torch.device, dtype: torch.dtype) -> julius.ResampleFrac:
    return julius.ResampleFrac(from_rate, to_rate).to(device=device, dtype=dtype)


def resampler(from_rate: int, to_rate: int, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> julius.ResampleFrac:
    """The shared `julius.ResampleFrac` for `from_rate -> to_rate` (default zeros and rolloff).

    Rates are reduced by their gcd first, so 44100 -> 32000 and 441 -> 320 share one module (julius
    reduces them the same way, so the kernel is identical). Its output equals
    `julius.resample_frac(x, from_rate, to_rate)`. The module is shared: do not move it with `.to()`;
    ask for the device and dtype you need instead.
    """
    from_rate, to_rate = int(from_rate), int(to_rate)
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"Sample rates must be > 0, got {from_rate} -> {to_rate}.")
    gcd = math.gcd(from_rate, to_rate)
    return _cached_resampler(from_rate // gcd, to_rate // gcd, torch.device(device), dtype)


def convert_audio(wav: torch.Tensor, from_rate: float, to_rate: float, to_channels: int) -> torch.Tensor:
    """Convert `[..., C, N]` audio to `to_channels` channels at `to_rate` (cached julius resampler).

    Audio with no samples (`N = 0`) stays empty: `[..., to_channels, 0]`.
    """
    wav = convert_audio_channels(wav, to_channels)
    if int(from_rate) != int(to_rate):
        if wav.shape[-1] == 0:
            return wav  # julius cannot reshape an empty signal; zero samples resample to zero samples
        wav = resampler(int(from_rate), int(to_rate), wav.device, wav.dtype)(wav)
    return wav
