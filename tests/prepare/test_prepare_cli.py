"""`python -m jasco.prepare` as a user meets it: defaults, worker processes, user errors, missing requirements."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers_prepare import cli_args, rows, tone

from jasco.data.manifest import load_manifest
from jasco.prepare.__main__ import main

REPO = Path(__file__).resolve().parents[2]
CHORDINO = importlib.util.find_spec("vamp") is not None
DEMUCS = importlib.util.find_spec("demucs") is not None


def _folder(root: Path, names: tuple[str, ...] = ("one", "two", "three"), stems: bool = True) -> Path:
    for i, name in enumerate(names):
        tone(root / f"{name}.wav", 2.0, freq=200.0 + 40 * i)
        if stems:
            tone(root / f"{name}.drums.wav", 2.0, freq=70.0)
    return root


def _error_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.strip()]


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for default in ("(default: 2)", "(default: facebook/encodec_32khz)", "(default: auto)",
                    "(default: manifest,chords,melody,drums,latents)", "(default: melody,drums)", "(default: 0.1)"):
        assert default in text


def test_default_workers_on_cpu_finish(tmp_path):
    """The default `--workers 2` after the parent ran torch's OpenMP pool (building the codec): no hang."""
    src = _folder(tmp_path / "src")
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "jasco.prepare", str(src), str(tmp_path / "out"), "--codec", "debug",
               "--chords-backend", "templates", "--steps", "manifest,chords,drums,latents", "--no-progress",
               "--segment-check", "1"]
    assert "--workers" not in command
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "prepare.json").read_text())["settings"]["workers"] == 2
    names = sorted(Path(m.path).stem for s in ("train", "valid") for m in load_manifest(tmp_path / "out" / s))
    assert names == ["one", "three", "two"]


@pytest.mark.parametrize("extra, text", [
    (["--steps", "chords,bogus"], "--steps: unknown bogus"),
    (["--workers", "0"], "--workers must be >= 1"),
    (["--latent-window", "2", "--latent-overlap", "3"], "--latent-window (2.0) must be > 0 and exceed"),
    (["--valid-fraction", "1.5"], "--valid-fraction must be in [0, 1)"),
    (["--optional", "chords"], "--optional: unknown chords"),
    (["--chords-backend", "nope"], "argument --chords-backend: invalid choice"),
    (["--vocabulary", "missing.json"], "--vocabulary missing.json"),
])
def test_usage_errors_are_one_line(tmp_path, capsys, extra, text):
    src = _folder(tmp_path / "src", names=("one",))
    with pytest.raises(SystemExit) if extra[0] == "--chords-backend" else _nothing() as exit_info:
        code = main([str(src), str(tmp_path / "out"), *extra])
    code = exit_info.value.code if exit_info is not None else code
    lines = _error_lines(capsys)
    assert code == 2 and len(lines) == 1 and text in lines[0], lines


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_bad_paths_are_one_line(tmp_path, capsys):
    src = _folder(tmp_path / "src", names=("one",))
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("x")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"path": str(src / "one.wav"), "duration": 2.0, "sample_rate": 32000}) + "\n"
                   + '{"path": "x.wav", "duration": 2.0\n')
    no_duration = tmp_path / "noduration.jsonl"
    no_duration.write_text(json.dumps({"path": str(src / "one.wav"), "sample_rate": 32000}) + "\n")
    cases = [([str(tmp_path / "missing"), str(tmp_path / "o")], "missing does not exist"),
             ([str(src), str(tmp_path / "afile")], "afile is a file"),
             ([str(tmp_path / "empty"), str(tmp_path / "o")], "holds no audio file"),
             ([str(tmp_path / "afile"), str(tmp_path / "o")], "neither a folder nor a manifest"),
             ([str(bad), str(tmp_path / "o")], "bad.jsonl, line 2: invalid JSON"),
             ([str(no_duration), str(tmp_path / "o")], "noduration.jsonl, line 1: missing required field 'duration'")]
    for argv, text in cases:
        assert main(argv + ["--codec", "debug"]) == 2
        lines = _error_lines(capsys)
        assert len(lines) == 1 and text in lines[0], (argv, lines)
    assert not (tmp_path / "o").exists()


