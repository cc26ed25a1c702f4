"""Shared helpers for the data-preparation tests: a tiny copy of egs/example and prepare settings."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf

EXAMPLE = Path(__file__).resolve().parents[1] / "egs" / "example" / "audio"
SIDE_SUFFIXES = (".wav", ".json", ".chords.json", ".salience.npz", ".drums.wav")


def copy_clips(dest: Path, names: tuple[str, ...] = ("clip_00", "clip_01", "clip_02"),
               sides: tuple[str, ...] = SIDE_SUFFIXES, seconds: float | None = 6.0) -> Path:
    """Copy example clips (audio and the chosen side files) into `dest`, audio, chords and salience cut to `seconds`."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        for suffix in sides:
            src = EXAMPLE / (name + suffix)
            if not src.exists():
                continue
            if suffix.endswith(".wav") and seconds is not None:
                data, sr = sf.read(str(src), frames=int(seconds * 32000), dtype="float32")
                sf.write(str(dest / src.name), data, sr, subtype="FLOAT")
            elif suffix == ".chords.json" and seconds is not None:
                rows = [row for row in json.loads(src.read_text()) if row[0] < seconds]
                (dest / src.name).write_text(json.dumps(rows))
            elif suffix == ".salience.npz" and seconds is not None:
                with np.load(src) as data:
                    rate = float(data["frame_rate"])
                    np.savez(dest / src.name, salience=data["salience"][:, :int(seconds * rate)], frame_rate=rate)
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


def tone(path: Path, seconds: float = 2.0, sample_rate: int = 32000, channels: int = 1, amplitude: float = 0.3,
         freq: float = 220.0, subtype: str = "FLOAT") -> Path:
    """Write a harmonic tone with a pulse (so chords, codes and latents vary), `[N, C]` via soundfile."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    x = sum(np.sin(2 * np.pi * freq * k * t) / k for k in (1, 1.25, 1.5)) / 3
    x = amplitude * x * (0.6 + 0.4 * (np.sin(2 * np.pi * 2 * t) > 0))
    data = np.repeat(x[:, None], channels, axis=1).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, sample_rate, subtype=subtype)
    return path


def truncated_mp3(path: Path, seconds: float = 6.0, keep: float = 1 / 3, sample_rate: int = 32000) -> Path:
    """An mp3 whose header (Xing frame count) says `seconds` but whose data stops after `keep` of its bytes."""
    import av

    t = np.arange(int(seconds * sample_rate)) / sample_rate
    x = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libmp3lame", rate=sample_rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(x[None], format="flt", layout="mono")
        frame.sample_rate = sample_rate
        for packet in list(stream.encode(frame)) + list(stream.encode(None)):
            container.mux(packet)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    return path


def rows(path: Path) -> list[dict]:
    """The JSON lines of a failures/warnings file (empty when it does not exist)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def cli_args(src: Path, out: Path, *extra: str, steps: str = "manifest,chords,melody,drums,latents") -> list[str]:
    """Fast `python -m jasco.prepare` arguments: debug codec, templates chords, 1 worker, short segments."""
    return [str(src), str(out), "--steps", steps, "--codec", "debug", "--chords-backend", "templates",
            "--workers", "1", "--segment-check", "1", "--no-progress", "--latent-dtype", "float32",
            "--latent-window", "2", "--latent-overlap", "0.5", *extra]
