"""Melody extraction: audio → harmonic CQT → deepsalience → the binary `[53, T]` melody condition.

Pipeline (docs/MODEL.md, "Melody"): audio → 22050 Hz mono → harmonic CQT (`jasco.audio.hcqt`) →
the multif0 network (`jasco.controls.melody.network`) → a `[360, F]` salience at ~86 frames/s →
post-processing to a binary `[53, T]` matrix at 50 frames/s (one row per semitone, MIDI 43 … 95,
at most one active row per frame).

Shapes: `K` CQT bins (360), `F` HCQT frames (22050 / 256 per second), `T` output frames (50 per
second), `N` samples.
"""
from __future__ import annotations

import math
import shutil
import urllib.parse
import urllib.request
from pathlib import Path

import torch

from jasco.audio.convert import to_mono
from jasco.audio.hcqt import HARMONICS, cqt_frequencies, harmonic_cqt, log_hcqt
from jasco.controls.melody.network import (
    SALIENCE_BINS_PER_OCTAVE,
    SALIENCE_FMIN,
    SALIENCE_FRAME_RATE,
    SALIENCE_HOP,
    SALIENCE_N_BINS,
    SALIENCE_SAMPLE_RATE,
    TIME_CONTEXT,
    MultiF0Salience,
)
from jasco.controls.melody.salience import MELODY_FRAME_RATE, N_MELODY_BINS, one_hot_frames
from jasco.files import atomic_write
from jasco.environment import download_dir

G2_HZ = 97.999
# With fmin 32.7 Hz (not C1 = 32.703 Hz) the G2 row sits at 97.989 Hz, 0.18 cent below G2_HZ; a
# literal `f < G2_HZ` would silence every G2 note. A row counts as "below G2" only when it is more
# than this many bins below it (set 0.0 for the literal comparison).
G2_TOLERANCE_BINS = 0.5
VOICING_THRESHOLD = 0.5


