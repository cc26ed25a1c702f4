"""The log-mel spectrogram of VGGish (also the `mel` test embedding's front end).

As published with VGGish: 16 kHz mono, 25 ms periodic-Hann frames every 10 ms without padding,
512-point FFT magnitude, 64 HTK-mel triangular bands between 125 and 7500 Hz (the DC bin
excluded), `log(mel + 0.01)`; then non-overlapping 0.96 s examples of 96 frames.

Shapes: `N` samples, `F` frames, `M` mel bands (64), `B` examples.
"""
from __future__ import annotations

import math

import torch

SAMPLE_RATE = 16000
WINDOW_S, HOP_S = 0.025, 0.010
N_MELS = 64
MEL_RANGE_HZ = (125.0, 7500.0)
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # 0.96 s


def hertz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    """HTK mel scale."""
    return 1127.0 * torch.log1p(hz / 700.0)


def mel_matrix(n_bins: int, sample_rate: int = SAMPLE_RATE, n_mels: int = N_MELS,
               fmin: float = MEL_RANGE_HZ[0], fmax: float = MEL_RANGE_HZ[1]) -> torch.Tensor:
    """Triangular mel weights `[n_bins, n_mels]` over the bins of a one-sided spectrum."""
    bin_mel = hertz_to_mel(torch.linspace(0.0, sample_rate / 2, n_bins, dtype=torch.float64))
    edges = torch.linspace(float(hertz_to_mel(torch.tensor(fmin))), float(hertz_to_mel(torch.tensor(fmax))),
                           n_mels + 2, dtype=torch.float64)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]  # [M] each
    rising = (bin_mel[:, None] - lower) / (centre - lower)
    falling = (upper - bin_mel[:, None]) / (upper - centre)
    weights = torch.minimum(rising, falling).clamp(min=0.0)  # [n_bins, M]
    weights[0] = 0.0  # the DC bin feeds no band
    return weights.float()


def log_mel(wav: torch.Tensor) -> torch.Tensor:
    """Log-mel frames `[F, M]` of mono 16 kHz audio `[N]`; `F = 0` for audio under one window."""
    window = round(WINDOW_S * SAMPLE_RATE)
    hop = round(HOP_S * SAMPLE_RATE)
    n_fft = 2 ** math.ceil(math.log2(window))
    if wav.shape[-1] < window:
        return torch.zeros(0, N_MELS)
    frames = wav.float().unfold(0, window, hop)  # [F, window]
    hann = torch.hann_window(window, periodic=True)
    magnitude = torch.fft.rfft(frames * hann, n=n_fft).abs()  # [F, n_fft / 2 + 1]
    return torch.log(magnitude @ mel_matrix(magnitude.shape[-1]) + LOG_OFFSET)


def examples(features: torch.Tensor, frames: int = EXAMPLE_FRAMES, hop: int = EXAMPLE_FRAMES
             ) -> torch.Tensor:
    """Cut `[F, M]` into examples `[B, frames, M]` every `hop` frames (a partial tail is dropped)."""
    if features.shape[0] < frames:
        return features.new_zeros(0, frames, features.shape[-1])
    return features.unfold(0, frames, hop).transpose(1, 2)  # [B, frames, M]
