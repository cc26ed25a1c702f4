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
    cardinality: int

    def encode_codes(self, wav: torch.Tensor, num_codebooks: int = 1) -> torch.Tensor: ...

    def silence_codes(self, num_samples: int, num_codebooks: int = 1) -> torch.Tensor: ...

    def check_codes(self, codes: torch.Tensor, what: str = "codes") -> None: ...

    def dequantize_codebook0(self, codes: torch.Tensor, check: bool = True) -> torch.Tensor: ...


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
        """Collect cached codes (range-checked here, on CPU) and the audio to encode; null rows are silence."""
        values = [v if v is not None else WavCondition(wav=None, sample_rate=0) for v in values]
        if all(v.is_null for v in values):
            return {"all_null": True, "batch": len(values)}
        sr = self.compression_model.sample_rate
        wavs: list[torch.Tensor] = []
        for v in values:
            if v.codes is not None:
                where = f" (drum codes of {v.path} at {v.seek_time} s)" if v.path else ""
                self.compression_model.check_codes(v.codes.cpu(), f"drum codes{where}")
            elif v.wav is not None:
                if v.wav.dim() != 2:
                    raise ValueError(f"drum wav must be [C, N], got {tuple(v.wav.shape)} (from {v.path})")
                wavs.append(convert_audio(v.wav.float(), v.sample_rate, sr, 1))
        # Published behaviour: null rows are zero audio padded to the longest wav, encoded as silence
        # (all-null batches take the zero-latent shortcut above). The silence codes are encoded once
        # per codec and length (`silence_codes`), not with every batch.
        length = max(w.shape[-1] for w in wavs) if wavs else int(self.segment_duration * sr)
        batch = torch.zeros(len(wavs), 1, length)
        for i, w in enumerate(wavs):
            batch[i, :, : w.shape[-1]] = w
        return {"all_null": False, "batch": len(values), "wav": batch.to(self.device), "length": length,
                "kinds": ["codes" if v.codes is not None else "wav" if v.wav is not None else "null" for v in values],
                "codes": [v.codes for v in values]}

    def _encode_codes(self, wav: torch.Tensor) -> torch.Tensor:
        """Codebook-0 codes `[B, T]` of drum audio `[B, 1, N]` (separating drums first if asked)."""
        if self.separate_drums:
            from jasco.controls.drums.stems import separate_drums
            wav = separate_drums(wav, self.compression_model.sample_rate, model=self.demucs_model)
        return self.compression_model.encode_codes(wav, num_codebooks=1)[:, 0]

    def drum_codes(self, tokens: dict[str, Any]) -> torch.Tensor:
        """Codes `[B, T]` for a tokenized batch that is not all-null.

        Runs in float32 without autocast whatever the caller's (the codec does too): the codes are
        the same in training, at inference and in the drum-code cache.
        """
        kinds = tokens["kinds"]
        with torch.autocast(self.device.type, enabled=False):
            encoded = self._encode_codes(tokens["wav"]) if "wav" in kinds else None
            silence = self.compression_model.silence_codes(tokens["length"])[0] if "null" in kinds else None
        if encoded is not None or silence is not None:
            length = (encoded if encoded is not None else silence[None]).shape[-1]
        else:
            length = max(c.shape[-1] for c in tokens["codes"])
        rows, k = [], 0
        for kind, c in zip(kinds, tokens["codes"]):
            if kind == "wav":
                row = encoded[k]
                k += 1
            elif kind == "null":
                row = silence
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
                # Every row is in range: encoded, silence, or cached codes checked in `tokenize`.
                latents = self.compression_model.dequantize_codebook0(codes, check=False)  # [B, T, L]
        blurred = temporal_blur(latents.to(self.output_proj.weight.dtype), self.blurring_factor)
        out = self.output_proj(blurred)
        return out, torch.ones(out.shape[:2], dtype=out.dtype, device=out.device)
