"""Treble and bass chroma from a short-time Fourier transform, for chord recognition.

The pipeline: mono mix -> resample to `ANALYSIS_RATE` -> STFT magnitude -> median filter over
time (keeps sustained, harmonic partials; drops drum hits) -> fold bins onto equal-tempered
semitones tuned to A440 -> log compression -> whitening over pitch (removes the broadband floor)
-> fold semitones onto 12 pitch classes, separately for a bass and a treble register.

Shapes: `N` samples, `K` STFT bins, `P` semitones, `F` frames.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from jasco.audio.convert import convert_audio, to_mono

ANALYSIS_RATE = 8000  # partials above 4 kHz add little to pitch-class content
N_FFT = 4096  # 0.5 s window: ~2 Hz bins, enough to split semitones down to ~MIDI 33
LOWEST_MIDI, HIGHEST_MIDI = 24, 104
BASS_RANGE = (33, 55)  # A1..G3; starts above the ~45 Hz tail of kick drums
TREBLE_RANGE = (48, 96)  # C3..C7


@dataclass
class ChromaFeatures:
    """Per-frame chroma of one clip.

    Attributes:
        treble: `[12, F]` non-negative pitch-class energy of the treble register.
        bass: `[12, F]` non-negative pitch-class energy of the bass register.
        rms: `[F]` frame RMS of the input (before any filtering), for no-chord detection.
        frame_rate: frames per second; frame f is centred at `f / frame_rate` seconds.
    """

    treble: torch.Tensor
    bass: torch.Tensor
    rms: torch.Tensor
    frame_rate: float

    @property
    def num_frames(self) -> int:
        """F."""
        return int(self.treble.shape[-1])


def _semitone_map(sample_rate: int, n_fft: int) -> torch.Tensor:
    """Matrix `[P, K]` spreading each STFT bin onto its nearest semitone(s), A4 = 440 Hz."""
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft  # [K]
    midi = 69.0 + 12.0 * torch.log2(freqs.clamp(min=1e-3) / 440.0)  # [K]
    pitches = torch.arange(LOWEST_MIDI, HIGHEST_MIDI + 1, dtype=torch.float64)  # [P]
    # Triangular kernel of half-width 0.5 semitone: a bin between two semitones feeds neither
    # fully, so a neighbour's leaked energy does not pass for a pitch class of its own.
    weights = (1.0 - 2.0 * (midi[None, :] - pitches[:, None]).abs()).clamp(min=0.0)  # [P, K]
    weights[:, 0] = 0.0
    return weights.float()


def _median_over_time(mag: torch.Tensor, width: int) -> torch.Tensor:
    """Median filter of `[K, F]` along frames (odd `width`), edges replicated."""
    if width <= 1 or mag.shape[-1] < 2:
        return mag
    half = width // 2
    padded = F.pad(mag[None], (half, half), mode="replicate")[0]  # [K, F + 2 half]
    return padded.unfold(-1, width, 1).median(dim=-1).values  # [K, F]


def _note_dictionary(spectral_shape: float, num_harmonics: int = 8) -> torch.Tensor:
    """Semitone spectrum of a unit note at each pitch `[P, P]` (column = note): its harmonic h
    at +12 log2(h) semitones with amplitude `spectral_shape ** (h - 1)`."""
    size = HIGHEST_MIDI - LOWEST_MIDI + 1
    dictionary = torch.zeros(size, size)
    for h in range(1, num_harmonics + 1):
        shift = round(12 * math.log2(h))
        if shift < size:
            idx = torch.arange(size - shift)
            dictionary[idx + shift, idx] += spectral_shape ** (h - 1)
    return dictionary


def transcribe(pitch: torch.Tensor, spectral_shape: float = 0.7, iterations: int = 40
               ) -> torch.Tensor:
    """Approximate note activations `[P, F]` explaining a semitone spectrum `[P, F]` as a
    non-negative sum of harmonic notes (multiplicative NNLS updates).

    This removes the fifths and thirds that harmonics add to every note, which chord templates
    would otherwise read as extra chord tones (`Abm` -> `Abm7`).
    """
    dictionary = _note_dictionary(spectral_shape)  # [P, P]
    gram = dictionary.T @ dictionary  # [P, P]
    numerator = dictionary.T @ pitch  # [P, F]
    notes = numerator.clamp(min=0.0) + 1e-9
    for _ in range(iterations):
        notes = notes * numerator / (gram @ notes + 1e-9)
    return notes


def _fold(pitch: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """Sum semitone rows `[P, F]` of MIDI low..high (inclusive) into pitch classes `[12, F]`."""
    out = torch.zeros(12, pitch.shape[-1], dtype=pitch.dtype)
    rows = torch.arange(low, high + 1)
    out.index_add_(0, rows % 12, pitch[rows - LOWEST_MIDI])
    return out


def chroma_features(wav: torch.Tensor, sample_rate: int, frame_rate: float = 20.0,
                    median_s: float = 0.45, compression: float = 100.0,
                    whitening_semitones: int = 18, spectral_shape: float = 0.7,
                    transcription_iterations: int = 40) -> ChromaFeatures:
    """Treble and bass chroma of a waveform (`[N]` or `[C, N]`).

    Args:
        wav: audio, channels first when 2-D; channels are averaged.
        sample_rate: its sample rate in Hz.
        frame_rate: output frames per second.
        median_s: length of the time median filter (0 disables it).
        compression: gamma of `log(1 + gamma * x)` on the max-normalised semitone spectrum.
        whitening_semitones: width of the moving average over pitch subtracted after compression
            (0 disables whitening).
        spectral_shape: harmonic amplitude decay of the notes `transcribe` assumes.
        transcription_iterations: NNLS iterations (0 folds the raw spectrum).
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}.")
    mono = to_mono(wav)
    hop = max(1, int(round(ANALYSIS_RATE / frame_rate)))
    rate = ANALYSIS_RATE / hop
    if mono.shape[-1] == 0:
        empty = torch.zeros(12, 0)
        return ChromaFeatures(empty, empty.clone(), torch.zeros(0), rate)
    x = convert_audio(mono[None], sample_rate, ANALYSIS_RATE, 1)[0]  # [N']
    window = torch.hann_window(N_FFT)
    spec = torch.stft(x, N_FFT, hop_length=hop, window=window, center=True, pad_mode="constant",
                      return_complex=True)  # [K, F]
    mag = spec.abs() * (2.0 / window.sum())  # a full-scale sine peaks near 1
    frames = F.pad(x, (N_FFT // 2, N_FFT // 2)).unfold(0, N_FFT, hop)  # [F, N_FFT]
    rms = frames[:, N_FFT // 2 - hop // 2: N_FFT // 2 + hop - hop // 2].pow(2).mean(-1).sqrt()
    width = max(1, int(round(median_s * rate)) | 1)
    mag = _median_over_time(mag, width)
    pitch = _semitone_map(ANALYSIS_RATE, N_FFT) @ mag  # [P, F]
    if transcription_iterations > 0:
        pitch = transcribe(pitch, spectral_shape, transcription_iterations)
    peak = pitch.max().clamp(min=1e-8)
    pitch = torch.log1p(compression * pitch / peak)
    if whitening_semitones > 0:
        kernel = torch.ones(1, 1, whitening_semitones + 1) / (whitening_semitones + 1)
        floor = F.conv1d(F.pad(pitch.T[:, None], (whitening_semitones // 2,) * 2,
                               mode="replicate"), kernel)[:, 0].T  # [P, F]
        pitch = (pitch - floor).clamp(min=0.0)
    # The bass is the lowest sounding note: fade the upper bass range so that its partials
    # (octave, twelfth) do not outvote the fundamental.
    upper = torch.arange(LOWEST_MIDI, HIGHEST_MIDI + 1) - 45
    bass_weight = (1.0 - upper.clamp(min=0) / 12.0).clamp(min=0.05)
    bass = _fold(pitch * bass_weight[:, None], *BASS_RANGE)
    treble = _fold(pitch, *TREBLE_RANGE)
    n = min(treble.shape[-1], rms.shape[0])
    return ChromaFeatures(treble[:, :n], bass[:, :n], rms[:n], rate)


def frame_times(num_frames: int, frame_rate: float) -> torch.Tensor:
    """Centre time in seconds of each of `num_frames` frames `[F]`."""
    return torch.arange(num_frames, dtype=torch.float64) / frame_rate


def db(x: torch.Tensor) -> torch.Tensor:
    """Amplitude to decibels (floored at -200 dB)."""
    return 20.0 * torch.log10(x.clamp(min=1e-10))


__all__ = ["ChromaFeatures", "chroma_features", "frame_times", "db", "ANALYSIS_RATE"]
