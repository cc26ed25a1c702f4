"""Tests for jasco.metrics.melody: chroma similarity and salience accuracy on synthetic melodies."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from metrics_audio import note_sequence
from reference_files import DEEPSALIENCE

from jasco.controls.melody.salience import notes_to_salience
from jasco.metrics import (
    MetricUnavailable,
    load_melody_extractor,
    melody_salience_accuracy,
    melody_similarity,
)

SR = 16000
NOTE_S = 0.5
MIDIS = [60, 64, 67, 72, 69, 65, 62, 59]


def condition(shift: int = 0, fps: float = 50.0) -> torch.Tensor:
    """The melody condition `[53, T]` of MIDIS, transposed by `shift` semitones."""
    notes = [(NOTE_S * i, NOTE_S * (i + 1), m + shift) for i, m in enumerate(MIDIS)]
    return torch.from_numpy(notes_to_salience(notes, round(len(MIDIS) * NOTE_S * fps), fps))


@pytest.fixture(scope="module")
def melody() -> torch.Tensor:
    return note_sequence(MIDIS, NOTE_S, SR)


def test_chroma_similarity_own_transposed_and_octave(melody: torch.Tensor) -> None:
    own = melody_similarity(melody, SR, condition())
    assert set(own) == {"chroma_similarity"}  # no extractor: no salience accuracy
    assert own["chroma_similarity"] > 0.9
    assert melody_similarity(melody, SR, condition(2))["chroma_similarity"] < 0.1
    # Pitch classes only: an octave up is the same melody.
    assert melody_similarity(melody, SR, condition(12)) == pytest.approx(own)
    # Another condition frame rate and a stereo numpy waveform.
    stereo = np.stack([melody.numpy()] * 2)
    at_86 = melody_similarity(stereo, SR, condition(fps=86.0), salience_fps=86.0)
    assert at_86["chroma_similarity"] > 0.9


def test_silence_and_bad_conditions(melody: torch.Tensor) -> None:
    assert melody_similarity(torch.zeros(SR), SR, condition())["chroma_similarity"] == 0.0
    assert math.isnan(melody_similarity(melody, SR, torch.zeros(53, 200))["chroma_similarity"])
    with pytest.raises(ValueError, match=r"\[53, T\]"):
        melody_similarity(melody, SR, torch.zeros(12, 200))


def test_salience_accuracy_is_unavailable_without_weights(melody: torch.Tensor, tmp_path) -> None:
    with pytest.raises(MetricUnavailable, match="evaluate.metrics.melody.weights") as info:
        melody_salience_accuracy(melody, SR, condition())
    assert info.value.metric == "melody_salience"
    with pytest.raises(MetricUnavailable, match="missing.h5"):
        load_melody_extractor(tmp_path / "missing.h5")


@pytest.mark.skipif(not DEEPSALIENCE.is_file(), reason=f"deepsalience weights not at {DEEPSALIENCE}")
def test_salience_accuracy_with_the_published_extractor(melody: torch.Tensor) -> None:
    pytest.importorskip("h5py", reason="h5py (jasco[melody]) reads the Keras weights")
    extractor = load_melody_extractor(DEEPSALIENCE)
    short = melody[: int(4 * NOTE_S * SR)]  # the first 4 notes: the network is slow on CPU
    frames = round(4 * NOTE_S * 50)
    own = melody_similarity(short, SR, condition()[:, :frames], extractor=extractor)
    assert own["salience_accuracy"] > 0.85 and own["chroma_similarity"] > 0.9, own
    # Semitone rows, not pitch classes: an octave away is wrong.
    assert melody_salience_accuracy(short, SR, condition(12)[:, :frames], extractor=extractor) < 0.1
