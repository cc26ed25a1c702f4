"""Encoding whole tracks with the codec, window by window: the writer side of the latent and
drum-code caches (`jasco.data.latents`, `jasco.data.drum_codes`).

Windows of `window_s` seconds overlap by `overlap_s`; each output frame comes from the window
where it sits at least `overlap_s / 2` from the window's edges, so results match whole-track
encoding away from the track's own edges (the encoder's convolutions see the same context; its
LSTM state is warmed up by `overlap_s / 2` seconds).

Shapes: `C` channels, `N` samples, `T` latent frames (50 per second), `F` latent dim (128).
"""
from __future__ import annotations

import math

import torch

from jasco.audio.convert import convert_audio
from jasco.models.codec import EncodecCompressionModel


def _to_codec_input(wav: torch.Tensor, sample_rate: int, codec: EncodecCompressionModel) -> torch.Tensor:
    """`[C, N]` at `sample_rate` -> `[1, C', N']` at the codec's rate and channel count (as the datasets convert)."""
    if wav.dim() != 2:
        raise ValueError(f"audio must be [C, N], got shape {tuple(wav.shape)}.")
    return convert_audio(wav.float(), sample_rate, codec.sample_rate, codec.channels)[None]


@torch.no_grad()
def encode_windowed(codec: EncodecCompressionModel, wav: torch.Tensor, window_s: float = 20.0,
                    overlap_s: float = 4.0) -> torch.Tensor:
    """Raw latents `[T, F]` of codec-rate audio `[1, C, N]`, `T = ceil(N / hop)`, encoded window by window.

    Args:
        codec: the training codec.
        wav: audio at the codec's sample rate and channel count.
        window_s: window length; a track no longer than it is encoded in one call.
        overlap_s: overlap of consecutive windows (each side keeps half of it as context).
    """
    hop = codec.hop_length
    n = wav.shape[-1]
    total = math.ceil(n / hop)
    window = max(1, int(round(window_s * codec.frame_rate)))  # in frames
    half = int(round(overlap_s * codec.frame_rate / 2))
    if total <= window:
        return codec.encode_latents(wav)[0].float().cpu()
    if window <= 2 * half:
        raise ValueError(f"window_s={window_s} must exceed overlap_s={overlap_s}.")
    out = torch.empty(total, codec.latent_dim)
    keep_start = 0  # first frame not yet written
    while keep_start < total:
        start = max(0, keep_start - half)  # window start, in frames; frames are hop-aligned
        stop = min(total, start + window)
        latents = codec.encode_latents(wav[..., start * hop: stop * hop])[0].float().cpu()  # [stop-start, F]
        keep_stop = stop if stop == total else stop - half
        out[keep_start:keep_stop] = latents[keep_start - start: keep_stop - start]
        keep_start = keep_stop
    return out


def encode_track(codec: EncodecCompressionModel, wav: torch.Tensor, sample_rate: int,
                 window_s: float = 20.0, overlap_s: float = 4.0) -> torch.Tensor:
    """Raw latents `[T, F]` of a whole track `[C, N]` at `sample_rate` (converted like the datasets do)."""
    return encode_windowed(codec, _to_codec_input(wav, sample_rate, codec), window_s, overlap_s)


def compute_drum_codes(codec: EncodecCompressionModel, stem: torch.Tensor, sample_rate: int,
                       window_s: float = 20.0, overlap_s: float = 4.0) -> torch.Tensor:
    """Codebook-0 codes `[T]` (int64) of a whole drum stem `[C, N]` at `sample_rate`."""
    latents = encode_track(codec, stem, sample_rate, window_s, overlap_s)  # [T, F]
    return codec.codes_from_latents(latents[None], num_codebooks=1)[0, 0].cpu()
