"""Onsets, tempo and beats of a waveform, in torch and numpy (no librosa).

- `onset_envelope`: spectral flux of a log-magnitude STFT at `ONSET_FPS` frames per second — the
  positive increase of each bin over the previous frame, where the previous frame is first
  max-filtered across neighbouring bins so that vibrato and slow glides count less than attacks.
- `detect_onsets`: peaks of the envelope that are local maxima within ±`PEAK_RADIUS_S`, stand
  `delta` (relative to the envelope's maximum) above the local mean, and are at least
  `MIN_GAP_S` apart.
- `estimate_tempi`: the envelope's autocorrelation weighted by a log-normal prior around 120 BPM;
  the best lag and the better of its half/double, with a relative weight (mir_eval's format).
- `track_beats`: dynamic programming over the smoothed envelope (a beat sequence scores its
  envelope values minus a penalty on log deviations of each inter-beat interval from the period).

Shapes: `N` samples, `K` STFT bins, `F` envelope frames.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from jasco.metrics.waveform import Waveform, mono_at

ANALYSIS_RATE = 16000
HOP = 160  # 10 ms
ONSET_FPS = ANALYSIS_RATE / HOP
N_FFT = 512  # 32 ms window: attacks are located within a few ms
MAX_FREQ_HZ = 8000.0
PEAK_RADIUS_S = 0.03
MEAN_WINDOW_S = (0.1, 0.03)  # local mean over [t - 0.1 s, t + 0.03 s]
MIN_GAP_S = 0.03
# The flux peaks one frame before the attack: the window's leading half already holds it
# (measured on click tracks, tests/metrics/test_onsets.py).
ONSET_LAG_FRAMES = 1.0
TEMPO_RANGE_BPM = (40.0, 240.0)
TEMPO_PRIOR_BPM, TEMPO_PRIOR_OCTAVES = 120.0, 1.0


def onset_envelope(wav: Waveform, sample_rate: int) -> np.ndarray:
    """Spectral-flux onset strength `[F]` at `ONSET_FPS` (frame f at `f / ONSET_FPS` seconds)."""
    x = mono_at(wav, sample_rate, ANALYSIS_RATE)
    if x.numel() == 0:
        return np.zeros(0)
    spec = torch.stft(x, N_FFT, hop_length=HOP, window=torch.hann_window(N_FFT), center=True,
                      return_complex=True).abs()  # [K, F]
    spec = spec[: int(MAX_FREQ_HZ * N_FFT / ANALYSIS_RATE) + 1]
    peak = spec.max()
    if peak <= 0:
        return np.zeros(spec.shape[-1])
    log_spec = torch.log1p(1000.0 * spec / peak)  # [K, F], independent of the overall level
    previous = F.max_pool1d(log_spec.T[:, None], 3, stride=1, padding=1)[:, 0].T  # [K, F]
    flux = (log_spec[:, 1:] - previous[:, :-1]).clamp(min=0).sum(0)  # [F - 1]
    return torch.cat([flux.new_zeros(1), flux]).double().numpy()


def detect_onsets(envelope: np.ndarray, delta: float = 0.1) -> np.ndarray:
    """Onset times in seconds `[n]` picked from an envelope `[F]` (module docstring)."""
    if envelope.size == 0 or envelope.max() <= 0:
        return np.zeros(0)
    env = envelope / envelope.max()
    radius = max(1, round(PEAK_RADIUS_S * ONSET_FPS))
    before, after = (round(s * ONSET_FPS) for s in MEAN_WINDOW_S)
    gap = round(MIN_GAP_S * ONSET_FPS)
    onsets: list[int] = []
    for f in range(len(env)):
        window = env[max(0, f - radius): f + radius + 1]
        local_mean = env[max(0, f - before): f + after + 1].mean()
        is_peak = env[f] == window.max() and env[f] >= local_mean + delta and env[f] > 0
        if is_peak and (not onsets or f - onsets[-1] >= gap):
            onsets.append(f)
    return (np.asarray(onsets, dtype=np.float64) + ONSET_LAG_FRAMES) / ONSET_FPS


def _tempo_scores(envelope: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lags `[L]` (frames) and their prior-weighted autocorrelation scores `[L]`."""
    env = envelope - envelope.mean()
    lo = max(1, math.floor(60.0 * ONSET_FPS / TEMPO_RANGE_BPM[1]))
    hi = min(len(env) - 1, math.ceil(60.0 * ONSET_FPS / TEMPO_RANGE_BPM[0]))
    lags = np.arange(lo, hi + 1)
    if lags.size == 0:
        return lags, np.zeros(0)
    acf = np.array([np.dot(env[:-lag], env[lag:]) / (len(env) - lag) for lag in lags])
    bpm = 60.0 * ONSET_FPS / lags
    prior = np.exp(-0.5 * (np.log2(bpm / TEMPO_PRIOR_BPM) / TEMPO_PRIOR_OCTAVES) ** 2)
    return lags, np.clip(acf, 0, None) * prior


def estimate_tempi(envelope: np.ndarray) -> tuple[np.ndarray, float]:
    """Two tempo candidates in BPM `[2]` (best first, then the better of half/double) and the
    weight of the first, as `mir_eval.tempo` expects; `([0, 0], 1.0)` when there is no pulse."""
    lags, scores = _tempo_scores(envelope)
    if scores.size == 0 or scores.max() <= 0:
        return np.zeros(2), 1.0
    best = int(lags[scores.argmax()])

    def score_at(lag: float) -> float:
        index = round(lag) - int(lags[0])
        return float(scores[index]) if 0 <= index < len(scores) else 0.0

    half, double = score_at(best * 2), score_at(best / 2)
    other = best * 2 if half >= double else best / 2
    other_score = max(half, double)
    weight = score_at(best) / (score_at(best) + other_score)
    return 60.0 * ONSET_FPS / np.array([best, other], dtype=np.float64), float(weight)


def track_beats(envelope: np.ndarray, tempo_bpm: float, tightness: float = 100.0) -> np.ndarray:
    """Beat times in seconds `[n]` following `tempo_bpm` through the envelope `[F]`."""
    if envelope.size == 0 or tempo_bpm <= 0 or envelope.max() <= 0:
        return np.zeros(0)
    period = 60.0 * ONSET_FPS / tempo_bpm
    width = max(1, round(period / 16))
    kernel = np.exp(-0.5 * (np.arange(-2 * width, 2 * width + 1) / width) ** 2)
    local = np.convolve(envelope / envelope.std().clip(1e-12), kernel, mode="same")  # [F]
    n = len(local)
    score = local.copy()
    back = np.full(n, -1)
    offsets = np.arange(round(period / 2), round(2 * period) + 1)  # candidate gaps
    penalty = -tightness * np.log(offsets / period) ** 2
    for t in range(n):
        prev = t - offsets
        ok = prev >= 0
        if ok.any():
            candidates = score[prev[ok]] + penalty[ok]
            best = int(candidates.argmax())
            if candidates[best] > 0:
                score[t] = local[t] + candidates[best]
                back[t] = prev[ok][best]
    # End on the best-scoring frame within the last period, then follow the back pointers.
    tail = max(0, n - round(period))
    t = tail + int(score[tail:].argmax())
    beats = []
    while t >= 0:
        beats.append(t)
        t = int(back[t])
    beats = np.asarray(beats[::-1], dtype=np.float64)
    strong = local[beats.astype(int)] > 0.5 * local[beats.astype(int)].mean()
    return (beats[strong] + ONSET_LAG_FRAMES) / ONSET_FPS
