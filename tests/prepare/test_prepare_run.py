"""End to end: `python -m jasco.prepare` on a tiny copy of egs/example, bad inputs, rerun and retry."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import soundfile as sf
from helpers_prepare import EXAMPLE, copy_clips
from reference_files import DEEPSALIENCE

from jasco.data.jasco_dataset import JascoDataset
from jasco.data.manifest import load_manifest
from jasco.prepare.__main__ import main

MELODY_WEIGHTS = DEEPSALIENCE


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _cli(src: Path, out: Path, steps: str) -> int:
    args = [str(src), str(out), "--steps", steps, "--codec", "debug", "--chords-backend", "templates",
            "--workers", "1", "--segment-check", "4", "--valid-fraction", "0.1", "--no-progress",
            "--latent-dtype", "float32"]
    if MELODY_WEIGHTS.exists():
        args += ["--melody-weights", str(MELODY_WEIGHTS)]
    return main(args)


def test_prepare_end_to_end_with_bad_inputs(tmp_path):
    src = copy_clips(tmp_path / "audio")
    (src / "broken.wav").write_bytes(b"RIFF not really a wav file")
    sf.write(str(src / "silent.wav"), np.zeros(32000 * 5, dtype=np.float32), 32000)
    sf.write(str(src / "short.wav"), sf.read(str(src / "clip_00.wav"), frames=64000)[0], 32000)
    sf.write(str(src / "short.drums.wav"), sf.read(str(src / "clip_00.drums.wav"), frames=64000)[0], 32000)
    (src / "short.chords.json").write_text('[[0.0, "C"], [1.0, "Cmaj9#11"]]')  # unknown label -> UNK
    np.savez(src / "short.salience.npz", salience=np.zeros((40, 100), np.float32), frame_rate=50.0)
    steps = "manifest,chords,melody,drums,latents" if MELODY_WEIGHTS.exists() else "manifest,chords,drums,latents"
    out = tmp_path / "out"

    assert _cli(src, out, steps) == 1  # failures exist, the run still completes
    failures = {(f["track"], f["step"]): f for f in _rows(out / "failures.jsonl")}
    assert "Cannot read the header of audio file" in failures[("broken.wav", "manifest")]["reason"]
    assert failures[("broken.wav", "manifest")]["file"].endswith("broken.wav")
    warnings = _rows(out / "warnings.jsonl")
    assert any(w["track"] == "silent" and "silent" in w["message"] for w in warnings)  # kept, with a warning
    assert any(w["track"] == "short" and "shorter" in w["message"] for w in warnings)
    assert any(w["track"] == "short" and "Cmaj9#11" in w["message"] and "UNK" in w["message"] for w in warnings)
    if MELODY_WEIGHTS.exists():
        assert "(40, 100)" in failures[("short", "melody")]["reason"]
        assert failures[("short", "melody")]["file"].endswith("short.salience.npz")
    manifests = {s: load_manifest(out / s) for s in ("train", "valid")}
    names = sorted(Path(m.path).stem for ms in manifests.values() for m in ms)
    assert names == (["clip_00", "clip_01", "clip_02", "silent"] + ([] if MELODY_WEIGHTS.exists() else ["short"]))
    silent = next(m for ms in manifests.values() for m in ms if Path(m.path).stem == "silent")
    assert "drum_codes_path" not in silent.extra  # no stem, no Demucs: a null drum condition, recorded
    if importlib.util.find_spec("demucs") is None:
        assert any(w["track"] == "silent" and w["step"] == "drums" and "Demucs" in w["message"] for w in warnings)
    assert manifests["valid"], "the valid split must not be empty"
    summary = json.loads((out / "prepare.json").read_text())
    assert summary["codec"]["state_dict_sha256"] and summary["settings"]["codec"] == "debug"
    assert manifests["train"], "the train split must not be empty"
    line = json.loads((out / "train" / "data.jsonl").read_text().splitlines()[0])
    assert line["latents_path"].startswith("../latents/shard_") and line["drum_codes_path"].startswith("../drum_codes/")

    # The dataset reads every prepared field of a manifest line.
    complete = [m for m in manifests["train"] if "drum_codes_path" in m.extra]
    dataset = JascoDataset(complete, segment_duration=2.0, shuffle=True, num_samples=2, return_info=True, train=False)
    _, info = dataset[0]
    assert info.latents.shape == (100, 128) and info.drums.codes.shape == (100,)
    assert info.frame_chords.shape == (100,)

    # Rerun: everything already done is skipped; fixing the bad salience file retries that track.
    np.savez(src / "short.salience.npz", salience=np.zeros((53, 100), np.float32), frame_rate=50.0)
    assert _cli(src, out, steps) == 1  # broken stays listed
    summary = json.loads((out / "prepare.json").read_text())
    assert summary["skipped"]["latents"] == 5 and summary["done"]["latents"] == 0
    assert summary["skipped"]["manifest"] == 5
    if MELODY_WEIGHTS.exists():
        assert summary["done"]["melody"] == 1
    names = sorted(Path(m.path).stem for s in ("train", "valid") for m in load_manifest(out / s))
    assert names == ["clip_00", "clip_01", "clip_02", "short", "silent"]
    assert {f["step"] for f in _rows(out / "failures.jsonl")} == {"manifest"}


def test_prepare_recognises_chords_without_chord_file(tmp_path):
    src = copy_clips(tmp_path / "audio", names=("clip_00",), sides=(".wav",), seconds=4.0)
    assert _cli(src, tmp_path / "out", "manifest,chords") == 0
    chords = json.loads((tmp_path / "out" / "chords" / "clip_00.chords.json").read_text())
    # The recognised progression is the one egs/example synthesised for these 4 seconds.
    truth = [c for c in json.loads((EXAMPLE.parent / "truth" / "clip_00.json").read_text())["chords"] if c[0] < 4.0]
    assert [label for _, label in chords] == [label for _, label in truth]
    assert all(abs(got - want) < 0.3 for (got, _), (want, _) in zip(chords, truth))


def test_usage_errors(tmp_path, capsys):
    assert main([str(tmp_path), str(tmp_path / "o"), "--steps", "chords,bogus"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert main([str(tmp_path / "missing"), str(tmp_path / "o")]) == 2
    assert "missing does not exist" in capsys.readouterr().err
