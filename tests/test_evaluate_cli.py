"""`jasco-evaluate`: a folder of audio scored against a folder of conditions, its CSV and its one-line errors."""
from __future__ import annotations

import csv
import json
import math
import shutil

import pytest
from helpers_training import EXAMPLE, ensure_example

from jasco.audio.io import audio_read, audio_write
from jasco.controls.chords.progression import read_chord_file, write_chord_file
from jasco.controls.melody.salience import read_salience, write_salience
from jasco.evaluate import main

SECONDS = 3.0  # of each clip: the metrics run in about a second per clip


def write_clip(name, generated, conditions):
    """The first seconds of an example clip in `generated`, its conditions (cut alike) in `conditions`."""
    source = EXAMPLE / "audio" / name
    wav, sr = audio_read(source.with_suffix(".wav"), 0.0, SECONDS)
    audio_write(generated / f"{name}.wav", wav, sr, normalize=False)
    drums, drums_sr = audio_read(source.with_suffix(".drums.wav"), 0.0, SECONDS)
    audio_write(conditions / f"{name}.drums.wav", drums, drums_sr, normalize=False)
    write_chord_file(conditions / f"{name}.chords.json",
                     [(s, label) for s, label in read_chord_file(source.with_suffix(".chords.json")) if s < SECONDS])
    salience, rate = read_salience(source.with_suffix(".salience.npz"))
    write_salience(conditions / f"{name}.salience.npz", salience[:, :int(SECONDS * rate) + 1], rate)
    shutil.copy(source.with_suffix(".json"), conditions / f"{name}.json")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    ensure_example()
    root = tmp_path_factory.mktemp("evaluate")
    generated, conditions = root / "generated", root / "conditions"
    generated.mkdir()
    conditions.mkdir()
    for name in ("clip_00", "clip_01"):
        write_clip(name, generated, conditions)
    return generated, conditions


def test_ground_truth_against_its_own_conditions(folders, tmp_path, capsys):
    generated, conditions = folders
    assert main([str(generated), str(conditions), "--out", str(tmp_path), "--reference", str(generated)]) == 0
    with (tmp_path / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [row["sample"] for row in rows] == ["clip_00", "clip_01"]
    for row in rows:  # the audio was made from these conditions: near the ceiling
        assert float(row["onset_f1"]) > 0.7 and float(row["chroma_similarity"]) > 0.7
        assert float(row["chords_majmin_accuracy"]) > 0.7
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["with_controls"]["means"]["fad"] == pytest.approx(0.0, abs=1e-6)  # a set against itself
    out = capsys.readouterr().out
    assert "onset_f1: " in out and "2 files" in out


def test_unavailable_metric_is_named_with_its_reason(folders, tmp_path, capsys):
    generated, conditions = folders
    status = main([str(generated), str(conditions), "--out", str(tmp_path), "--metrics", "onsets,fad",
                   "--reference", str(generated), "--fad-embedding", "vggish"])
    assert status == 0
    out = capsys.readouterr().out
    assert "fad is unavailable: " in out and "weights" in out and "fad: unavailable" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["with_controls"]["means"]["fad"] is None and "weights" in summary["with_controls"]["unavailable"]["fad"]
    assert not math.isnan(summary["with_controls"]["means"]["onset_f1"])


@pytest.mark.parametrize(("make_args", "message"), [
    (lambda g, c, tmp: [str(tmp / "nowhere"), str(c)], "GENERATED .*nowhere: no such folder"),
    (lambda g, c, tmp: [str(g), str(tmp / "nowhere")], "CONDITIONS .*nowhere: no such folder"),
    (lambda g, c, tmp: [str(g), str(c), "--metrics", "fad"], "--metrics fad needs --reference"),
    (lambda g, c, tmp: [str(g), str(c), "--metrics", "kld"], "--metrics 'kld': choose among"),
    (lambda g, c, tmp: [str(g), str(tmp)], r"clip_00.wav: no condition file for it in"),
])
def test_user_errors_are_one_line(folders, tmp_path, capsys, make_args, message):
    generated, conditions = folders
    assert main(make_args(generated, conditions, tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.startswith("jasco-evaluate: error: ") and err.count("\n") == 1
    assert __import__("re").search(message, err), err


def test_conditions_shorter_than_the_audio_are_refused(folders, tmp_path, capsys):
    generated, conditions = folders
    short = tmp_path / "conditions"
    short.mkdir()
    wav, sr = audio_read(conditions / "clip_00.drums.wav", 0.0, 1.0)
    audio_write(short / "clip_00.drums.wav", wav, sr, normalize=False)
    only = tmp_path / "generated"
    only.mkdir()
    shutil.copy(generated / "clip_00.wav", only)
    assert main([str(only), str(short), "--metrics", "onsets"]) == 2
    err = capsys.readouterr().err
    assert "clip_00.drums.wav lasts 1.00 s but" in err and "it belongs to another file" in err
