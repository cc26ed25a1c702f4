"""`jasco-generate`: chord parsing, and a full run on an exported debug model (wav + plot)."""
from __future__ import annotations

import json

import pytest
import soundfile as sf
import torch
from helpers_inference import debug_model, export_model

from jasco.audio.io import audio_write
from jasco.controls.melody.salience import write_salience
from jasco.generate import main, parse_chords


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return export_model(debug_model(seed=4), tmp_path_factory.mktemp("model"))


def test_parse_chords_inline_and_files(tmp_path):
    expected = [(0.0, "C"), (2.0, "D"), (4.5, "F#m7")]
    assert parse_chords("C@0 D@2 F#m7@4.5") == expected
    (tmp_path / "prog.json").write_text(json.dumps([[0, "C"], [2, "D"], [4.5, "F#m7"]]))
    assert parse_chords(str(tmp_path / "prog.json")) == expected
    (tmp_path / "prog.txt").write_text("# my song\nC@0\n2 D\n\nF#m7 4.5  # bridge\n")
    assert parse_chords(str(tmp_path / "prog.txt")) == expected


def test_parse_chords_errors(tmp_path):
    with pytest.raises(ValueError, match=r"--chords: cannot read chord change 'C'; write LABEL@START"):
        parse_chords("C D@2")
    (tmp_path / "bad.txt").write_text("C@0\nD E F\n")
    with pytest.raises(ValueError, match=r"bad.txt, line 2"):
        parse_chords(str(tmp_path / "bad.txt"))
    with pytest.raises(FileNotFoundError, match="missing.json does not exist"):
        parse_chords(str(tmp_path / "missing.json"))


def test_generate_writes_wav_and_plot(folder, tmp_path):
    audio_write(tmp_path / "drums.wav", torch.randn(2, 44100 * 2) * 0.2, 44100, normalize=False)
    salience = torch.zeros(53, 86 * 2)
    salience[20, :100] = 1.0
    write_salience(tmp_path / "melody.npz", salience, frame_rate=86.0)
    out = tmp_path / "gen" / "song.wav"
    status = main(["--model", str(folder), "--text", "funky bass", "--chords", "C@0 G@1.2 Am@2",
                   "--drums", str(tmp_path / "drums.wav"), "--melody", str(tmp_path / "melody.npz"),
                   "--steps", "2", "--duration", "2.5", "--seed", "0", "--cfg-all", "1.25", "--cfg-text", "2.5",
                   "--device", "cpu", "--out", str(out), "--plot", "--no-progress"])
    assert status == 0
    info = sf.info(str(out))
    assert info.samplerate == 32000 and info.channels == 1 and info.frames == int(2.5 * 32000)
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_generate_reports_chords_outside_the_segment(folder, tmp_path):
    with pytest.raises(ValueError, match="outside the generated segment"):
        main(["--model", str(folder), "--chords", "C@0 G@3", "--duration", "2", "--steps", "1",
              "--device", "cpu", "--out", str(tmp_path / "x.wav"), "--no-progress"])
    assert not (tmp_path / "x.wav").exists()
