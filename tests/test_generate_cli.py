"""`jasco-generate`: chord parsing, a full run on an exported debug model (wav + plot), one-line
user errors with exit status 2, and the docs/INFERENCE.md command run as written."""
from __future__ import annotations

import json
import os
import pickle
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch
from helpers_inference import debug_model, export_model

from jasco.audio.io import audio_write
from jasco.controls.chords.vocabulary import ChordVocabulary
from jasco.controls.melody.salience import write_salience
from jasco.generate import main, parse_chords

ROOT = Path(__file__).resolve().parents[1]


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


def error_line(capsys) -> str:
    """The one `jasco-generate: error:` line on stderr (and no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("jasco-generate: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def test_generate_reports_chords_outside_the_segment(folder, tmp_path, capsys):
    status = main(["--model", str(folder), "--chords", "C@0 G@3", "--duration", "2", "--steps", "1",
                   "--device", "cpu", "--out", str(tmp_path / "x.wav"), "--no-progress"])
    assert status == 2
    assert re.search(r"--chords: chords of sample 0: 'G' starts at 3.0 s, outside the generated segment "
                     r"\[0, 2.0\) s", error_line(capsys))
    assert not (tmp_path / "x.wav").exists()


@pytest.mark.parametrize("option, value, fragment", [
    ("--steps", "0", "argument --steps: must be an integer >= 1, got '0'"),
    ("--steps", "2.5", "argument --steps: must be an integer >= 1, got '2.5'"),
    ("--cfg-all", "inf", "argument --cfg-all: must be a finite number in [0, 100], got 'inf'"),
    ("--cfg-all", "nan", "argument --cfg-all: must be a finite number in [0, 100], got 'nan'"),
    ("--cfg-all", "1e9", "argument --cfg-all: must be a finite number in [0, 100], got '1e9'"),
    ("--cfg-text", "-1", "argument --cfg-text: must be a finite number in [0, 100], got '-1'"),
    ("--cfg-text", "abc", "argument --cfg-text: must be a finite number in [0, 100], got 'abc'"),
    ("--duration", "0", "argument --duration: must be a finite number in (0, 3600], got '0'"),
    ("--duration", "nan", "argument --duration: must be a finite number in (0, 3600], got 'nan'"),
    ("--duration", "1e308", "argument --duration: must be a finite number in (0, 3600], got '1e308'"),
    ("--overlap", "nan", "argument --overlap: must be a finite number >= 0, got 'nan'"),
    ("--overlap", "-1", "argument --overlap: must be a finite number >= 0, got '-1'"),
    ("--seed", "-3", "argument --seed: must be an integer in [0, 18446744073709551615], got '-3'"),
    ("--seed", "x", "argument --seed: must be an integer in [0, 18446744073709551615], got 'x'"),
    ("--melody-frame-rate", "0", "argument --melody-frame-rate: must be a finite number > 0, got '0'"),
    ("--solver", "rk7", "argument --solver: invalid choice: 'rk7'"),
])
def test_bad_option_values_are_one_line_errors(option, value, fragment, capsys):
    # Checked while parsing: the model is never loaded.
    assert main(["--model", "/nowhere", option, value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("jasco-generate: error: ") and fragment in err, err
    assert err.rstrip().endswith("(see jasco-generate --help)")


def test_missing_and_bad_files_name_their_option(folder, tmp_path, capsys):
    base = ["--model", str(folder), "--steps", "1", "--duration", "1", "--device", "cpu", "--no-progress",
            "--out", str(tmp_path / "x.wav")]
    (tmp_path / "bad.txt").write_text("C@0\nD E F\n")
    (tmp_path / "bad.pkl").write_bytes(b"not a pickle")
    (tmp_path / "bad.wav").write_bytes(b"RIFF junk")
    cases = [
        (["--drums", str(tmp_path / "missing.wav")], r"--drums: Audio file .*missing.wav does not exist"),
        (["--drums", str(tmp_path / "bad.wav")], r"--drums: Cannot decode audio file .*bad.wav"),
        (["--melody", str(tmp_path / "missing.npz")], r"--melody: Salience file .*missing.npz does not exist"),
        (["--chords", str(tmp_path / "bad.txt")], r"--chords: chord file .*bad.txt, line 2: cannot read"),
        (["--chords", str(tmp_path / "missing.json")], r"--chords: chord file .*missing.json does not exist"),
        (["--chords-mapping", str(tmp_path / "missing.pkl")],
         r"--chords-mapping: Chord vocabulary file .*missing.pkl does not exist"),
        (["--chords-mapping", str(tmp_path / "bad.pkl")], r"--chords-mapping: Cannot read chord vocabulary .*bad.pkl"),
        (["--out", str(tmp_path / "x.mp3")], r"--out .*x.mp3: cannot write .mp3 files; use one of .aif, "),
        (["--device", "gpu7"], r"--device gpu7: not a device .*use cpu, cuda or cuda:N"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], r"--device cuda: CUDA is not available on this machine; use --device cpu"))
    for extra, pattern in cases:
        assert main(base + extra) == 2, extra
        assert re.search(pattern, error_line(capsys)), extra
    assert main(["--model", str(tmp_path / "no_model"), "--steps", "1"]) == 2
    assert re.search(r"--model .*no_model: .*no_model does not exist: give an exported folder", error_line(capsys))
    assert not (tmp_path / "x.wav").exists()


def test_errors_found_after_loading_name_their_option(folder, tmp_path, capsys):
    base = ["--model", str(folder), "--steps", "1", "--duration", "1", "--device", "cpu", "--no-progress",
            "--out", str(tmp_path / "x.wav")]
    assert main(base + ["--overlap", "4"]) == 2  # the debug model's training segment is 4 s
    assert re.search(r"--overlap: overlap must be a finite number in \[0, 4\), got 4.0 seconds", error_line(capsys))
    labels = ChordVocabulary.builtin().labels
    labels[1], labels[2] = labels[2], labels[1]
    (tmp_path / "other.pkl").write_bytes(pickle.dumps({label: i for i, label in enumerate(labels)}))
    assert main(base + ["--chords-mapping", str(tmp_path / "other.pkl")]) == 2
    assert re.search(r"--chords-mapping: chords_mapping_path=.*other.pkl \(194 labels\) is not the chord vocabulary "
                     r"the model was trained with, chords_vocabulary='builtin'", error_line(capsys))
    drums = torch.zeros(44100, 2).numpy()
    drums[100, 0] = float("nan")
    sf.write(str(tmp_path / "nan.wav"), drums, 44100, subtype="FLOAT")
    assert main(base + ["--drums", str(tmp_path / "nan.wav")]) == 2
    assert re.search(r"--drums: drums_wav has 1 NaN or infinite samples", error_line(capsys))
    salience = torch.zeros(53, 100)
    salience[3, 4] = float("nan")
    write_salience(tmp_path / "nan.npz", salience, frame_rate=86.0)
    assert main(base + ["--melody", str(tmp_path / "nan.npz")]) == 2
    assert re.search(r"--melody .*nan.npz: the salience has 1 NaN or infinite values", error_line(capsys))
    assert not (tmp_path / "x.wav").exists()


def test_exit_status_and_stderr_of_the_installed_command():
    result = subprocess.run([sys.executable, "-m", "jasco.generate", "--steps", "0"], capture_output=True, check=False,
                            text=True, cwd=ROOT, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 2
    assert result.stderr == ("jasco-generate: error: argument --steps: must be an integer >= 1, got '0' "
                             "(see jasco-generate --help)\n")


def sh_commands(markdown: str) -> list[str]:
    """The `jasco-generate` commands of the ```sh blocks of a Markdown text (continuation lines joined)."""
    blocks = re.findall(r"^```sh\n(.*?)^```", markdown, flags=re.DOTALL | re.MULTILINE)
    commands = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    return [line for line in commands if line.startswith("jasco-generate ")]


def test_docs_command_runs_as_written(folder, tmp_path, monkeypatch):
    commands = sh_commands((ROOT / "docs" / "INFERENCE.md").read_text(encoding="utf-8"))
    assert commands
    audio_write(tmp_path / "drums.wav", torch.randn(2, 44100 * 3) * 0.2, 44100, normalize=False)
    # The debug model's own (builtin) vocabulary: a published model's mapping would not match it.
    (tmp_path / "chord_to_index_mapping.pkl").write_bytes(pickle.dumps(ChordVocabulary.builtin().to_dict()))
    monkeypatch.chdir(tmp_path)
    for command in commands:
        argv = shlex.split(re.sub(r"facebook/jasco-chords-drums(-melody)?-(400M|1B)", str(folder), command))[1:]
        assert main(argv + ["--device", "cpu", "--no-progress"]) == 0, command
    assert sf.info(str(tmp_path / "out.wav")).frames == 10 * 32000
    assert (tmp_path / "out.png").is_file()
