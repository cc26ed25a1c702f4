"""Shared helpers for the data-preparation tests: a tiny copy of egs/example and prepare settings."""
from __future__ import annotations

import shutil
from pathlib import Path

import soundfile as sf

EXAMPLE = Path(__file__).resolve().parents[1] / "egs" / "example" / "audio"
SIDE_SUFFIXES = (".wav", ".json", ".chords.json", ".salience.npz", ".drums.wav")


def copy_clips(dest: Path, names: tuple[str, ...] = ("clip_00", "clip_01", "clip_02"),
               sides: tuple[str, ...] = SIDE_SUFFIXES, seconds: float | None = 6.0) -> Path:
    """Copy example clips (audio and the chosen side files) into `dest`, audio cut to `seconds`."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        for suffix in sides:
            src = EXAMPLE / (name + suffix)
            if not src.exists():
                continue
            if suffix.endswith(".wav") and seconds is not None:
                data, sr = sf.read(str(src), frames=int(seconds * 32000), dtype="float32")
                sf.write(str(dest / src.name), data, sr, subtype="FLOAT")
            else:
                shutil.copy(src, dest / src.name)
    return dest


def settings(**overrides) -> dict:
    """Fast CPU settings for `jasco.prepare.runner.prepare` (debug codec, templates chords, 1 worker)."""
    base = {"steps": ["manifest", "chords", "melody", "drums", "latents"], "workers": 1,
            "chords_backend": "templates", "vocabulary": "builtin", "melody_weights": None,
            "melody_frame_rate": 86.0, "codec": "debug", "demucs_model": "htdemucs", "latent_window": 20.0,
            "latent_overlap": 4.0, "latent_dtype": "float32", "segment_check": 4.0, "shard": 0,
            "num_shards": 1, "valid_fraction": 0.0, "progress": False}
    base.update(overrides)
    return base
