"""Melody salience files and their conversion to per-frame one-hot melody conditions.

File: `<audio stem>.salience.npz` with `salience` `[K, F]` (K = 53 bins, MIDI 43 + k) and a scalar
`frame_rate`; or a plain `.npy` `[K, F]` whose frame rate is given by the caller (published: 86).
`[F, K]` is accepted when only one axis has K entries.

Shapes: `K` salience bins (53), `F` salience frames, `T` latent frames (50 per second).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from jasco.files import atomic_write

N_MELODY_BINS = 53  # rows of the melody condition: MIDI 43 + k
MELODY_LOWEST_MIDI = 43
MELODY_FRAME_RATE = 50  # frames per second of the melody condition (the codec frame rate)
DEFAULT_SALIENCE_FRAME_RATE = 86.0


class SalienceError(ValueError):
    """A salience file is unreadable or has the wrong shape."""


def _orient(array: np.ndarray, path: Path | str) -> np.ndarray:
    """Return `[K, F]`, transposing `[F, K]` when unambiguous."""
    if array.ndim != 2:
        raise SalienceError(f"Salience in {path} must be 2-D [{N_MELODY_BINS}, frames], got shape {array.shape}.")
    if array.shape[0] == N_MELODY_BINS:
        return array
    if array.shape[1] == N_MELODY_BINS:
        return array.T  # stored time-major [F, K] (published demo matrices)
    raise SalienceError(f"Salience in {path} has shape {array.shape}: expected {N_MELODY_BINS} pitch bins "
                        f"(MIDI 43..95) on one axis. Re-extract it with the 53-bin pipeline.")


def read_salience(path: str | Path, default_frame_rate: float = DEFAULT_SALIENCE_FRAME_RATE
                  ) -> tuple[torch.Tensor, float]:
    """Read a `.npz`/`.npy` salience file.

    Returns:
        (salience `[K, F]` float32, frame_rate); `.npy` files (and `.npz` without `frame_rate`)
        use `default_frame_rate`.
    """
    path = Path(path)
    if not path.exists():
        raise SalienceError(f"Salience file {path} does not exist.")
    frame_rate = float(default_frame_rate)
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                if "salience" not in data:
                    raise SalienceError(f"Salience file {path} has no 'salience' array "
                                        f"(found: {', '.join(data.files)}).")
                array = np.asarray(data["salience"])
                if "frame_rate" in data:
                    frame_rate = float(np.asarray(data["frame_rate"]).reshape(()))
        else:
            array = np.load(path, allow_pickle=False)
    except SalienceError:
        raise
    except Exception as exc:
        raise SalienceError(f"Cannot read salience file {path}: {exc}") from exc
    if frame_rate <= 0:
        raise SalienceError(f"Salience file {path} has a non-positive frame_rate {frame_rate}.")
    array = _orient(array, path)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)), frame_rate


def write_salience(path: str | Path, salience: torch.Tensor | np.ndarray, frame_rate: float) -> Path:
    """Write `[K, F]` salience as `.npz` with its frame rate (atomically)."""
    path = Path(path)
    array = _orient(np.asarray(salience, dtype=np.float32), path)
    with atomic_write(path, "wb") as f:  # an open file keeps numpy from appending ".npz" to other names
        np.savez(f, salience=array, frame_rate=np.float64(frame_rate))
    return path


def notes_to_salience(notes: Sequence[tuple[float, float, int]], n_frames: int,
                      frame_rate: float = MELODY_FRAME_RATE) -> np.ndarray:
    """One-hot melody `[K, T]` (float32) of `(start_s, end_s, midi)` notes: frame f (at `f / frame_rate`
    s) holds the note sounding then; rests and notes outside MIDI 43..95 stay zero.

    A note covers the frames from `ceil(start * rate)` up to, not including, `ceil(end * rate)`.
    """
    out = np.zeros((N_MELODY_BINS, n_frames), dtype=np.float32)
    for start, end, midi in notes:
        row = int(midi) - MELODY_LOWEST_MIDI
        if 0 <= row < N_MELODY_BINS:
            first, stop = math.ceil(start * frame_rate - 1e-6), math.ceil(end * frame_rate - 1e-6)
            out[row, max(first, 0):min(stop, n_frames)] = 1.0
    return out


def one_hot_frames(salience: torch.Tensor) -> torch.Tensor:
    """Keep only the argmax bin of each frame `[K, T]` (set to 1); all-zero frames stay zero."""
    voiced = salience.amax(dim=0) > 0  # [T]
    out = torch.zeros_like(salience, dtype=torch.float32)
    out[salience.argmax(dim=0)[voiced], torch.nonzero(voiced).squeeze(-1)] = 1.0
    return out


def salience_segment(salience: torch.Tensor, frame_rate: float, seek_time: float, n_frames: int,
                     target_rate: float = 50.0) -> torch.Tensor:
    """The one-hot melody `[K, T]` of a segment starting at `seek_time`.

    Target frame j (time `seek_time + j / target_rate`) is linearly interpolated between the two
    nearest salience frames; times past the end of the salience are zero (padding); then each
    frame keeps only its argmax bin.
    """
    if salience.dim() != 2 or salience.shape[0] != N_MELODY_BINS:
        raise SalienceError(f"salience must be [{N_MELODY_BINS}, F], got {tuple(salience.shape)}.")
    n_src = salience.shape[1]
    times = seek_time + torch.arange(n_frames, dtype=torch.float64) / target_rate
    pos = times * frame_rate  # fractional source frame index of each target frame
    valid = pos <= n_src - 1
    lo = pos.floor().long().clamp(0, max(n_src - 1, 0))
    hi = (lo + 1).clamp(max=max(n_src - 1, 0))
    frac = (pos - lo.double()).clamp(0, 1).float()
    if n_src == 0:
        return torch.zeros(N_MELODY_BINS, n_frames)
    src = salience.float()
    values = src[:, lo] * (1 - frac) + src[:, hi] * frac  # [K, T]
    values = values * valid[None].float()
    return one_hot_frames(values)
