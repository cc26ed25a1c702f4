"""Latent cache: every track encoded once by the training codec, stored as RAW latents per track.

Layout (under a dataset folder `OUT`):

    OUT/latents/codec.json                  identity of the codec that wrote them (`codec_identity`)
    OUT/latents/shard_NNNNN/<id>.npy        float16|float32 `[T_total, F]`, raw encoder output

The latents are written by `python -m jasco.prepare` with `jasco.models.track_encoding` and read
here, a segment at a time, by the dataset (`read_latent_segment`).

Shapes: `C` channels, `N` samples, `T` latent frames (50 per second), `F` latent dim (128).
"""
from __future__ import annotations

import hashlib
import inspect
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from jasco.data.side_files import SideFileError
from jasco.files import atomic_write, write_text_atomic

CODEC_FILE = "codec.json"
LATENT_DIM = 128  # EnCodec 32 kHz latent width F
NUM_SHARD_FOLDERS = 256


class LatentCacheError(ValueError):
    """The latent cache is missing, corrupt, or was made with another codec."""


def shard_folder(track_id: str) -> str:
    """Stable shard folder of a track (`shard_NNNNN`), independent of track order and rank count."""
    digest = int(hashlib.sha1(track_id.encode("utf-8")).hexdigest()[:8], 16)
    return f"shard_{digest % NUM_SHARD_FOLDERS:05d}"


def latent_path(root: str | Path, track_id: str) -> Path:
    """Where the latents of `track_id` live under `root` (the `latents/` folder)."""
    return Path(root) / shard_folder(track_id) / f"{track_id}.npy"


def state_dict_sha256(module: torch.nn.Module) -> str:
    """sha256 over the state_dict's names, dtypes, shapes and bytes, in key order."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        buffer = io.BytesIO()
        np.save(buffer, t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy(), allow_pickle=False)
        digest.update(buffer.getvalue())
    return digest.hexdigest()


def _architecture(config: Any) -> dict[str, Any]:
    """The codec config's own constructor fields (no library version, paths or output flags)."""
    from transformers import PretrainedConfig

    generic = set(inspect.signature(PretrainedConfig.__init__).parameters) | set(PretrainedConfig().to_dict())
    names = set(inspect.signature(type(config).__init__).parameters) - generic - {"self", "kwargs"}
    data = {k: v for k, v in config.to_dict().items() if k in names}
    return json.loads(json.dumps(data, sort_keys=True))  # tuples -> lists, as stored in codec.json


def codec_identity(codec: nn.Module) -> dict[str, Any]:
    """Config, weight hash and latent normalisation of a codec: what makes two caches compatible."""
    return {
        "config": _architecture(codec.model.config),
        "state_dict_sha256": state_dict_sha256(codec.model),
        "latent_mean": codec.latent_mean,
        "latent_std": codec.latent_std,
        "sample_rate": codec.sample_rate,
        "frame_rate": codec.frame_rate,
        "latent_dim": codec.latent_dim,
        "stored": "raw",
    }


def write_latents(path: str | Path, latents: torch.Tensor, dtype: str = "float16") -> Path:
    """Write raw latents `[T, F]` as a memory-mappable `.npy` (atomically: unique temp file, then rename).

    Raises:
        ValueError: a bad dtype, or non-finite latents (NaN/inf would poison training silently).
    """
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be float16 or float32, got {dtype!r}.")
    array = latents.detach().cpu().numpy().astype(dtype)
    if not np.isfinite(array).all():
        raise ValueError(f"latents for {path} hold {int((~np.isfinite(array)).sum())} non-finite values "
                         f"(NaN/inf; the audio or the codec is broken, or they overflow {dtype}); not written.")
    path = Path(path)
    with atomic_write(path, "wb") as f:
        np.save(f, array, allow_pickle=False)
    return path


