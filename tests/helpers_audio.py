"""Shared test helpers for jasco.data: synthetic audio, compressed encodes, manifests, sidecars."""
from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from jasco.controls.chords.symbols import parse_chord


def sine(duration: float, sample_rate: int = 32000, freq: float = 440.0, amplitude: float = 0.5,
         channels: int = 1) -> torch.Tensor:
    """A sine `[C, N]` (float32)."""
    t = torch.arange(int(round(duration * sample_rate)), dtype=torch.float64) / sample_rate
    wav = (amplitude * torch.sin(2 * torch.pi * freq * t)).float()
    return wav[None].repeat(channels, 1)


def ramp(duration: float, sample_rate: int = 8000, channels: int = 1) -> torch.Tensor:
    """A ramp whose value encodes the sample index: sample i = i / 2**16 (exact in 16-bit PCM * 2)."""
    n = int(round(duration * sample_rate))
    wav = torch.arange(n, dtype=torch.float64) / 65536.0
    return wav.float()[None].repeat(channels, 1)


def write_wav(path: Path, wav: torch.Tensor, sample_rate: int, subtype: str = "FLOAT") -> Path:
    """Write `[C, N]` audio as-is (no normalisation)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wav.numpy().T, sample_rate, subtype=subtype)
    return path


def encode_with_av(path: Path, wav: torch.Tensor, sample_rate: int, codec: str) -> Path:
    """Encode `[C, N]` audio with PyAV (e.g. codec 'mp3', 'aac', 'libopus'); raises if unavailable."""
    import av

    channels = wav.shape[0]
    layout = "mono" if channels == 1 else "stereo"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=sample_rate, layout=layout)
        fmt = stream.codec_context.codec.audio_formats[0].name
        frame_size = 1024
        data = wav.numpy().astype(np.float32)
        for start in range(0, data.shape[1], frame_size):
            chunk = np.ascontiguousarray(data[:, start:start + frame_size])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
            frame.sample_rate = sample_rate
            frame.pts = start
            frame.time_base = Fraction(1, sample_rate)
            if fmt != "fltp":
                resampler = av.AudioResampler(format=fmt, layout=layout, rate=sample_rate)
                frames = resampler.resample(frame)
            else:
                frames = [frame]
            for f in frames:
                for packet in stream.encode(f):
                    container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def write_manifest_lines(path: Path, rows: list[dict]) -> Path:
    """Write raw dict rows as a jsonl manifest."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_audio_dir(root: Path, durations: list[float], sample_rate: int = 16000,
                   sidecars: bool = False) -> list[Path]:
    """Create `song{i}.wav` files of distinct sines (and `.json` sidecars) under root."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, d in enumerate(durations):
        p = write_wav(root / f"song{i}.wav", sine(d, sample_rate, freq=220.0 * (i + 1)), sample_rate)
        if sidecars:
            (root / f"song{i}.json").write_text(json.dumps(
                {"description": f"song number {i}", "genre": "rock", "bpm": 120, "key": "C major",
                 "moods": ["happy", "calm"], "keywords": "guitar, drums", "title": f"Song {i}"}))
        paths.append(p)
    return paths


def chord_track(progression: list[tuple[float, str]], duration: float, sr: int) -> torch.Tensor:
    """Sustained chord tones (MIDI 55..66) and a bass note, 5 decaying harmonics each `[N]`."""
    t = torch.arange(int(duration * sr), dtype=torch.float64) / sr
    out = torch.zeros_like(t)
    ends = [s for s, _ in progression[1:]] + [duration]
    for (start, label), end in zip(progression, ends):
        mask = (t >= start) & (t < end)
        symbol = parse_chord(label)
        bass = symbol.bass if symbol.bass is not None else symbol.root
        midis = [55 + (pc - 55) % 12 for pc in symbol.pitch_classes()] + [36 + (bass - 36) % 12]
        for midi in midis:
            freq = 440.0 * 2 ** ((midi - 69) / 12)
            for h in range(1, 6):
                out[mask] += 0.6 ** (h - 1) * torch.sin(2 * math.pi * h * freq * t[mask])
    return (0.8 * out / out.abs().max()).float()
