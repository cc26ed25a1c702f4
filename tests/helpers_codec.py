"""Shared test helpers for jasco.models.codec: tiny codecs, synthetic audio, the reference codec weights."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from jasco.models.codec import EncodecCompressionModel

REF_PATH = Path("/work/shared/reference/small_ref/ref.pt")
SHAPES_PATH = Path("/work/shared/reference/state_dict_shapes.json")
# Where a JASCO checkpoint stores the frozen codec (docs/MODEL.md, "State dict layout").
CODEC_PREFIX = "condition_provider.conditioners.self_wav.compression_model.model."


def tiny_codec(seed: int = 0, **kwargs) -> EncodecCompressionModel:
    """The debug codec (32 kHz, 50 fps, 128-d latents, 4 filters, 1 codebook unless told)."""
    return EncodecCompressionModel.debug(seed=seed, **kwargs)


def noise_wav(batch: int = 2, num_samples: int = 32000, seed: int = 0, channels: int = 1) -> torch.Tensor:
    """Seeded white noise `[B, C, N]` at amplitude ~0.3, with a different loudness per row."""
    gen = torch.Generator().manual_seed(seed)
    gains = torch.linspace(0.1, 0.5, batch)[:, None, None]
    return torch.randn(batch, channels, num_samples, generator=gen) * gains


def ref_codec_state_dict() -> dict[str, torch.Tensor]:
    """The reduced codec embedded in small_ref/ref.pt, with the checkpoint prefix stripped (skips if absent)."""
    if not REF_PATH.is_file():
        pytest.skip(f"reference file {REF_PATH} not available")
    state = torch.load(REF_PATH)["state_dict"]
    return {k[len(CODEC_PREFIX):]: v for k, v in state.items() if k.startswith(CODEC_PREFIX)}
