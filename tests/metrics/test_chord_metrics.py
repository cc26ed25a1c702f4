"""Tests for jasco.metrics.chords: Harte labels, interval scores and the known-answer chord track."""
from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from helpers_audio import chord_track

from jasco.controls.chords.recognition import chordino_available
from jasco.metrics import (
    MetricUnavailable,
    chord_metrics,
    compare_progressions,
    harte_label,
)

SR = 16000
PROGRESSION = [(0.0, "C"), (2.0, "Am"), (4.0, "F")]


def test_harte_labels() -> None:
    assert harte_label("C") == "C:maj"
    assert harte_label("Ebm7") == "Eb:min7"
    assert harte_label("Db/F") == harte_label("C#/E#") == "C#:maj/3"
    assert harte_label("Bm7b5") == "B:hdim7"
    assert harte_label("G7sus4") == "G:sus4(b7)"
    assert harte_label("N") == harte_label("N.C.") == "N"
    assert harte_label("UNK") == harte_label("X") == harte_label("H#") == "X"


def test_interval_scores_by_hand() -> None:
    # Reference: N [0, .5), C [.5, 2), Cdim [2, 4); estimate: D [0, 2), Cdim [2, 4).
    # IOU: N 0, C 0, Cdim 1 -> 1/3; majmin ignores Cdim and gets N and C wrong; exact 2 s of 4.
    scores = compare_progressions([(0.5, "C"), (2.0, "Cdim")], [(0.0, "D"), (2.0, "Cdim")], 4.0)
    assert scores["iou"] == pytest.approx(1 / 3)
    assert scores["majmin_accuracy"] == 0.0
    assert scores["exact_accuracy"] == pytest.approx(0.5)
    # A one-second N gap in a correct estimate: C and Am lose 1 s of union each.
    scores = compare_progressions([(0, "C"), (2, "Am")], [(0, "C"), (1, "N"), (2, "Am")], 4.0)
    assert scores == pytest.approx({"iou": 0.75, "majmin_accuracy": 0.75, "exact_accuracy": 0.75})
    # Spellings of one chord and (label, start) rows compare equal; changes past the end drop.
    same = compare_progressions([("Db/F", 0.0)], [(0.0, "C#/E#"), (5.0, "G")], 3.0)
    assert same == pytest.approx({"iou": 1.0, "majmin_accuracy": 1.0, "exact_accuracy": 1.0})


def test_nothing_comparable_is_nan() -> None:
    scores = compare_progressions([(0.0, "UNK")], [(0.0, "C")], 2.0)
    assert all(math.isnan(v) for v in scores.values())
    assert math.isnan(compare_progressions([(0.0, "Cdim")], [(0.0, "C")], 2.0)["majmin_accuracy"])


def test_chord_track_against_its_own_and_a_shifted_progression() -> None:
    wav = chord_track(PROGRESSION, 6.0, SR)
    own = chord_metrics(wav, SR, PROGRESSION)
    assert own["iou"] > 0.85 and own["majmin_accuracy"] > 0.9 and own["exact_accuracy"] > 0.9, own
    up_a_tone = [(0.0, "D"), (2.0, "Bm"), (4.0, "G")]
    # Stereo numpy input is mono-mixed.
    shifted = chord_metrics(np.stack([wav.numpy(), wav.numpy()]), SR, up_a_tone)
    assert shifted["iou"] < 0.1 and shifted["majmin_accuracy"] < 0.1, shifted


def test_unavailable_backend_and_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    wav = chord_track(PROGRESSION[:1], 1.0, SR)
    if not chordino_available():
        with pytest.raises(MetricUnavailable, match="install-chords") as info:
            chord_metrics(wav, SR, PROGRESSION[:1], backend="chordino")
        assert info.value.metric == "chords"
    monkeypatch.setitem(sys.modules, "mir_eval", None)  # as if mir_eval were not installed
    with pytest.raises(MetricUnavailable, match=r"pip install mir_eval") as info:
        chord_metrics(wav, SR, PROGRESSION[:1])
    assert info.value.metric == "chords" and "mir_eval" in info.value.reason