def is_valid_latents(path: str | Path, n_frames: int | None = None, latent_dim: int = LATENT_DIM) -> bool:
    """True when `path` is a readable `[T, latent_dim]` array (with `T == n_frames` when given)."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception:
        return False
    if array.ndim != 2 or array.shape[1] != latent_dim:
        return False
    return n_frames is None or array.shape[0] == n_frames


def write_codec_identity(root: str | Path, codec: nn.Module) -> dict[str, Any]:
    """Write `root/codec.json`; refuses to overwrite the identity of another codec."""
    root = Path(root)
    identity = codec_identity(codec)
    existing = root / CODEC_FILE
    if existing.exists():
        check_identity(_read_identity(existing), identity, existing)
        return identity
    write_text_atomic(existing, json.dumps(identity, indent=1, sort_keys=True) + "\n")
    return identity


def _read_identity(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise LatentCacheError(f"Cannot read the codec identity {path}: {exc}") from exc


def check_identity(stored: dict[str, Any], current: dict[str, Any], where: str | Path) -> None:
    """Raise LatentCacheError when two codec identities differ (weights, config or normalisation)."""
    for key in ("state_dict_sha256", "config", "latent_mean", "latent_std"):
        if stored.get(key) != current.get(key):
            raise LatentCacheError(
                f"The latent cache {where} was made with another codec ({key} differs: cache "
                f"{str(stored.get(key))[:80]!r} vs current {str(current.get(key))[:80]!r}). Rebuild it with "
                "`python -m jasco.prepare ... --steps latents --codec <the training codec>` into a new "
                "folder, or train with the codec the cache was made with.")


def find_codec_file(manifest_or_dir: str | Path) -> Path:
    """The `codec.json` of a dataset: under `latents/` next to (or above) the manifest, or given directly."""
    path = Path(manifest_or_dir)
    if path.name == CODEC_FILE:
        return path
    start = path if path.is_dir() else path.parent
    for folder in (start, start / "latents", start.parent / "latents", start.parent.parent / "latents"):
        if (folder / CODEC_FILE).is_file():
            return folder / CODEC_FILE
    # Fall back to the folder of the first latents file named by the manifest.
    from jasco.data.manifest import load_manifest

    for meta in load_manifest(path):
        latents = meta.get_path("latents_path")
        if latents is not None:
            for folder in Path(latents).parents:
                if (folder / CODEC_FILE).is_file():
                    return folder / CODEC_FILE
    raise LatentCacheError(f"No {CODEC_FILE} found for {path}: a latent cache must carry its codec identity "
                           "(written by `python -m jasco.prepare`).")


def verify_latent_cache(manifest_or_dir: str | Path, codec: nn.Module) -> dict[str, Any]:
    """Check that the latent cache of a dataset was made with `codec`; returns the stored identity.

    Raises:
        LatentCacheError: no identity file, or one made with another codec.
    """
    where = find_codec_file(manifest_or_dir)
    stored = _read_identity(where)
    check_identity(stored, codec_identity(codec), where)
    return stored


def read_latent_segment(path: str | Path, seek_time: float, n_frames: int, frame_rate: float = 50.0) -> torch.Tensor:
    """Latent frames `[T, F]` starting at `seek_time` from a `.npy` `[T_total, F]`, zero-padded at the end."""
    path = Path(path)
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise SideFileError(f"Cannot read latents file {path}: {exc}") from exc
    if array.ndim != 2 or array.shape[1] != LATENT_DIM:
        raise SideFileError(f"Latents file {path} has shape {array.shape}; expected [frames, {LATENT_DIM}] "
                            f"at {frame_rate:g} frames/s.")
    start = int(round(seek_time * frame_rate))
    chunk = np.array(array[start:start + n_frames], dtype=np.float32)  # reads only this slice (a copy)
    out = torch.zeros(n_frames, LATENT_DIM)
    out[:chunk.shape[0]] = torch.from_numpy(chunk)
    return out
