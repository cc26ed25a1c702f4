"""Bad inputs to `python -m jasco.prepare`: every track that goes in comes out (manifests, failures or warnings).

One run over a folder holding one file per case of the "bad input -> what happens" table in
docs/DATA.md; each case asserts its failure record (file, step, reason) or warning, and that the
good tracks are all in the manifests.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers_prepare import cli_args, rows, tone, truncated_mp3

from jasco.data.manifest import load_manifest
from jasco.prepare.__main__ import main
from jasco.prepare.tracks import split_of

SR = 32000


def _pair(src: Path, name: str, seconds: float = 2.0, **kwargs) -> Path:
    """A track with a matching drum stem, so that its drums step runs without Demucs."""
    tone(src / f"{name}.drums.wav", seconds, freq=80.0)
    return tone(src / f"{name}.wav", seconds, **kwargs)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    src = tmp_path_factory.mktemp("inputs") / "src"
    for name in ("good_a", "good_b", "good_c"):
        _pair(src, name, freq=220.0 + 50 * len(name))
    truncated_mp3(src / "trunc.mp3")
    _pair(src, "tiny", seconds=0.2)
    nan = np.full((SR * 2, 1), 0.1, np.float32)
    nan[SR // 2] = np.nan
    sf.write(str(src / "nan.wav"), nan, SR, subtype="FLOAT")
    _pair(src, "loud", amplitude=900.0)
    clipped = np.clip(np.sin(2 * np.pi * 110 * np.arange(SR * 2) / SR) * 3, -1, 1).astype(np.float32)
    sf.write(str(src / "clipped.wav"), clipped, SR, subtype="PCM_16")
    sf.write(str(src / "quiet.wav"), np.zeros(SR * 2, np.float32), SR)
    _pair(src, "badjson")
    (src / "badjson.json").write_text('{"title": "no closing brace"')
    _pair(src, "badtype")
    (src / "badtype.json").write_text(json.dumps({"bpm": "fast"}))
    tone(src / "shortstem.wav", 2.0)
    tone(src / "shortstem.drums.wav", 1.0)
    tone(src / "ratestem.wav", 2.0)
    tone(src / "ratestem.drums.wav", 4.0, sample_rate=16000)  # 64000 samples: 2 s at 32 kHz, labelled 16 kHz
    tone(src / "nanstem.wav", 2.0)
    stem = np.full((SR * 2, 1), 0.1, np.float32)
    stem[10] = np.inf
    sf.write(str(src / "nanstem.drums.wav"), stem, SR, subtype="FLOAT")
    _pair(src, "badchords")
    (src / "badchords.chords.json").write_text('[[0.0, "C"], [1.0')
    _pair(src, "latechords")
    (src / "latechords.chords.json").write_text('[[0.0, "C"], [100.0, "G"]]')
    _pair(src, "badsal")
    np.savez(src / "badsal.salience.npz", salience=np.zeros((53, 10), np.float32), frame_rate=50.0)
    _pair(src, "nansal")
    np.savez(src / "nansal.salience.npz", salience=np.full((53, 100), np.nan, np.float32), frame_rate=50.0)
    _pair(src, "longsal")
    np.savez(src / "longsal.salience.npz", salience=np.zeros((53, 500), np.float32), frame_rate=50.0)
    out = src.parent / "out"
    code = main(cli_args(src, out))
    return src, out, code


def _failures(out: Path) -> dict[str, dict]:
    return {f["track"]: f for f in rows(out / "failures.jsonl")}


def _warnings(out: Path, track: str, step: str | None = None) -> list[str]:
    return [w["message"] for w in rows(out / "warnings.jsonl") if w["track"] == track and step in (None, w["step"])]


def _manifest(out: Path) -> dict[str, dict]:
    return {Path(m.path).stem: m.to_dict() for split in ("train", "valid") for m in load_manifest(out / split)}


def test_every_input_comes_out(prepared):
    src, out, code = prepared
    assert code == 1  # some tracks failed; the others are prepared
    inputs = {str(p.resolve()) for p in src.iterdir() if p.suffix in (".wav", ".mp3") and ".drums" not in p.name}
    in_manifests = {m["path"] for m in _manifest(out).values()}
    failed = {f["path"] for f in rows(out / "failures.jsonl")}
    assert in_manifests | failed == inputs and not in_manifests & failed
    assert sorted(_manifest(out)) == ["clipped", "good_a", "good_b", "good_c", "latechords", "longsal", "loud",
                                      "quiet", "tiny", "trunc"]
    assert load_manifest(out / "valid") and load_manifest(out / "train")
    summary = json.loads((out / "prepare.json").read_text())
    assert summary["counts"]["drums"]["failed"] == 3 and summary["counts"]["manifest"]["failed"] == 3


def test_truncated_mp3_uses_decoded_length(prepared):
    _, out, _ = prepared
    assert abs(_manifest(out)["trunc"]["duration"] - 1.98) < 0.05
    assert any("header says 6.00 s but it decodes to 1.98 s" in m for m in _warnings(out, "trunc", "manifest"))


def test_short_clip_is_kept(prepared):
    _, out, _ = prepared
    line = _manifest(out)["tiny"]
    assert line["duration"] == pytest.approx(0.2) and "latents_path" in line and "drum_codes_path" in line
    assert any("shorter (0.20 s)" in m for m in _warnings(out, "tiny", "manifest"))


def test_non_finite_audio_fails_and_writes_nothing(prepared):
    _, out, _ = prepared
    failure = _failures(out)["nan.wav"]
    assert failure["step"] == "manifest" and failure["file"].endswith("nan.wav")
    assert "1 non-finite samples" in failure["reason"] and "0.50 s" in failure["reason"]
    assert not list((out / "latents").rglob("nan.npy"))


@pytest.mark.parametrize("track, text", [("loud", "beyond full scale (peak"), ("clipped", "clipped"),
                                         ("quiet", "silent")])
def test_level_problems_are_warnings(prepared, track, text):
    _, out, _ = prepared
    assert track in _manifest(out)
    assert any(text in m for m in _warnings(out, track, "manifest"))


@pytest.mark.parametrize("track, step, file, text", [
    ("badjson", "manifest", "badjson.json", "not readable JSON"),
    ("badtype", "manifest", "badtype.json", "'bpm' must be a number"),
    ("shortstem", "drums", "shortstem.drums.wav", "lasts 1.00 s but its mix"),
    ("ratestem", "drums", "ratestem.drums.wav", "wrong sample rate"),
    ("nanstem", "drums", "nanstem.drums.wav", "non-finite"),
    ("badchords", "chords", "badchords.chords.json", "not valid JSON"),
    ("badsal", "melody", "badsal.salience.npz", "covers 0.20 s"),
    ("nansal", "melody", "nansal.salience.npz", "non-finite"),
])
def test_invalid_side_files_fail_naming_the_file(prepared, track, step, file, text):
    _, out, _ = prepared
    failure = _failures(out)[track]
    assert failure["step"] == step and Path(failure["file"]).name == file and file in failure["reason"]
    assert text in failure["reason"]


def test_side_files_longer_than_the_track_are_warnings(prepared):
    _, out, _ = prepared
    assert any("after the end of the track" in m for m in _warnings(out, "latechords", "chords"))
    assert any("extra frames are never used" in m for m in _warnings(out, "longsal", "melody"))
    assert "salience_path" in _manifest(out)["longsal"]


def test_missing_optional_controls_are_null_not_dropped(prepared):
    _, out, _ = prepared
    lines = _manifest(out)
    assert "salience_path" not in lines["good_a"] and "chords_path" in lines["good_a"]
    assert "drum_codes_path" not in lines["quiet"] and "drum_codes_path" in lines["good_a"]
    assert any("no melody condition" in m for m in _warnings(out, "good_a", "melody"))
    assert any("no drum condition" in m for m in _warnings(out, "quiet", "drums"))


def test_summary_line_counts_each_step(tmp_path, caplog):
    src = tmp_path / "src"
    _pair(src, "one")
    _pair(src, "two")
    tone(src / "three.wav", 2.0)
    tone(src / "three.drums.wav", 0.5)
    with caplog.at_level(logging.INFO, logger="jasco.prepare"):
        assert main(cli_args(src, tmp_path / "out", steps="manifest,drums")) == 1
    summary = [r.getMessage() for r in caplog.records if r.getMessage().startswith("summary:")]
    assert len(summary) == 1 and "manifest 3 ok" in summary[0] and "drums 2 ok, 1 failed" in summary[0]


def test_valid_split_survives_a_failing_track(tmp_path):
    """The track the split would have moved to `valid` fails a later step: another good track goes there."""
    goods = [n for n in (f"good{i}" for i in range(100)) if split_of(n, 0.1) == "train"][:2]
    digest = {n: hashlib.sha1(n.encode()).hexdigest() for n in goods}
    bad = next(f"bad{i}" for i in range(10_000) if hashlib.sha1(f"bad{i}".encode()).hexdigest() < min(digest.values())
               and split_of(f"bad{i}", 0.1) == "train")
    src = tmp_path / "src"
    for name in goods:
        _pair(src, name)
    tone(src / f"{bad}.wav", 2.0)
    tone(src / f"{bad}.drums.wav", 0.5)  # wrong length: fails the drums step
    out = tmp_path / "out"
    assert main(cli_args(src, out, "--valid-fraction", "0.1", steps="manifest,drums")) == 1
    assert [f["track"] for f in rows(out / "failures.jsonl")] == [bad]
    splits = {s: [Path(m.path).stem for m in load_manifest(out / s)] for s in ("train", "valid")}
    assert len(splits["valid"]) == 1 and len(splits["train"]) == 1


def test_balanced_splits_keep_valid_small_and_never_empty():
    from types import SimpleNamespace

    from jasco.prepare.tracks import balance_splits

    tracks = [SimpleNamespace(id=f"t{i}", split="valid" if i < 3 else "train") for i in range(4)]
    splits = balance_splits(tracks, valid_fraction=0.1)
    assert list(splits.values()).count("valid") == 1  # 3 of 4 hashed to valid: capped at max(1, 0.4)
    assert balance_splits(tracks, valid_fraction=0.1) == splits  # deterministic
    all_train = [SimpleNamespace(id=f"t{i}", split="train") for i in range(3)]
    assert list(balance_splits(all_train, 0.1).values()).count("valid") == 1
    many = [SimpleNamespace(id=f"t{i}", split="valid" if i % 2 else "train") for i in range(20)]
    assert list(balance_splits(many, 0.25).values()).count("valid") == 5
    assert balance_splits(all_train, 0.0) == {t.id: "train" for t in all_train}
