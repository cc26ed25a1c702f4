"""Tests for jasco.controls.chords: parsing, vocabularies, chord files and frame indices."""
from __future__ import annotations

import json
import pickle
import re
import warnings
from pathlib import Path

import pytest
import torch

from jasco.controls.chords.progression import read_chord_file, write_chord_file
from jasco.controls.chords.symbols import ChordSymbol, parse_chord
from jasco.controls.chords.vocabulary import ChordVocabulary, frame_chords

PUBLISHED = Path(__file__).resolve().parents[3] / "shared/reference/chord_to_index_mapping.pkl"


@pytest.fixture(scope="module")
def published() -> ChordVocabulary:
    if not PUBLISHED.is_file():
        pytest.skip(f"published vocabulary not found at {PUBLISHED}")
    return ChordVocabulary.from_file(PUBLISHED)


@pytest.fixture(scope="module")
def builtin() -> ChordVocabulary:
    return ChordVocabulary.builtin()


def test_published_vocabulary_loads_and_round_trips(published: ChordVocabulary) -> None:
    assert published.card == 194 and published.null_index == 194
    assert published.no_chord_index == 0 and published.unk_index == 193
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [published.index(label) for label in published.labels] == list(range(194))


def test_spec_example_progression(published: ChordVocabulary) -> None:
    progression = [("C", 0), ("D", 2), ("F", 4), ("Ab", 6), ("Bb", 7), ("C", 8)]
    frames = frame_chords(progression, published, 500)
    expected = torch.tensor([2] * 100 + [20] * 100 + [1] * 100 + [65] * 50 + [3] * 50 + [2] * 100)
    assert frames.dtype == torch.long and torch.equal(frames, expected)
    # The file order (start, label) gives the same frames.
    swapped = [(start, label) for label, start in progression]
    assert torch.equal(frame_chords(swapped, published, 500), expected)


def test_builtin_layout(builtin: ChordVocabulary, published: ChordVocabulary) -> None:
    labels = builtin.labels
    assert builtin.card == 194 and labels[0] == "N" and labels[193] == "UNK"
    assert labels[1:11] == ["C", "Cm", "C7", "Cmaj7", "Cm7", "C6", "Cm6", "Cdim", "Caug", "Cm7b5"]
    assert labels[121:124] == ["C/E", "C#/E#", "D/F#"]
    assert len(set(labels)) == 194
    # Same chords as the published vocabulary, so the two are a permutation of each other.
    assert set(labels) == set(published.labels)
    assert ChordVocabulary.builtin().labels == labels  # deterministic


@pytest.mark.parametrize("spelling, canonical", [
    ("Db/F", "C#/E#"), ("C#:maj/3", "C#/E#"), ("C:maj7", "Cmaj7"), ("CM7", "Cmaj7"),
    ("CΔ", "Cmaj7"), ("C-7", "Cm7"), ("C:min7", "Cm7"), ("Cmin", "Cm"), ("C-", "Cm"),
    ("Cmaj", "C"), ("CM", "C"), ("C:maj", "C"), ("Bo", "Bdim"), ("C+", "Caug"),
    ("Bø", "Bm7b5"), ("B:hdim7", "Bm7b5"), ("Fb", "E"), ("E#", "F"), ("Cb", "B"),
    ("B#m", "Cm"), ("C/C", "C"), ("G/5", "G/D"), ("A7/3", "A7/C#"),
    ("Ab/Gb", "Ab/Gb"), ("G#/F#", "Ab/Gb"), ("  Am  ", "Am"), ("Gb6", "F#6"), ("NC", "N"),
    ("N.C.", "N"), ("X", "UNK"),
])
def test_index_normalises_spellings(builtin: ChordVocabulary, published: ChordVocabulary,
                                    spelling: str, canonical: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every spelling here is known: no warning
        assert builtin.index(spelling) == builtin.index(canonical)
        assert published.index(spelling) == published.index(canonical)


@pytest.mark.parametrize("label", ["Cmaj9", "Csus4", "C:(1,3,5)", "Cm/Eb", "H", "Bbb", "c", "",
                                   "C/Q", "C##", "C:maj(9)", "C7/b7"])
def test_unknown_labels_warn_once_and_map_to_unk(label: str) -> None:
    vocab = ChordVocabulary.builtin()
    with pytest.warns(UserWarning, match=re.escape(f"Chord label {label!r}")) as record:
        assert vocab.index(label) == vocab.unk_index
    assert len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert vocab.index(label) == vocab.unk_index  # second lookup: no new warning


def test_parse_chord_details() -> None:
    assert parse_chord("C:min/b3") == ChordSymbol(0, "m", 3)
    assert parse_chord("Dbm7b5/Cb") == ChordSymbol(1, "m7b5", 11)
    assert parse_chord("C:7(b9)").quality == "7(b9)"  # kept verbatim, unknown
    assert parse_chord("N") is None and parse_chord("foo") is None
    assert ChordSymbol(1, "", 5).label == "C#/E#"
    assert ChordSymbol(8, "m7b5", 6).label == "Abm7b5/Gb"
    assert ChordSymbol(2, "", 6).pitch_classes() == (6, 2, 9)
    assert ChordSymbol(0, "m7b5").pitch_classes() == (0, 3, 6, 10)
    with pytest.raises(ValueError, match="quality"):
        ChordSymbol(0, "weird").pitch_classes()


def test_vocabulary_validation_and_json_round_trip(tmp_path: Path,
                                                   builtin: ChordVocabulary) -> None:
    with pytest.raises(ValueError, match="0..2"):
        ChordVocabulary({"N": 0, "UNK": 1, "C": 3})
    with pytest.raises(ValueError, match="'UNK'"):
        ChordVocabulary({"N": 0, "C": 1})
    path = tmp_path / "vocab.json"
    builtin.save_json(path)
    loaded = ChordVocabulary.from_file(path)
    assert loaded.to_dict() == builtin.to_dict()
    bad = tmp_path / "vocab.txt"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="vocab.txt"):
        ChordVocabulary.from_file(bad)
    with pytest.raises(FileNotFoundError, match="missing.pkl"):
        ChordVocabulary.from_file(tmp_path / "missing.pkl")


