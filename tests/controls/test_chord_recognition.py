"""Tests for jasco.controls.chords.recognition and jasco.audio.chroma: synthetic progressions, edge
inputs, the accuracy of both backends on egs/example, and the CLI."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from helpers_audio import chord_track

from jasco.audio.chroma import chroma_features
from jasco.audio.io import audio_read
from jasco.controls.chords.progression import read_chord_file
from jasco.controls.chords.recognition import (
    chordino_available,
    frame_accuracy,
    labels_at,
    recognize_chords,
    reduce_majmin,
    viterbi,
)
from jasco.controls.chords.vocabulary import ChordVocabulary
from jasco.prepare.chords import main

ROOT = Path(__file__).resolve().parents[2]
SR = 16000
CHORDINO_SKIP = ("Chordino backend not installed (chord-extractor + vamp); run "
                 "`make install-chords` (docs/CHORDS.md)")


def test_synthetic_progression_with_slash_and_seventh() -> None:
    progression = [(0.0, "C"), (2.0, "Am"), (4.0, "F/A"), (6.0, "G7")]
    estimate = recognize_chords(chord_track(progression, 8.0, SR), SR, backend="templates")
    assert [label for _, label in estimate] == ["C", "Am", "F/A", "G7"]
    for (want, _), (got, _) in zip(progression, estimate):
        assert abs(want - got) < 0.3
    assert frame_accuracy(progression, estimate, 8.0)["exact"] >= 0.95


def test_silence_gives_no_chord() -> None:
    assert recognize_chords(torch.zeros(SR * 3), SR, backend="templates") == [(0.0, "N")]


def test_silence_between_chords_is_no_chord() -> None:
    wav = chord_track([(0.0, "D"), (2.0, "Bm")], 4.0, SR)
    wav = torch.cat([wav[: 2 * SR], torch.zeros(2 * SR), wav[2 * SR:]])
    labels = [label for _, label in recognize_chords(wav, SR, backend="templates")]
    assert labels == ["D", "N", "Bm"]


def test_stereo_input_matches_mono() -> None:
    mono = chord_track([(0.0, "Eb"), (2.0, "Cm7")], 4.0, SR)
    stereo = torch.stack([mono, mono])  # [2, N]
    got = recognize_chords(stereo, SR, backend="templates")
    assert got == recognize_chords(mono, SR, backend="templates")
    assert [label for _, label in got] == ["Eb", "Cm7"]


def test_short_and_empty_input() -> None:
    short = chord_track([(0.0, "A")], 0.2, SR)  # a few chroma frames
    assert recognize_chords(short, SR, backend="templates") == [(0.0, "A")]
    assert recognize_chords(torch.zeros(0), SR, backend="templates") == [(0.0, "N")]
    assert recognize_chords(torch.zeros(5), SR, backend="templates") == [(0.0, "N")]


def test_labels_follow_vocabulary_spelling() -> None:
    vocabulary = ChordVocabulary({"N": 0, "Db": 1, "Bbm": 2, "UNK": 3})
    got = recognize_chords(chord_track([(0.0, "C#"), (2.0, "A#m")], 4.0, SR), SR, backend="templates",
                           vocabulary=vocabulary)
    assert [label for _, label in got] == ["Db", "Bbm"]


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="backend 'nope'"):
        recognize_chords(torch.zeros(100), SR, backend="nope")
    with pytest.raises(ValueError, match=r"expected \[N\] or \[C, N\]"):
        recognize_chords(torch.zeros(1, 2, 100), SR, backend="templates")
    with pytest.raises(TypeError, match="float samples"):
        recognize_chords(torch.zeros(100, dtype=torch.int16), SR, backend="templates")
    with pytest.raises(ValueError, match="no chord with known chord tones"):
        recognize_chords(torch.zeros(SR), SR, backend="templates",
                         vocabulary=ChordVocabulary({"N": 0, "UNK": 1}))


def test_chordino_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "chord_extractor" else real(name, *a))
    with pytest.raises(ImportError, match=r"jasco\[chords\].*make install-chords"):
        recognize_chords(torch.zeros(SR), SR, backend="chordino")


def test_reduce_majmin_and_accuracy() -> None:
    assert [reduce_majmin(x) for x in ("C7", "Dbmaj7/F", "A6", "Eaug", "N", "NC")] == \
        ["C", "C#", "A", "E", "N", "N"]
    assert [reduce_majmin(x) for x in ("Bm7", "F#m6", "Gdim", "C#m7b5/B", "foo")] == \
        ["Bm", "F#m", "Gm", "C#m", "X"]
    reference = [(0.0, "C"), (1.0, "Am7")]
    estimate = [(0.0, "C"), (1.5, "Am")]
    acc = frame_accuracy(reference, estimate, 2.0)
    assert acc["frames"] == 20 and acc["majmin"] == 0.75 and acc["exact"] == 0.5
    assert labels_at([(0.5, "D")], [0.0, 0.5, 1.0]) == ["N", "D", "D"]


def test_viterbi_penalty_smooths_blips() -> None:
    scores = torch.tensor([[1.0, 1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0, 0.0]])  # [S, F]
    assert viterbi(scores, change_penalty=0.0).tolist() == [0, 0, 1, 0, 0]
    assert viterbi(scores, change_penalty=2.0).tolist() == [0, 0, 0, 0, 0]


def test_chroma_of_a_note_peaks_at_its_pitch_class() -> None:
    t = torch.arange(SR * 2) / SR
    wav = 0.5 * torch.sin(2 * math.pi * 440.0 * t)  # A4
    features = chroma_features(wav, SR)
    assert features.treble.shape[0] == 12 and features.frame_rate == 20.0
    assert abs(features.num_frames - 40) <= 1
    assert int(features.treble[:, 20].argmax()) == 9


def _example_clips() -> list[tuple[torch.Tensor, int, dict]]:
    sys.path.insert(0, str(ROOT / "scripts"))
    from make_example_dataset import ensure_example_dataset

    root = ensure_example_dataset(ROOT / "egs" / "example")
    clips = []
    for path in sorted((root / "audio").glob("clip_??.wav")):
        wav, sr = audio_read(path)
        truth = json.loads((root / "truth" / f"{path.stem}.json").read_text())
        assert truth["chords"] == [list(r) for r in read_chord_file(path.with_suffix(".chords.json"))]
        clips.append((wav, sr, truth))
    return clips


@pytest.fixture(scope="module")
def example_clips() -> list[tuple[torch.Tensor, int, dict]]:
    """The egs/example clips (built if missing), read once."""
    return _example_clips()


def _mean_accuracy(clips: list, backend: str) -> dict[str, float]:
    results = [frame_accuracy(truth["chords"], recognize_chords(wav, sr, backend=backend),
                              truth["duration"], frame_rate=10.0) for wav, sr, truth in clips]
    return {key: sum(r[key] for r in results) / len(results) for key in ("majmin", "exact")}


def test_templates_accuracy_on_example(example_clips: list) -> None:
    acc = _mean_accuracy(example_clips, "templates")
    print(f"\ntemplates on egs/example: majmin {acc['majmin']:.3f}, exact {acc['exact']:.3f}")
    assert acc["majmin"] >= 0.80
    assert acc["exact"] >= 0.75


@pytest.mark.skipif(not chordino_available(), reason=CHORDINO_SKIP)
def test_chordino_accuracy_on_example(example_clips: list) -> None:
    acc = _mean_accuracy(example_clips, "chordino")
    print(f"\nchordino on egs/example: majmin {acc['majmin']:.3f}, exact {acc['exact']:.3f}")
    assert acc["majmin"] >= 0.90
    assert acc["exact"] >= 0.80


def test_cli_recognize_and_vocab(tmp_path: Path) -> None:
    audio = tmp_path / "audio"
    audio.mkdir()
    import soundfile as sf

    sf.write(audio / "song.wav", chord_track([(0.0, "G"), (2.0, "Em")], 4.0, SR).numpy(), SR)
    assert main(["recognize", str(audio), "--backend", "templates"]) == 0
    assert [label for _, label in read_chord_file(audio / "song.chords.json")] == ["G", "Em"]
    out = tmp_path / "vocab.json"
    assert main(["vocab", str(audio), str(out), "--max-size", "3"]) == 0
    assert json.loads(out.read_text()) == {"N": 0, "Em": 1, "UNK": 2}
    adopted = tmp_path / "adopted.json"
    assert main(["vocab", str(audio), str(adopted), "--vocabulary", f"published:{out}"]) == 0
    assert adopted.read_text() == out.read_text()
    with pytest.raises(FileNotFoundError, match=r"No \*\.chords\.json files"):
        main(["vocab", str(tmp_path / "empty"), str(out)])