def test_bad_manifest_subprocess_one_line_exit_2(tmp_path):
    bad = tmp_path / "data.jsonl"
    bad.write_text("not json\n")
    proc = subprocess.run([sys.executable, "-m", "jasco.prepare", str(bad), str(tmp_path / "out")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "line 1: invalid JSON" in lines[0], proc.stderr


def test_offline_hub_codec_fails_fast(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("JASCO_CACHE_DIR", str(tmp_path / "empty_cache"))
    src = _folder(tmp_path / "src", names=("one",))
    begin = time.monotonic()
    code = main([str(src), str(tmp_path / "out"), "--codec", "facebook/encodec_32khz", "--steps", "manifest,latents"])
    assert time.monotonic() - begin < 10
    lines = _error_lines(capsys)
    assert code == 2 and len(lines) == 1
    assert "HF_HUB_OFFLINE" in lines[0] and "--codec debug" in lines[0] and "hf download" in lines[0]
    assert not (tmp_path / "out").exists()


def test_missing_requirements_one_message_each(tmp_path, capsys):
    src = _folder(tmp_path / "src", stems=False)
    argv = [str(src), str(tmp_path / "out"), "--codec", "debug", "--melody-weights", str(tmp_path / "nope.h5"),
            "--optional", "none"]
    expected = ["--melody-weights"]
    if not CHORDINO:
        argv += ["--chords-backend", "chordino"]
        expected.append("--chords-backend chordino: Chordino is not installed")
    if not DEMUCS:
        expected.append("drums: 3 of 3 track(s) have no drum stem and Demucs is not installed: "
                        "`pip install 'jasco[drums]'`")
    assert main(argv) == 2
    lines = _error_lines(capsys)
    assert len(lines) == len(expected), lines
    for line, text in zip(sorted(lines), sorted(expected)):
        assert text in line
    assert not (tmp_path / "out").exists()


def test_required_melody_without_weights_stops_up_front(tmp_path, capsys):
    src = _folder(tmp_path / "src")
    assert main(cli_args(src, tmp_path / "out", "--optional", "drums")) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "melody: 3 of 3 track(s) have no salience file" in lines[0]
    assert "--melody-weights" in lines[0] and "leave melody out of --steps" in lines[0]


@pytest.mark.skipif(CHORDINO, reason="Chordino is installed: auto uses it")
def test_chords_auto_falls_back_to_templates(tmp_path, caplog):
    src = _folder(tmp_path / "src", names=("one", "two"))
    argv = [a for a in cli_args(src, tmp_path / "out", steps="manifest,chords") if a not in ("--chords-backend",
                                                                                             "templates")]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "out" / "prepare.json").read_text())
    assert summary["settings"]["chords_backend"] == "templates"
    assert any("Chordino is not installed" in n for n in summary["notices"])
    assert any("Chordino is not installed" in r.getMessage() for r in caplog.records)


def test_rerun_is_resumable_and_reports_nulls_again(tmp_path):
    src = _folder(tmp_path / "src", names=("one", "two"), stems=False)
    out = tmp_path / "out"
    assert main(cli_args(src, out)) == 0  # melody and drums optional: null conditions, exit 0
    assert len([w for w in rows(out / "warnings.jsonl") if w["step"] in ("melody", "drums")]) == 4
    assert main(cli_args(src, out)) == 0
    summary = json.loads((out / "prepare.json").read_text())
    assert summary["counts"]["latents"]["skipped"] == 2 and summary["counts"]["melody"]["null"] == 2
    assert len([w for w in rows(out / "warnings.jsonl") if w["step"] in ("melody", "drums")]) == 4


def test_out_dir_of_another_codec_is_one_line(tmp_path, capsys):
    from jasco.models.codec import EncodecCompressionModel

    src = _folder(tmp_path / "src", names=("one",))
    out = tmp_path / "out"
    assert main(cli_args(src, out, steps="manifest,latents")) == 0
    other = tmp_path / "other_codec"
    EncodecCompressionModel.debug(seed=1).save_pretrained(other)
    capsys.readouterr()
    argv = cli_args(src, out, steps="manifest,latents")
    argv[argv.index("debug")] = str(other)
    assert main(argv) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "made with another codec (state_dict_sha256 differs" in lines[0]


def test_shards_then_final_run(tmp_path):
    src = _folder(tmp_path / "src", names=("one", "two", "three"))
    out = tmp_path / "out"
    for shard in (0, 1):
        assert main(cli_args(src, out, "--shard", str(shard), "--num-shards", "2", steps="manifest,drums,latents")) == 0
        assert (out / f"prepare.shard-{shard}-of-2.json").exists() and not (out / "train").exists()
    assert main(cli_args(src, out, steps="manifest,drums,latents")) == 0
    counts = json.loads((out / "prepare.json").read_text())["counts"]
    assert counts["latents"]["skipped"] == 3 and counts["drums"]["skipped"] == 3
    assert sum(len(load_manifest(out / s)) for s in ("train", "valid")) == 3


def test_cached_hub_codec_works_offline(tmp_path, monkeypatch):
    """A hub codec in the cache is loaded from its snapshot folder: no network, even with HF_HUB_OFFLINE."""
    from jasco.models.codec import EncodecCompressionModel

    cache = tmp_path / "hub"
    repo = cache / "models--facebook--encodec_32khz"
    EncodecCompressionModel.debug().save_pretrained(repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("JASCO_CACHE_DIR", str(cache))
    src = _folder(tmp_path / "src", names=("one",))
    argv = cli_args(src, tmp_path / "out", steps="manifest,latents")
    argv[argv.index("debug")] = "facebook/encodec_32khz"
    assert main(argv) == 0
    summary = json.loads((tmp_path / "out" / "prepare.json").read_text())
    assert summary["settings"]["codec_source"] == str(repo / "snapshots" / "abc123")
    assert summary["codec"]["state_dict_sha256"] == _debug_identity()


def _debug_identity() -> str:
    from jasco.data.latents import codec_identity
    from jasco.models.codec import EncodecCompressionModel

    return codec_identity(EncodecCompressionModel.debug())["state_dict_sha256"]