def test_restricted_unpickler_refuses_classes(tmp_path: Path) -> None:
    ok = tmp_path / "ok.pkl"
    ok.write_bytes(pickle.dumps({"N": 0, "C": 1, "UNK": 2}))
    assert ChordVocabulary.from_file(ok).labels == ["N", "C", "UNK"]
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"N": 0, "UNK": 1, "x": Path("/")}))
    with pytest.raises(ValueError, match="evil.pkl.*refusing"):
        ChordVocabulary.from_file(evil)


def test_from_progressions_frequency_order() -> None:
    progressions = [[(0.0, "C"), (1.0, "G"), (2.0, "Am"), (3.0, "C")],
                    [(0.0, "Db"), (1.0, "C#"), (2.0, "G"), (3.0, "N"), (4.0, "foo")]]
    vocab = ChordVocabulary.from_progressions(progressions)
    assert vocab.labels == ["N", "C", "C#", "G", "Am", "UNK"]
    small = ChordVocabulary.from_progressions(progressions, max_size=4)
    assert small.labels == ["N", "C", "C#", "UNK"]
    with pytest.warns(UserWarning, match="'Am'"):
        assert small.index("Am") == small.unk_index


def test_chord_file_round_trip_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "a.chords.json"
    write_chord_file(path, [(0.0, "C"), (2.5, "G/B"), (4, "N")])
    assert read_chord_file(path) == [(0.0, "C"), (2.5, "G/B"), (4.0, "N")]
    assert json.loads(path.read_text()) == [[0.0, "C"], [2.5, "G/B"], [4, "N"]]
    cases = {
        "not json": "not valid JSON",
        '{"a": 1}': "expected a JSON list",
        '[["C", 0.0]]': "looks like \\[label, start\\]",
        '[[0.0, "C", 1]]': "row 0",
        '[[1.0, "C"], [0.5, "G"]]': "row 1 .*sorted",
        '[[-1.0, "C"]]': ">= 0",
        '[[true, "C"]]': "row 0",
    }
    for i, (text, message) in enumerate(cases.items()):
        bad = tmp_path / f"bad{i}.chords.json"
        bad.write_text(text)
        with pytest.raises(ValueError, match=f"bad{i}.chords.json.*{message}"):
            read_chord_file(bad)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        read_chord_file(tmp_path / "nope.json")


def test_frame_chords_edges(builtin: ChordVocabulary) -> None:
    c, g = builtin.index("C"), builtin.index("G")
    # Before the first change: N. The change at 0.3 s lands exactly on frame 15.
    frames = frame_chords([(0.1, "C"), (0.3, "G")], builtin, 20, frame_rate=50.0)
    assert frames.tolist() == [0] * 5 + [c] * 10 + [g] * 5
    frames = frame_chords([(0.1, "C"), (0.3, "G")], builtin, 10, offset_s=0.2)
    assert frames.tolist() == [c] * 5 + [g] * 5
    assert frame_chords([], builtin, 3).tolist() == [0, 0, 0]
    assert frame_chords([(0.0, "C")], builtin, 0).shape == (0,)
    with pytest.raises(ValueError, match="mixes"):
        frame_chords([(0.0, "C"), ("G", 1.0)], builtin, 10)
    with pytest.raises(ValueError, match="sorted"):
        frame_chords([(1.0, "C"), (0.0, "G")], builtin, 10)


def test_vocabulary_spec_forms(tmp_path):
    from jasco.controls.chords.vocabulary import vocabulary_file

    custom = ChordVocabulary.from_progressions([[(0.0, "C"), (1.0, "Am")]])
    custom.save_json(tmp_path / "vocab.json")
    assert vocabulary_file("builtin") is None
    assert vocabulary_file(f"published:{tmp_path}/vocab.json") == tmp_path / "vocab.json"
    assert ChordVocabulary.from_spec("builtin").labels == ChordVocabulary.builtin().labels
    for spec in (f"published:{tmp_path}/vocab.json", str(tmp_path / "vocab.json"), tmp_path / "vocab.json"):
        assert ChordVocabulary.from_spec(spec).labels == ["N", "Am", "C", "UNK"]
    with pytest.raises(FileNotFoundError, match="missing.json"):
        ChordVocabulary.from_spec(f"published:{tmp_path}/missing.json")
