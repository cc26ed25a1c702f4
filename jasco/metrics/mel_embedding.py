"""`mel`: a fixed, download-free embedding for tests and debugging (not comparable to published FAD).

Each 0.96 s window of the VGGish log-mel spectrogram (`jasco.metrics.log_mel`), every 0.48 s,
becomes the mean and the standard deviation of each of its 64 bands: 128 numbers that follow the
spectral balance and its movement, with no learned weights. FAD computed with it ranks obvious
differences (a sine against noise, a dull mix against a bright one) but says nothing about musical
quality; use VGGish (`vggish`) for numbers comparable to the model card.

Shapes: `N` samples, `B` windows, `D` = 128.
"""
from __future__ import annotations

import torch

from jasco.metrics.embedding import AudioEmbedding
from jasco.metrics.log_mel import EXAMPLE_FRAMES, SAMPLE_RATE, examples, log_mel


class MelEmbedding(AudioEmbedding):
    """Per-window log-mel band means and standard deviations `[B, 128]`."""

    name = "mel"
    sample_rate = SAMPLE_RATE

    def embed_mono(self, wav: torch.Tensor) -> torch.Tensor:
        """`[B, 128]` for mono 16 kHz audio `[N]` (no window for clips under 0.96 s)."""
        windows = examples(log_mel(wav), EXAMPLE_FRAMES, EXAMPLE_FRAMES // 2)  # [B, 96, 64]
        if windows.shape[0] == 0:
            return windows.new_zeros(0, 2 * windows.shape[-1])
        return torch.cat([windows.mean(dim=1), windows.std(dim=1)], dim=-1)
