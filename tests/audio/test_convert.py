"""jasco.audio.convert: the per-rate-pair resampler cache."""
from __future__ import annotations

import julius
import torch

from jasco.audio.convert import convert_audio, resampler


def test_resampler_is_cached_per_reduced_rate_pair() -> None:
    first = resampler(44100, 32000)
    assert resampler(44100, 32000) is first
    assert resampler(441, 320) is first  # same reduced pair, same module
    assert resampler(22050, 32000) is not first
    assert resampler(44100, 32000, dtype=torch.float64) is not first


def test_cached_resampling_equals_a_fresh_julius_resample() -> None:
    wav = torch.randn(2, 44100, generator=torch.Generator().manual_seed(0))
    for rate in (44100, 22050, 48000):
        x = wav[:, : rate // 2]
        expected = julius.resample_frac(x.mean(0, keepdim=True), rate, 32000)
        assert torch.equal(convert_audio(x, rate, 32000, 1), expected)
        assert torch.equal(convert_audio(x, rate, 32000, 1), expected)  # second call: the cached module


def test_empty_audio_stays_empty() -> None:
    assert convert_audio(torch.zeros(2, 0), 44100, 32000, 1).shape == (1, 0)
