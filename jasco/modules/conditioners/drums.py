"""Drums conditioner: drum stem → codec codebook-0 codes → de-quantised latents → blur → projection.

Shapes: `B` batch, `C` channels, `N` audio samples, `T` latent frames, `L` codec latent width
(128), `D` output width (2 in the published models).
"""
from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn
from torch.nn import functional as F

from jasco.audio.convert import convert_audio
from jasco.data.attributes import WavCondition
from jasco.modules.conditioners.base import BaseConditioner, ConditionTensor


class DrumCodec(Protocol):
    """What the drums conditioner needs from the frozen codec (see jasco.models.codec)."""

    sample_rate: int
    frame_rate: float
    latent_dim: int

    def encode_codes(self, wav: torch.Tensor, num_codebooks: int = 1) -> torch.Tensor: ...

    def dequantize_codebook0(self, codes: torch.Tensor) -> torch.Tensor: ...


def temporal_blur(latents: torch.Tensor, factor: int) -> torch.Tensor:
    """Average `latents [B, T, L]` over groups of `factor` frames, each average repeated `factor` times.

    T is first padded up to a multiple of `factor` by reflection at the end, and the result is
    cropped back to T (docs/MODEL.md, "Drums").
    """
    if factor <= 1:
        return latents
    t = latents.shape[1]
    pad = (-t) % factor
    x = latents.transpose(1, 2)  # [B, L, T]
    if pad:
        x = F.pad(x, (0, pad), mode="reflect")
    b, c, tp = x.shape
    x = x.reshape(b, c, tp // factor, factor).mean(-1, keepdim=True).expand(-1, -1, -1, factor)
    return x.reshape(b, c, tp)[..., :t].transpose(1, 2)


class DrumsConditioner(BaseConditioner):
    """Coarse drum latents of the drum stem, blurred in time and projected to `D` channels.

    `compression_model` is the frozen codec; it is registered as a submodule because the published
    checkpoints carry its weights under this conditioner. Per-sample precomputed codes
    (`WavCondition.codes`, from the drum-code cache) skip the codec. When `separate_drums` is set,
    inputs are full mixes and the drum source is first extracted with Demucs (optional extra).
    """

    kind = "wav"

    def __init__(self, output_dim: int, compression_model: nn.Module, blurring_factor: int = 3,
                 segment_duration: float = 10.0, separate_drums: bool = False,
                 demucs_model: str = "htdemucs"):
        super().__init__(output_dim)
        self.compression_model = compression_model
        self.blurring_factor = blurring_factor
        self.segment_duration = segment_duration
        self.separate_drums = separate_drums
        self.demucs_model = demucs_model
        self.output_proj = nn.Linear(compression_model.latent_dim, output_dim)

    @property
    def n_frames(self) -> int:
        """Frames of a training segment (used for batches without any drums)."""
        return int(round(self.segment_duration * self.compression_model.frame_rate))

    def tokenize(self, values: list[WavCondition | None]) -> dict[str, Any]:
        """Collect codes and audio to encode; null rows in a mixed batch become silence."""
        values = [v if v is not None else WavCondition(wav=None, sample_rate=0) for v in values]
        if all(v.is_null for v in values):
            return {"all_null": True, "batch": len(values)}
        sr = self.compression_model.sample_rate
        wavs: list[torch.Tensor | None] = []
        for v in values:
            if v.codes is not None or v.wav is None:
                wavs.append(None)
                continue
            wav = v.wav
            if wav.dim() != 2:
                raise ValueError(f"drum wav must be [C, N], got {tuple(wav.shape)} (from {v.path})")
            wavs.append(convert_audio(wav.float(), v.sample_rate, sr, 1))
        lengths = [w.shape[-1] for w in wavs if w is not None]
        # Published behaviour: null rows are zero audio padded to the longest wav, so they are
        # encoded as silence (all-null batches take the zero-latent shortcut above).
        length = max(lengths) if lengths else int(self.segment_duration * sr)
        encode_rows = [v.codes is None for v in values]
        batch = torch.zeros(len(values), 1, length)
        for i, w in enumerate(wavs):
            if w is not None:
                batch[i, :, : w.shape[-1]] = w
        codes = [v.codes for v in values]
        return {"all_null": False, "batch": len(values), "wav": batch.to(self.device),
                "encode_rows": torch.tensor(encode_rows), "codes": codes}

    def _encode_codes(self, wav: torch.Tensor) -> torch.Tensor:
        """Codebook-0 codes `[B, T]` of drum audio `[B, 1, N]` (separating drums first if asked)."""
        if self.separate_drums:
            from jasco.controls.drums.stems import separate_drums
            wav = separate_drums(wav, self.compression_model.sample_rate, model=self.demucs_model)
        return self.compression_model.encode_codes(wav, num_codebooks=1)[:, 0]

    def drum_codes(self, tokens: dict[str, Any]) -> torch.Tensor:
        """Codes `[B, T]` for a tokenized batch that is not all-null."""
        encode_rows = tokens["encode_rows"]
        encoded = self._encode_codes(tokens["wav"][encode_rows]) if encode_rows.any() else None
        length = encoded.shape[-1] if encoded is not None else max(c.shape[-1] for c in tokens["codes"] if c is not None)
        rows, k = [], 0
        for i, c in enumerate(tokens["codes"]):
            if encode_rows[i]:
                row = encoded[k]
                k += 1
            else:
                row = c.to(self.device).long()
                if row.shape[-1] < length:  # cached codes shorter than the batch: repeat the edge
                    row = F.pad(row[None].float(), (0, length - row.shape[-1]), mode="replicate")[0].long()
                row = row[:length]
            rows.append(row)
        return torch.stack(rows)

    def forward(self, tokens: dict[str, Any]) -> ConditionTensor:
        """Tokens → `([B, T, D], ones [B, T])`."""
        latent_dim = self.compression_model.latent_dim
        if tokens["all_null"]:
            latents = torch.zeros(tokens["batch"], self.n_frames, latent_dim, device=self.device,
                                  dtype=self.output_proj.weight.dtype)
        else:
            with torch.no_grad():
                codes = self.drum_codes(tokens)
                latents = self.compression_model.dequantize_codebook0(codes)  # [B, T, L]
        blurred = temporal_blur(latents.to(self.output_proj.weight.dtype), self.blurring_factor)
        out = self.output_proj(blurred)
        return out, torch.ones(out.shape[:2], dtype=out.dtype, device=out.device)
