"""A picture of a generation's controls over time: chords, melody, drums above the spectrogram.

Uses matplotlib's object API with the Agg canvas (no pyplot, no display, no global backend change).

Shapes: `C` channels, `N` samples, `K` melody bins (53, MIDI 43 + k), `T` latent frames.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jasco.audio.convert import to_mono
from jasco.controls.melody.salience import MELODY_LOWEST_MIDI


def _cpu_mono(wav: torch.Tensor) -> torch.Tensor:
    return to_mono(wav.detach().float().cpu())


def _envelope(wav: torch.Tensor, points: int = 2000) -> torch.Tensor:
    """Peak amplitude of `wav [N]` over `points` blocks."""
    block = max(1, wav.numel() // points)
    usable = wav[: wav.numel() // block * block]
    return usable.abs().reshape(-1, block).amax(-1) if usable.numel() else wav.abs()


def plot_controls(path: str | os.PathLike, wav: torch.Tensor, sample_rate: int,
                  chords: Sequence[tuple[float, str]] | None = None, melody: torch.Tensor | None = None,
                  drums: torch.Tensor | None = None, drums_sample_rate: int | None = None,
                  frame_rate: float = 50.0, title: str | None = None) -> Path:
    """Write a PNG: one row per given control (chords, melody, drums) above the spectrogram of `wav`.

    Args:
        path: output file (PNG).
        wav: generated audio `[C, N]` or `[N]`.
        sample_rate: its sample rate.
        chords: `(start_s, label)` changes.
        melody: salience `[K, T]` at `frame_rate`; the argmax bin of each voiced frame is drawn.
        drums: drum audio `[C, N]` or `[N]` at `drums_sample_rate` (default `sample_rate`).
        frame_rate: frames per second of `melody`.
        title: figure title.
    """
    audio = _cpu_mono(wav)
    duration = audio.numel() / sample_rate
    rows = [name for name, value in (("chords", chords), ("melody", melody), ("drums", drums)) if value is not None]
    heights = [1.0 if name == "chords" else 1.5 for name in rows] + [3.0]
    fig = Figure(figsize=(12, sum(heights) + 0.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(heights), 1, sharex=True, gridspec_kw={"height_ratios": heights}, squeeze=False)[:, 0]
    for ax, name in zip(axes, rows):
        if name == "chords":
            _draw_chords(ax, chords, duration)
        elif name == "melody":
            _draw_melody(ax, melody, frame_rate)
        else:
            _draw_drums(ax, drums, drums_sample_rate or sample_rate)
    _draw_spectrogram(axes[-1], audio, sample_rate)
    axes[-1].set_xlim(0, duration)
    axes[-1].set_xlabel("time (s)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return path


def _draw_chords(ax, chords: Sequence[tuple[float, str]], duration: float) -> None:
    changes = sorted((float(start), str(label)) for start, label in chords)
    ends = [start for start, _ in changes[1:]] + [duration]
    for i, ((start, label), end) in enumerate(zip(changes, ends)):
        ax.axvspan(start, end, color="C0" if i % 2 == 0 else "C1", alpha=0.3)
        ax.text((start + min(end, duration)) / 2, 0.5, label, ha="center", va="center", fontsize=9, clip_on=True)
    ax.set_yticks([])
    ax.set_ylabel("chords")


def _draw_melody(ax, melody: torch.Tensor, frame_rate: float) -> None:
    salience = melody.detach().float().cpu()
    voiced = salience.amax(0) > 0  # [T]
    frames = torch.nonzero(voiced).flatten()
    pitches = salience.argmax(0)[frames] + MELODY_LOWEST_MIDI
    ax.scatter((frames / frame_rate).numpy(), pitches.numpy(), s=2, color="C2")
    ax.set_ylim(MELODY_LOWEST_MIDI - 1, MELODY_LOWEST_MIDI + salience.shape[0])
    ax.set_ylabel("melody (MIDI)")


def _draw_drums(ax, drums: torch.Tensor, sample_rate: int) -> None:
    env = _envelope(_cpu_mono(drums))
    times = torch.linspace(0, _cpu_mono(drums).numel() / sample_rate, env.numel())
    ax.fill_between(times.numpy(), (-env).numpy(), env.numpy(), color="C3", linewidth=0)
    ax.set_ylabel("drums")


def _draw_spectrogram(ax, audio: torch.Tensor, sample_rate: int) -> None:
    n_fft = 1024
    if audio.numel() < n_fft:
        audio = torch.nn.functional.pad(audio, (0, n_fft - audio.numel()))
    spec = torch.stft(audio, n_fft, hop_length=256, window=torch.hann_window(n_fft), return_complex=True).abs()
    db = 20 * torch.log10(spec.clamp_min(1e-5))
    db = db.clamp_min(db.max() - 80)  # 80 dB of dynamic range
    ax.imshow(db.numpy(), origin="lower", aspect="auto", cmap="magma",
              extent=(0, audio.numel() / sample_rate, 0, sample_rate / 2000))
    ax.set_ylabel("frequency (kHz)")
