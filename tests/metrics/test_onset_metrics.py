"""Tests for jasco.metrics.onset_detection and jasco.metrics.onsets on click tracks."""
from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from metrics_audio import click_track

from jasco.metrics import MetricUnavailable, onset_f1
from jasco.metrics.onset_detection import (
    detect_onsets,
    estimate_tempi,
    onset_envelope,
    track_beats,
)

SR = 16000
DURATION = 6.0
BEATS = np.arange(0.1, DURATION - 0.2, 0.5)  # 120 BPM


@pytest.fixture(scope="module")
def reference() -> torch.Tensor:
    return click_track(BEATS, DURATION, SR)


def test_detector_finds_each_click_within_a_frame(reference: torch.Tensor) -> None:
    envelope = onset_envelope(reference, SR)
    onsets = detect_onsets(envelope)
    assert len(onsets) == len(BEATS)
    assert np.abs(onsets - BEATS).max() <= 0.006
    tempi, weight = estimate_tempi(envelope)
    assert tempi[0] == pytest.approx(120.0, rel=0.02) and 0.5 < weight <= 1.0
    beats = track_beats(envelope, float(tempi[0]))
    assert np.abs(beats[:, None] - BEATS[None]).min(axis=1).max() <= 0.02
    assert detect_onsets(onset_envelope(torch.zeros(SR), SR)).size == 0


def test_identical_jittered_and_unrelated_click_tracks(reference: torch.Tensor) -> None:
    same = onset_f1(reference, SR, reference, SR)
    assert same == {"onset_f1": 1.0, "onset_precision": 1.0, "onset_recall": 1.0,
                    "beat_f1": 1.0, "tempo_agreement": 1.0}
    # Another rate, stereo, other noise bursts: the same clicks still score 1.
    other = click_track(BEATS, DURATION, 44100, seed=3)
    assert onset_f1(torch.stack([other, other]), 44100, reference, SR)["onset_f1"] == 1.0
    # Half the clicks moved by up to 20 ms (inside the 50 ms window), half by 80-90 ms.
    jitter = np.resize([0.0, 0.02, -0.08, 0.09], len(BEATS))
    jittered = onset_f1(click_track(BEATS + jitter, DURATION, SR, seed=1), SR, reference, SR)
    assert jittered["onset_f1"] == jittered["onset_precision"] == jittered["onset_recall"] == 0.5
    # 90 BPM offset by 0.25 s: no click within 80 ms of a reference click.
    unrelated = onset_f1(click_track(np.arange(0.35, DURATION, 60 / 90), DURATION, SR, seed=2),
                         SR, reference, SR)
    assert unrelated["onset_f1"] < 0.1 and unrelated["tempo_agreement"] == 0.0, unrelated
    assert unrelated["beat_f1"] < 0.5


def test_window_and_silent_reference(reference: torch.Tensor) -> None:
    late = click_track(BEATS + 0.03, DURATION, SR, seed=4)
    assert onset_f1(late, SR, reference, SR, window_s=0.05)["onset_f1"] == 1.0
    assert onset_f1(late, SR, reference, SR, window_s=0.01)["onset_f1"] == 0.0
    silent = onset_f1(reference, SR, torch.zeros(SR), SR)
    assert all(math.isnan(v) for v in silent.values())


def test_unavailable_without_mir_eval(reference: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mir_eval", None)
    with pytest.raises(MetricUnavailable, match=r"pip install mir_eval") as info:
        onset_f1(reference, SR, reference, SR)
    assert info.value.metric == "onsets"
