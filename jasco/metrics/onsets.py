"""Rhythm metrics: how well generated audio follows its drum condition.

`onset_f1(wav, sample_rate, reference_wav, reference_sample_rate)` detects onsets in both
waveforms with the same spectral-flux detector (`jasco.metrics.onset_detection`) and scores the
generated onsets against the reference's (the drum condition) with `mir_eval.onset.f_measure`:
an estimated onset matches at most one reference onset within ±`window_s`.

Extras: `beat_f1` (`mir_eval.beat.f_measure`, ±70 ms) between the beats tracked in each waveform
at its own tempo, and `tempo_agreement` (`mir_eval.tempo.detection`, 8 % tolerance: the weighted
share of the reference's two tempo candidates found among the generated audio's two).

A reference without onsets (a silent drum stem) has nothing to follow: every score is NaN.
"""
from __future__ import annotations

import math

from jasco.metrics.availability import require_mir_eval
from jasco.metrics.onset_detection import (
    detect_onsets,
    estimate_tempi,
    onset_envelope,
    track_beats,
)
from jasco.metrics.waveform import Waveform

BEAT_WINDOW_S = 0.07  # mir_eval's default beat tolerance
TEMPO_TOLERANCE = 0.08  # mir_eval's default relative tempo tolerance


def onset_f1(wav: Waveform, sample_rate: int, reference_wav: Waveform,
             reference_sample_rate: int, window_s: float = 0.05) -> dict[str, float]:
    """Onset F1 of generated audio against the reference (drum) audio, plus beat/tempo extras.

    Args:
        wav: generated audio `[N]` / `[C, N]`.
        sample_rate: its sample rate.
        reference_wav: the drum condition `[N']` / `[C', N']`.
        reference_sample_rate: its sample rate.
        window_s: onset matching tolerance in seconds (each side).

    Returns:
        `{"onset_f1", "onset_precision", "onset_recall", "beat_f1", "tempo_agreement"}`, each in
        [0, 1] (NaN when the reference has no onsets; see module docstring).

    Raises:
        MetricUnavailable: mir_eval is missing.
    """
    mir_eval = require_mir_eval("onsets")
    envelope = onset_envelope(wav, sample_rate)
    reference_envelope = onset_envelope(reference_wav, reference_sample_rate)
    reference_onsets = detect_onsets(reference_envelope)
    if reference_onsets.size == 0:
        return dict.fromkeys(("onset_f1", "onset_precision", "onset_recall", "beat_f1",
                              "tempo_agreement"), math.nan)
    onsets = detect_onsets(envelope)
    f1, precision, recall = mir_eval.onset.f_measure(reference_onsets, onsets, window=window_s)
    reference_tempi, weight = estimate_tempi(reference_envelope)
    tempi, _ = estimate_tempi(envelope)
    reference_beats = track_beats(reference_envelope, float(reference_tempi[0]))
    beats = track_beats(envelope, float(tempi[0]))
    beat_f1 = (mir_eval.beat.f_measure(reference_beats, beats, f_measure_threshold=BEAT_WINDOW_S)
               if reference_beats.size and beats.size else 0.0)
    if reference_tempi.min() <= 0:  # no pulse in the reference: tempo is undefined
        tempo = math.nan
    else:
        tempo = mir_eval.tempo.detection(reference_tempi, weight, tempi, tol=TEMPO_TOLERANCE)[0]
    return {"onset_f1": float(f1), "onset_precision": float(precision),
            "onset_recall": float(recall), "beat_f1": float(beat_f1),
            "tempo_agreement": float(tempo)}
