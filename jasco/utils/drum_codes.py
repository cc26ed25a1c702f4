"""Drum-code cache: codebook-0 codes of each track's whole drum stem, so training skips the codec.

File: `OUT/drum_codes/<id>.npy`, int16 `[T_total]` at the codec frame rate (50/s), the codes of
the whole stem converted to the codec's rate and channels, encoded with the same windowing as the
latent cache (`jasco.utils.latent_cache.encode_windowed`). The dataset slices frames
`round(seek_time * 50) .. + T` (see `jasco.data.jasco_dataset.read_code_segment`).

Shapes: `C` channels, `N` samples, `T` latent frames.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from jasco.models.codec import EncodecCompressionModel
from jasco.utils.latent_cache import encode_track


def compute_drum_codes(codec: EncodecCompressionModel, stem: torch.Tensor, sample_rate: int,
                       window_s: float = 20.0, overlap_s: float = 4.0) -> torch.Tensor:
    """Codebook-0 codes `[T]` (int64) of a whole drum stem `[C, N]` at `sample_rate`."""
    latents = encode_track(codec, stem, sample_rate, window_s, overlap_s)  # [T, F]
    return codec.codes_from_latents(latents[None], num_codebooks=1)[0, 0].cpu()


def write_drum_codes(path: str | Path, codes: torch.Tensor, cardinality: int = 2048) -> Path:
    """Write codes `[T]` as int16 `.npy` (atomically); codes must fit int16."""
    if codes.dim() != 1:
        raise ValueError(f"drum codes must be [T], got shape {tuple(codes.shape)}.")
    if cardinality > np.iinfo(np.int16).max + 1:
        raise ValueError(f"codebook size {cardinality} does not fit int16 drum-code files.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        np.save(f, codes.cpu().numpy().astype(np.int16), allow_pickle=False)
    tmp.replace(path)
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