def run_salience_network(model: MultiF0Salience, hcqt: torch.Tensor,
                         device: torch.device | str | None = None, chunk_frames: int = 2580) -> torch.Tensor:
    """Apply the network to a long log-HCQT `[6, K, F]` in overlapping time chunks → `[K, F]` (CPU).

    Each chunk (default ~30 s) carries `TIME_CONTEXT` extra frames each side, so the result equals a
    single pass while memory stays bounded. The model is moved to `device` (default: where it is).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model = model.to(device).eval()
    n_frames = hcqt.shape[-1]
    out = torch.empty(hcqt.shape[1], n_frames, dtype=torch.float32)
    with torch.no_grad():
        for t0 in range(0, n_frames, chunk_frames):
            t1 = min(t0 + chunk_frames, n_frames)
            a, b = max(0, t0 - TIME_CONTEXT), min(n_frames, t1 + TIME_CONTEXT)
            piece = hcqt[None, :, :, a:b].to(device, torch.float32)
            out[:, t0:t1] = model(piece)[0, :, t0 - a:t1 - a].float().cpu()
    return out


def salience_to_melody(salience: torch.Tensor, n_frames: int | None = None) -> torch.Tensor:
    """Post-process a deepsalience output `[360, F]` (86 fps) into a binary melody `[53, T]` (50 fps).

    Steps (docs/MODEL.md, "Melody"): values < 0.5 → 0; rows below G2 → 0 (see `G2_TOLERANCE_BINS`); keep
    the rows from the one nearest G2 (so group `k` below is centred on MIDI 43 + k); prepend 2 zero
    rows; trim to a multiple of 5 rows; max over groups of 5 → 53 rows; linear interpolation in
    time, output frame `j` (time `j / 50`) reading input position `j * 86 / 50` (the integer 86 of
    the published pipeline; positions past the last input frame read zeros); crop or zero-pad to
    `n_frames` (default `floor((F - 1) * 50 / 86) + 1`); keep only each frame's argmax as a 1
    (all-zero frames stay 0).
    """
    if salience.dim() != 2 or salience.shape[0] != SALIENCE_N_BINS:
        raise ValueError(f"salience_to_melody expects [{SALIENCE_N_BINS}, F], got {tuple(salience.shape)}.")
    sal = torch.where(salience >= VOICING_THRESHOLD, salience, torch.zeros_like(salience)).float()
    freqs = cqt_frequencies(SALIENCE_N_BINS, SALIENCE_FMIN, SALIENCE_BINS_PER_OCTAVE)
    sal[freqs < G2_HZ * 2.0 ** (-G2_TOLERANCE_BINS / SALIENCE_BINS_PER_OCTAVE)] = 0.0
    start = int(torch.argmin((freqs - G2_HZ).abs()))
    sal = torch.cat([sal.new_zeros(2, sal.shape[1]), sal[start:]], dim=0)
    sal = sal[: (sal.shape[0] // 5) * 5]
    sal = sal.view(-1, 5, sal.shape[1]).amax(dim=1)  # [rows / 5, F]: one row per semitone
    if sal.shape[0] != N_MELODY_BINS:
        raise AssertionError(f"post-processing produced {sal.shape[0]} rows instead of {N_MELODY_BINS}")
    sal = resample_frames(sal, SALIENCE_FRAME_RATE, MELODY_FRAME_RATE, n_frames)
    return one_hot_frames(sal)


def resample_frames(x: torch.Tensor, rate_in: float, rate_out: float,
                    n_frames: int | None = None) -> torch.Tensor:
    """Linear time interpolation of `[D, F]`: output frame j reads input position `j * rate_in / rate_out`."""
    n_in = x.shape[-1]
    if n_frames is None:
        n_frames = int(math.floor((n_in - 1) * rate_out / rate_in)) + 1 if n_in > 0 else 0
    pos = torch.arange(n_frames, dtype=torch.float64) * (rate_in / rate_out)
    lo = pos.floor().long()
    frac = (pos - lo).to(x.dtype)
    padded = torch.cat([x, x.new_zeros(x.shape[0], 2)], dim=-1)  # zeros past the end
    lo = lo.clamp(max=n_in + 1)
    hi = (lo + 1).clamp(max=n_in + 1)
    return padded[:, lo] * (1 - frac) + padded[:, hi] * frac


def resolve_weights(weights: str | Path) -> Path:
    """A local path, or an http(s) URL downloaded once into `jasco.environment.download_dir`."""
    text = str(weights)
    if urllib.parse.urlparse(text).scheme not in ("http", "https"):
        return Path(text).expanduser()
    cache = download_dir("deepsalience")
    name = Path(urllib.parse.urlparse(text).path).name or "multif0.h5"
    target = cache / name
    if target.is_file():
        return target
    try:  # atomic, so a failed download never leaves a truncated file
        with atomic_write(target, "wb") as dst, urllib.request.urlopen(text, timeout=60) as src:
            shutil.copyfileobj(src, dst)
    except OSError as exc:
        raise OSError(f"Could not download salience weights from {text}: {exc}") from exc
    return target


def extract_salience(
    wav: torch.Tensor,
    sample_rate: int,
    weights: str | Path | None = None,
    device: torch.device | str | None = None,
    model: MultiF0Salience | None = None,
) -> torch.Tensor:
    """Binary melody salience `[53, T]` at 50 frames/s (row k = MIDI 43 + k) of mono or multichannel audio.

    `T = ceil(duration * 50)` with `duration = N / sample_rate`: the published conditioners align
    melody to the latent frames by cropping/zero-padding, and the codec yields `ceil(N * 50 / sr)`
    frames for `N` samples.

    Args:
        wav: audio `[N]` or `[C, N]` (channels are averaged) at `sample_rate`.
        sample_rate: sample rate of `wav`; resampled to 22050 Hz with julius.
        weights: path or http(s) URL of deepsalience `multif0.h5` (unused when `model` is given).
        device: where the network runs (e.g. 'cuda'); default: the model's device, or CPU.
        model: an already loaded network, to avoid re-reading the weights for every file.

    Returns:
        float32 `[53, T]` on CPU with at most one 1 per frame.
    """
    wav = to_mono(wav)
    if wav.numel() == 0:
        raise ValueError("extract_salience got an empty waveform (0 samples).")
    if model is None:
        if weights is None:
            raise ValueError(
                "extract_salience needs `weights` (path or URL of multif0.h5) or a loaded `model`."
            )
        model = MultiF0Salience.from_keras_h5(resolve_weights(weights))
        device = device if device is not None else "cpu"
    n_out = math.ceil(wav.shape[-1] * MELODY_FRAME_RATE / sample_rate)
    wav = wav.detach().to("cpu", torch.float32)
    if sample_rate != SALIENCE_SAMPLE_RATE:
        import julius

        wav = julius.resample_frac(wav, sample_rate, SALIENCE_SAMPLE_RATE)
    mag = harmonic_cqt(wav, SALIENCE_SAMPLE_RATE, SALIENCE_HOP, SALIENCE_FMIN, SALIENCE_BINS_PER_OCTAVE,
                       SALIENCE_N_BINS // SALIENCE_BINS_PER_OCTAVE, HARMONICS)
    salience = run_salience_network(model, log_hcqt(mag), device=device)
    return salience_to_melody(salience, n_frames=n_out)
