"""Chord metrics: how well generated audio follows its chord condition.

`chord_metrics(wav, sample_rate, progression)` recognises the chords of the audio with the
project's recogniser (`jasco.controls.chords.recognition.recognize_chords`), turns both
progressions into labelled intervals over `[0, duration)` and compares them with `mir_eval.chord`:

- `iou`: chord intersection over union. For each distinct chord `L` of the condition (no-chord
  `N` included when the condition has it; unknown `X` excluded), `IoU(L) = |R_L ∩ E_L| / |R_L ∪ E_L|`
  where `R_L` is the time the condition plays `L` and `E_L` the time the recognised progression
  plays `L` (chords are equal when mir_eval encodes them to the same root, notes and bass, so
  `Db/F` equals `C#/E#`); `iou` is the mean over the condition's chords, each counted once
  whatever its duration.
- `majmin_accuracy`: `mir_eval.chord.majmin` weighted by duration (chords reduced to major /
  minor; condition chords that are neither, e.g. `dim`, `sus4`, are left out).
- `exact_accuracy`: `mir_eval.chord.tetrads_inv` weighted by duration (root, all notes and bass).

A score with nothing to compare (a condition of only `X`, or only out-of-gamut chords for
majmin) is NaN, not 0.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from jasco.controls.chords.progression import normalize_progression
from jasco.controls.chords.recognition import recognize_chords
from jasco.controls.chords.symbols import (
    ROOT_NAMES,
    UNKNOWN_CHORD,
    is_no_chord,
    parse_chord,
)
from jasco.metrics.availability import MetricUnavailable, require_mir_eval
from jasco.metrics.waveform import Waveform, mono

# The project's canonical qualities (jasco.controls.chords.symbols) in Harte shorthand.
HARTE_QUALITIES = {
    "": "maj", "m": "min", "7": "7", "maj7": "maj7", "m7": "min7", "6": "maj6", "m6": "min6",
    "dim": "dim", "aug": "aug", "m7b5": "hdim7", "dim7": "dim7", "sus2": "sus2", "sus4": "sus4",
    "7sus4": "sus4(b7)", "9": "9", "maj9": "maj9", "m9": "min9", "mmaj7": "minmaj7", "5": "5",
}
# Semitones above the root -> Harte degree of a slash bass.
HARTE_DEGREES = ("1", "b2", "2", "b3", "3", "4", "b5", "5", "b6", "6", "b7", "7")


def harte_label(label: str) -> str:
    """The project's chord label in Harte syntax for mir_eval: `'C#m7/B'` -> `'C#:min7/b7'`.

    No-chord spellings give `N`; `UNK`, `X` and labels that do not parse (or whose quality has no
    Harte equivalent) give `X`, which mir_eval leaves out of the scores.
    """
    if is_no_chord(label):
        return "N"
    if label.strip() in (UNKNOWN_CHORD, "X"):
        return "X"
    symbol = parse_chord(label)
    if symbol is None or symbol.quality not in HARTE_QUALITIES:
        return "X"
    text = f"{ROOT_NAMES[symbol.root]}:{HARTE_QUALITIES[symbol.quality]}"
    if symbol.bass is not None:
        text += "/" + HARTE_DEGREES[(symbol.bass - symbol.root) % 12]
    return text


def progression_intervals(progression: Sequence, duration: float
                          ) -> tuple[np.ndarray, list[str]]:
    """Labelled intervals `[n, 2]` (seconds) and Harte labels covering exactly `[0, duration)`.

    Each change lasts until the next one (the last until `duration`); time before the first
    change is `N`; changes at or after `duration` are dropped.
    """
    rows = normalize_progression(progression)
    intervals, labels = [], []
    starts = [s for s, _ in rows] + [math.inf]
    if not rows or rows[0][0] > 0:
        intervals.append((0.0, min(rows[0][0], duration) if rows else duration))
        labels.append("N")
    for (start, label), end in zip(rows, starts[1:]):
        end = min(end, duration)
        if end > start:
            intervals.append((start, end))
            labels.append(harte_label(label))
    return np.asarray(intervals, dtype=np.float64).reshape(-1, 2), labels


def chord_iou(reference_labels: Sequence[str], estimated_labels: Sequence[str],
              durations: np.ndarray) -> float:
    """Mean over the reference's chords of their intersection over union in time (see module
    docstring); inputs are aligned Harte labels and the durations `[n]` of merged intervals."""
    mir_eval = require_mir_eval("chords")
    ref_roots, ref_bits, ref_bass = mir_eval.chord.encode_many(list(reference_labels), False)
    est_roots, est_bits, est_bass = mir_eval.chord.encode_many(list(estimated_labels), False)
    ref_keys = [(r, tuple(b), s) for r, b, s in zip(ref_roots, ref_bits, ref_bass)]
    est_keys = [(r, tuple(b), s) for r, b, s in zip(est_roots, est_bits, est_bass)]
    durations = np.asarray(durations, dtype=np.float64)
    scores = []
    for key in dict.fromkeys(k for k in ref_keys if min(k[1]) >= 0):  # X encodes to -1 bits
        in_ref = np.array([k == key for k in ref_keys])
        in_est = np.array([k == key for k in est_keys])
        union = durations[in_ref | in_est].sum()
        if union > 0:
            scores.append(durations[in_ref & in_est].sum() / union)
    return float(np.mean(scores)) if scores else math.nan


def compare_progressions(reference: Sequence, estimate: Sequence, duration: float
                         ) -> dict[str, float]:
    """`iou`, `majmin_accuracy`, `exact_accuracy` of an estimated progression against a
    reference (both `[(start_s, label), ...]`) over `[0, duration)`."""
    mir_eval = require_mir_eval("chords")
    if not duration > 0:
        raise ValueError(f"Chord metrics need a positive duration, got {duration}.")
    ref_int, ref_lab = progression_intervals(reference, duration)
    est_int, est_lab = progression_intervals(estimate, duration)
    intervals, ref_lab, est_lab = mir_eval.util.merge_labeled_intervals(
        ref_int, ref_lab, est_int, est_lab)
    durations = mir_eval.util.intervals_to_durations(intervals)

    def accuracy(comparisons: np.ndarray) -> float:
        kept = comparisons >= 0  # mir_eval marks out-of-gamut reference chords with -1
        weight = durations[kept].sum()
        return float((comparisons[kept] * durations[kept]).sum() / weight) if weight > 0 else math.nan

    return {
        "iou": chord_iou(ref_lab, est_lab, durations),
        "majmin_accuracy": accuracy(mir_eval.chord.majmin(ref_lab, est_lab)),
        "exact_accuracy": accuracy(mir_eval.chord.tetrads_inv(ref_lab, est_lab)),
    }


def chord_metrics(wav: Waveform, sample_rate: int, progression: list[tuple[float, str]],
                  backend: str = "templates", duration: float | None = None) -> dict[str, float]:
    """Chord IOU and accuracies of audio `[N]` / `[C, N]` against its chord condition.

    Args:
        wav: the generated audio (channels are averaged).
        sample_rate: its sample rate in Hz.
        progression: the condition `[(start_s, label), ...]` (`(label, start_s)` rows accepted).
        backend: the recogniser, `"templates"` (torch only) or `"chordino"` (`make install-chords`).
        duration: seconds compared, from 0; default the audio's length.

    Returns:
        `{"iou", "majmin_accuracy", "exact_accuracy"}` (module docstring), each in [0, 1] or NaN.

    Raises:
        MetricUnavailable: mir_eval is missing, or the chordino backend is not installed.
    """
    require_mir_eval("chords")
    audio = mono(wav)
    duration = audio.shape[-1] / sample_rate if duration is None else float(duration)
    try:
        estimate = recognize_chords(audio, sample_rate, backend=backend)
    except ImportError as err:  # the chordino backend's extra
        raise MetricUnavailable("chords", str(err)) from err
    return compare_progressions(progression, estimate, duration)
