"""Drum-code cache: codebook-0 codes of each track's whole drum stem, so training skips the codec.

File: `OUT/drum_codes/<id>.npy`, int16 `[T_total]` at the codec frame rate (50/s), the codes of
the whole stem converted to the codec's rate and channels, encoded with the same windowing as the
latent cache (`jasco.models.track_encoding`). The dataset slices frames
`round(seek_time * 50) .. + T` (`read_code_segment`).

Shapes: `C` channels, `N` samples, `T` latent frames.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from jasco.data.side_files import SideFileError
from jasco.files import atomic_write


def write_drum_codes(path: str | Path, codes: torch.Tensor, cardinality: int = 2048) -> Path:
    """Write codes `[T]` as int16 `.npy` (atomically); codes must fit int16."""
    if codes.dim() != 1:
        raise ValueError(f"drum codes must be [T], got shape {tuple(codes.shape)}.")
    if cardinality > np.iinfo(np.int16).max + 1:
        raise ValueError(f"codebook size {cardinality} does not fit int16 drum-code files.")
    path = Path(path)
    with atomic_write(path, "wb") as f:
        np.save(f, codes.cpu().numpy().astype(np.int16), allow_pickle=False)
    return path


def is_valid_drum_codes(path: str | Path, n_frames: int | None = None) -> bool:
    """True when `path` is a readable int16 `[T]` array (with `T == n_frames` when given)."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception:
        return False
    if array.ndim != 1 or array.dtype != np.int16:
        return False
    return n_frames is None or array.shape[0] == n_frames


def read_code_segment(path: str | Path, seek_time: float, n_frames: int, frame_rate: float = 50.0) -> torch.Tensor:
    """Drum codes `[T]` int64 starting at `seek_time` from an int16 `.npy` `[T_total]`.

    Past the end of the file the last code is repeated (the drums conditioner pads short cached
    codes the same way); a segment starting past the end raises SideFileError.
    """
    path = Path(path)
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise SideFileError(f"Cannot read drum codes file {path}: {exc}") from exc
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise SideFileError(f"Drum codes file {path} has shape {array.shape} and dtype {array.dtype}; expected "
                            f"integer [frames] at {frame_rate:g} frames/s (rebuild it with `python -m jasco.prepare`).")
    start = int(round(seek_time * frame_rate))
    chunk = torch.from_numpy(np.asarray(array[start:start + n_frames], dtype=np.int64))  # reads only this slice
    if chunk.numel() == 0:
        raise SideFileError(f"Drum codes file {path} has {array.shape[0]} frames; a segment at {seek_time:.2f} s "
                            "starts past its end (was it made from another audio file?).")
    if chunk.numel() < n_frames:
        chunk = torch.cat([chunk, chunk[-1:].expand(n_frames - chunk.numel())])
    return chunk
