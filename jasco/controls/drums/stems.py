"""Drum stems: find an already-separated stem next to a track, or separate one with Demucs.

Existing stems, looked up in this order for `dir/song.wav`:
`dir/song.drums.wav`, `dir/song.drums.flac`, `dir/drums/song.wav`, `dir/drums/song.flac`.

Separation uses Demucs (`htdemucs` by default), an optional extra: `pip install 'jasco[drums]'`.
Long tracks are separated in chunks of `chunk_s` seconds that overlap by `overlap_s` and are
cross-faded linearly, so memory stays bounded whatever the track's length.

Shapes: `B` batch, `C` channels, `N` samples, `S` Demucs sources.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from jasco.audio.convert import convert_audio

STEM_SUFFIXES = (".drums.wav", ".drums.flac")
STEM_FOLDER = "drums"
STEM_FOLDER_SUFFIXES = (".wav", ".flac")

# One loaded Demucs model per (name, device) and process: loading takes seconds.
_MODELS: dict[tuple[str, str], Any] = {}


def find_drum_stem(audio_path: str | Path) -> Path | None:
    """An already-separated drum stem of `audio_path`, or None (see the module docstring for names)."""
    audio = Path(audio_path)
    stem = audio.with_suffix("").name
    candidates = [audio.parent / (stem + s) for s in STEM_SUFFIXES]
    candidates += [audio.parent / STEM_FOLDER / (stem + s) for s in STEM_FOLDER_SUFFIXES]
    return next((c for c in candidates if c.is_file()), None)


def load_demucs(model: str = "htdemucs", device: str | torch.device | None = None) -> Any:
    """Load (once per process) a pretrained Demucs model; raises ImportError naming the extra."""
    try:
        from demucs.pretrained import get_model
    except ImportError as exc:
        raise ImportError(
            "Drum separation needs Demucs, an optional extra: `pip install 'jasco[drums]'` (or "
            "`pip install demucs`). Alternatively put already-separated stems next to the audio as "
            "`song.drums.wav` / `song.drums.flac` or in a `drums/` folder beside it.") from exc
    device = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    key = (model, device)
    if key not in _MODELS:
        net = get_model(model)
        net.eval().to(device)
        _MODELS[key] = net
    return _MODELS[key]


def _demucs_separator(net: Any, device: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function: mix `[B, C, N]` at the model's rate/channels -> drums `[B, C, N]`."""
    from demucs.apply import apply_model

    if "drums" not in net.sources:
        raise ValueError(f"Demucs model has no 'drums' source (sources: {net.sources}).")
    index = list(net.sources).index("drums")

    def separate(mix: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            sources = apply_model(net, mix.to(device), split=True, overlap=0.25, progress=False,
                                  device=device)  # [B, S, C, N]
        return sources[:, index].cpu()

    return separate


def _fade_weights(length: int, fade_in: int, fade_out: int) -> torch.Tensor:
    """Per-sample weights `[N]`: linear ramps at the ends of a chunk, 1 in between."""
    w = torch.ones(length)
    if fade_in:
        w[:fade_in] = torch.linspace(0, 1, fade_in + 2)[1:-1]
    if fade_out:
        w[length - fade_out:] = torch.linspace(1, 0, fade_out + 2)[1:-1]
    return w


def separate_chunked(mix: torch.Tensor, separator: Callable[[torch.Tensor], torch.Tensor],
                     chunk: int, overlap: int) -> torch.Tensor:
    """Apply `separator` to `[B, C, N]` in chunks of `chunk` samples overlapping by `overlap`, cross-faded."""
    n = mix.shape[-1]
    if n <= chunk:
        return separator(mix)
    if not 0 <= overlap < chunk:
        raise ValueError(f"overlap ({overlap}) must be in [0, chunk={chunk}).")
    out = torch.zeros_like(mix)
    norm = torch.zeros(n)
    step = chunk - overlap
    start = 0
    while True:
        stop = min(n, start + chunk)
        piece = separator(mix[..., start:stop])
        w = _fade_weights(stop - start, overlap if start > 0 else 0, overlap if stop < n else 0)
        out[..., start:stop] += piece * w
        norm[start:stop] += w
        if stop == n:
            break
        start += step
    return out / norm.clamp_min(1e-8)


def separate_drums(wav: torch.Tensor, sample_rate: int, model: str | Callable = "htdemucs",
                   device: str | torch.device | None = None, chunk_s: float = 60.0,
                   overlap_s: float = 1.0) -> torch.Tensor:
    """The drum source of a mix `[B, C, N]` or `[C, N]` at `sample_rate`, same shape and rate.

    Args:
        wav: the mix.
        sample_rate: its sample rate (converted to the model's rate and back).
        model: a Demucs model name (`htdemucs`), or a callable `[B, C', N'] -> [B, C', N']` working at
            `sample_rate` with the input's channels (for tests and custom separators).
        device: where Demucs runs; default CUDA when available.
        chunk_s: chunk length for long tracks.
        overlap_s: overlap of consecutive chunks (linear cross-fade).
    """
    if wav.dim() not in (2, 3):
        raise ValueError(f"separate_drums expects [B, C, N] or [C, N], got {tuple(wav.shape)}.")
    batched = wav if wav.dim() == 3 else wav[None]
    channels, n = batched.shape[1], batched.shape[2]
    if callable(model):
        separator, rate, model_channels = model, sample_rate, channels
    else:
        device = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        net = load_demucs(model, device)
        separator, rate, model_channels = _demucs_separator(net, device), int(net.samplerate), int(net.audio_channels)
    mix = torch.stack([convert_audio(x.float().cpu(), sample_rate, rate, model_channels) for x in batched])
    drums = separate_chunked(mix, separator, int(chunk_s * rate), int(overlap_s * rate))
    back = torch.stack([convert_audio(x, rate, sample_rate, channels) for x in drums])
    back = torch.nn.functional.pad(back[..., :n], (0, max(0, n - back.shape[-1])))
    back = back.to(device=wav.device, dtype=wav.dtype)
    return back if wav.dim() == 3 else back[0]
