"""Loudness (ITU-R BS.1770 K-weighted, ungated) and the normalisation strategies of `audio_write`.

Shapes: `C` channels, `N` samples.
"""
from __future__ import annotations

import logging
import math

import torch

logger = logging.getLogger(__name__)

NORMALIZE_STRATEGIES = ("peak", "clip", "rms", "loudness")


def _biquad_response(b: list[float], a: list[float], n_fft: int) -> torch.Tensor:
    """Complex frequency response of a biquad on the `rfft` grid of size `n_fft`."""
    w = torch.linspace(0, math.pi, n_fft // 2 + 1, dtype=torch.float64)
    z1 = torch.exp(-1j * w)
    num = b[0] + b[1] * z1 + b[2] * z1 * z1
    den = a[0] + a[1] * z1 + a[2] * z1 * z1
    return num / den


def _k_weighting(sample_rate: int, n_fft: int) -> torch.Tensor:
    """ITU-R BS.1770 K-weighting (high shelf then high pass) for any sample rate.

    The bilinear-transform design below reproduces the standard's 48 kHz coefficients.
    """
    k = math.tan(math.pi * 1681.974450955533 / sample_rate)
    q = 0.7071752369554196
    vh = 10 ** (3.999843853973347 / 20)
    vb = vh ** 0.4996667741545416
    a0 = 1 + k / q + k * k
    shelf_b = [(vh + vb * k / q + k * k) / a0, 2 * (k * k - vh) / a0, (vh - vb * k / q + k * k) / a0]
    shelf_a = [1.0, 2 * (k * k - 1) / a0, (1 - k / q + k * k) / a0]
    k = math.tan(math.pi * 38.13547087602444 / sample_rate)
    q = 0.5003270373238773
    a0 = 1 + k / q + k * k
    hp_b = [1.0, -2.0, 1.0]
    hp_a = [1.0, 2 * (k * k - 1) / a0, (1 - k / q + k * k) / a0]
    return _biquad_response(shelf_b, shelf_a, n_fft) * _biquad_response(hp_b, hp_a, n_fft)


def loudness(wav: torch.Tensor, sample_rate: int) -> float:
    """Integrated loudness (LUFS) of `[C, N]` audio: K-weighting, 400 ms blocks, BS.1770 gating."""
    x = wav.detach().to(torch.float64)
    if x.dim() == 1:
        x = x[None]
    n = x.shape[-1]
    # Filtering in the frequency domain; the padding holds the IIR tail (which decays in < 0.5 s).
    n_fft = 1 << int(math.ceil(math.log2(n + sample_rate // 2 + 1)))
    filtered = torch.fft.irfft(torch.fft.rfft(x, n_fft) * _k_weighting(sample_rate, n_fft), n_fft)[:, :n]
    block, hop = int(0.4 * sample_rate), int(0.1 * sample_rate)
    if n < block:
        power = filtered.pow(2).mean(-1, keepdim=True)  # [C, 1]
    else:
        power = filtered.pow(2).unfold(-1, block, hop).mean(-1)  # [C, n_blocks]
    block_power = power.sum(0)  # channel weights are 1 for L/R/C (surround is not supported)
    block_lufs = -0.691 + 10 * torch.log10(block_power.clamp_min(1e-20))
    gated = block_power[block_lufs > -70.0]
    if gated.numel() == 0:
        return -70.0
    relative = -0.691 + 10 * math.log10(gated.mean().item()) - 10.0
    gated = block_power[(block_lufs > -70.0) & (block_lufs > relative)]
    return -0.691 + 10 * math.log10(gated.mean().item())


def normalize_audio(wav: torch.Tensor, normalize: bool = True, strategy: str = "peak",
                    peak_clip_headroom_db: float = 1.0, rms_headroom_db: float = 18.0,
                    loudness_headroom_db: float = 14.0, loudness_compressor: bool = False,
                    sample_rate: int | None = None, log_clipping: bool = False,
                    stem_name: str | None = None) -> torch.Tensor:
    """Scale `[C, N]` audio by a strategy, then keep it in [-1, 1].

    Strategies: `peak` scales the peak to `-peak_clip_headroom_db` dBFS; `clip` clamps to that
    level without scaling; `rms` scales the RMS to `-rms_headroom_db` dBFS; `loudness` scales the
    integrated loudness to `-loudness_headroom_db` LUFS (needs `sample_rate`). After `rms` and
    `loudness`, samples beyond full scale are clamped (or soft-clipped with tanh when
    `loudness_compressor`). With `normalize=False`, audio is only clamped to [-1, 1].
    """
    eps = 1e-9
    if strategy not in NORMALIZE_STRATEGIES:
        raise ValueError(f"Unknown normalisation strategy {strategy!r}; expected one of {NORMALIZE_STRATEGIES}.")
    if not normalize:
        out = wav
    elif strategy == "peak":
        out = wav * (10 ** (-peak_clip_headroom_db / 20) / wav.abs().max().clamp_min(eps))
    elif strategy == "clip":
        level = 10 ** (-peak_clip_headroom_db / 20)
        out = wav.clamp(-level, level)
    elif strategy == "rms":
        rms = wav.pow(2).mean().sqrt().clamp_min(eps)
        out = wav * (10 ** (-rms_headroom_db / 20) / rms)
    else:
        if sample_rate is None:
            raise ValueError("strategy='loudness' needs sample_rate.")
        gain_db = -loudness_headroom_db - loudness(wav, sample_rate)
        out = wav * 10 ** (gain_db / 20)
        if loudness_compressor:
            out = torch.tanh(out)
    peak = out.abs().max().item() if out.numel() else 0.0
    if peak > 1.0:
        if log_clipping:
            logger.warning("Clipping %s: peak %.3f after '%s' normalisation.", stem_name or "audio", peak, strategy)
        out = out.clamp(-1.0, 1.0)
    return out
