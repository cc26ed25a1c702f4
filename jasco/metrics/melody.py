"""Melody metrics: how well generated audio follows its melody condition.

The condition is a salience matrix `[53, T]` (row k = MIDI 43 + k, `jasco.controls.melody.salience`)
at `salience_fps` frames per second; a frame is voiced when any row is positive, and its note is
the argmax row.

- `chroma_similarity` (the model card's melody similarity): over the condition's voiced frames,
  the share where the argmax pitch class of the generated audio's treble chroma
  (`jasco.audio.chroma.chroma_features`, no median filter, at the condition's frame rate) equals
  the pitch class of the condition's note. A generated frame without any chroma energy never
  agrees. Octave errors are not errors here.
- `salience_accuracy` (`melody_salience_accuracy`): the melody extractor
  (`jasco.controls.melody.extraction`, deepsalience) is run on the generated audio, and over the
  condition's voiced frames (resampled to 50 fps) the share where the extracted frame is voiced
  at the same semitone row. Needs the deepsalience weights (`multif0.h5`): without them the
  metric raises `MetricUnavailable`, it is never estimated otherwise.

Shapes: `K` = 53 salience rows, `T` condition frames, `F` chroma frames.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from jasco.audio.chroma import chroma_features
from jasco.controls.melody.extraction import extract_salience, resolve_weights
from jasco.controls.melody.network import MultiF0Salience
from jasco.controls.melody.salience import (
    MELODY_FRAME_RATE,
    MELODY_LOWEST_MIDI,
    N_MELODY_BINS,
    salience_segment,
)
from jasco.metrics.availability import MetricUnavailable
from jasco.metrics.waveform import Waveform, mono

MELODY_WEIGHTS_KEY = "evaluate.metrics.melody.weights"


def _as_salience(salience: torch.Tensor) -> torch.Tensor:
    """The condition as float32 `[K, T]` on the CPU; raises on another shape."""
    salience = torch.as_tensor(salience).detach().to("cpu", torch.float32)
    if salience.dim() != 2 or salience.shape[0] != N_MELODY_BINS:
        raise ValueError(f"The melody condition must be [{N_MELODY_BINS}, T] (row k = MIDI "
                         f"{MELODY_LOWEST_MIDI} + k), got shape {tuple(salience.shape)}.")
    return salience


def chroma_similarity(wav: Waveform, sample_rate: int, salience: torch.Tensor,
                      salience_fps: float = float(MELODY_FRAME_RATE)) -> float:
    """Argmax-chroma agreement of audio with a melody condition `[K, T]` (module docstring);
    NaN when the condition has no voiced frame."""
    salience = _as_salience(salience)
    voiced = salience.amax(dim=0) > 0  # [T]
    if not voiced.any():
        return math.nan
    target = (salience.argmax(dim=0) + MELODY_LOWEST_MIDI) % 12  # [T]
    features = chroma_features(mono(wav), sample_rate, frame_rate=salience_fps, median_s=0.0)
    treble = features.treble  # [12, F]
    frames = torch.arange(salience.shape[1], dtype=torch.float64) * features.frame_rate / salience_fps
    index = frames.round().long()  # chroma frame nearest each condition frame [T]
    inside = index < treble.shape[1]
    index = index.clamp(max=max(treble.shape[1] - 1, 0))
    if treble.shape[1] == 0:
        return 0.0
    sounding = inside & (treble[:, index].sum(0) > 0)  # [T]
    agree = sounding & (treble[:, index].argmax(0) == target)
    return float(agree[voiced].float().mean())


def load_melody_extractor(weights: str | Path | None) -> MultiF0Salience:
    """The deepsalience network from `multif0.h5` (path or URL), or `MetricUnavailable`."""
    if weights is None:
        raise MetricUnavailable(
            "melody_salience", "it needs the deepsalience weights (multif0.h5): set "
            f"{MELODY_WEIGHTS_KEY} to their path or URL (docs/EVALUATION.md).")
    try:
        return MultiF0Salience.from_keras_h5(resolve_weights(weights))
    except (ImportError, OSError) as err:  # h5py (jasco[melody]) missing; file missing/unreadable
        raise MetricUnavailable("melody_salience", f"{err} (weights: {weights}; set "
                                                   f"{MELODY_WEIGHTS_KEY})") from err


def melody_salience_accuracy(wav: Waveform, sample_rate: int, salience: torch.Tensor,
                             extractor: MultiF0Salience | None = None,
                             weights: str | Path | None = None,
                             salience_fps: float = float(MELODY_FRAME_RATE)) -> float:
    """Share of the condition's voiced frames where the extracted melody has the same row.

    Args:
        wav: generated audio `[N]` / `[C, N]`.
        sample_rate: its sample rate.
        salience: the melody condition `[K, T]` at `salience_fps`.
        extractor: a loaded deepsalience network (`load_melody_extractor`), or None to load
            `weights`.
        weights: path or URL of `multif0.h5`, used when `extractor` is None.
        salience_fps: frame rate of `salience`.

    Raises:
        MetricUnavailable: neither an extractor nor loadable weights.
    """
    salience = _as_salience(salience)
    extractor = extractor if extractor is not None else load_melody_extractor(weights)
    n_frames = math.ceil(salience.shape[1] * MELODY_FRAME_RATE / salience_fps)
    condition = salience_segment(salience, salience_fps, 0.0, n_frames, MELODY_FRAME_RATE)  # [K, T50]
    voiced = condition.amax(dim=0) > 0
    if not voiced.any():
        return math.nan
    extracted = extract_salience(mono(wav), sample_rate, model=extractor)  # [K, T'] at 50 fps
    extracted = extracted[:, :n_frames]
    extracted = torch.cat([extracted, extracted.new_zeros(N_MELODY_BINS, n_frames - extracted.shape[1])], 1)
    agree = (extracted.amax(0) > 0) & (extracted.argmax(0) == condition.argmax(0))
    return float(agree[voiced].float().mean())


def melody_similarity(wav: Waveform, sample_rate: int, salience: torch.Tensor,
                      salience_fps: float = float(MELODY_FRAME_RATE),
                      extractor: MultiF0Salience | None = None) -> dict[str, float]:
    """`{"chroma_similarity"}` of audio against its melody condition `[K, T]`, plus
    `"salience_accuracy"` when a loaded `extractor` is given (module docstring)."""
    scores = {"chroma_similarity": chroma_similarity(wav, sample_rate, salience, salience_fps)}
    if extractor is not None:
        scores["salience_accuracy"] = melody_salience_accuracy(
            wav, sample_rate, salience, extractor=extractor, salience_fps=salience_fps)
    return scores
