"""Tests for jasco.data.audio_dataset: manifests, the manifest CLI, segment sampling."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers_audio import make_audio_dir, sine, write_manifest_lines, write_wav

from jasco.data.audio_dataset import AudioDataset, BadTrackError, EmptyDatasetError, SegmentInfo
from jasco.data.manifest import AudioMeta, ManifestError, build_manifest, find_audio_files, load_manifest, save_manifest
from jasco.prepare.manifest import main

REPO = Path(__file__).resolve().parents[2]


def _metas(root: Path, durations: list[float], sr: int = 16000) -> list[AudioMeta]:
    make_audio_dir(root, durations, sr)
    return build_manifest(root, workers=1, progress=False)


def test_cli_builds_manifest_with_sidecars(tmp_path: Path) -> None:
    root = tmp_path / "audio"
    make_audio_dir(root, [1.0, 2.0], sidecars=True)
    write_wav(root / "song0.drums.wav", sine(1.0, 16000), 16000)  # side stem: not an example
    (root / "notes.txt").write_text("not audio")
    out = tmp_path / "m" / "data.jsonl"
    proc = subprocess.run([sys.executable, "-m", "jasco.prepare.manifest", str(root), str(out),
                           "--workers", "2", "--no-progress"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [Path(r["path"]).name for r in rows] == ["song0.wav", "song1.wav"]
    assert all(Path(r["path"]).is_absolute() for r in rows)
    assert rows[1]["duration"] == pytest.approx(2.0) and rows[1]["sample_rate"] == 16000
    assert rows[0]["info_path"] == str((root / "song0.json").resolve())
    assert set(rows[0]) >= {"path", "duration", "sample_rate", "amplitude", "weight", "info_path"}
    metas = load_manifest(out.parent)  # a directory resolves to its data.jsonl
    assert [m.duration for m in metas] == pytest.approx([1.0, 2.0])


def test_cli_relative_paths_and_gzip(tmp_path: Path) -> None:
    root = tmp_path / "audio"
    make_audio_dir(root, [1.0])
    out = tmp_path / "data.jsonl.gz"
    assert main([str(root), str(out), "--relative", "--workers", "1", "--no-progress"]) == 0
    with gzip.open(out, "rt") as f:
        row = json.loads(f.readline())
    assert row["path"] == "audio/song0.wav"
    # Moving the whole dataset folder keeps the manifest valid.
    moved = tmp_path.parent / (tmp_path.name + "_moved")
    tmp_path.rename(moved)
    metas = load_manifest(moved / "data.jsonl.gz")
    assert metas[0].path == str(moved.resolve() / "audio" / "song0.wav")
    assert Path(metas[0].path).exists()


def test_cli_bad_file_fails_or_is_skipped(tmp_path: Path) -> None:
    root = tmp_path / "audio"
    make_audio_dir(root, [1.0])
    (root / "broken.wav").write_bytes(b"RIFF not really")
    (root / "empty.flac").write_bytes(b"")
    out = tmp_path / "data.jsonl"
    proc = subprocess.run([sys.executable, "-m", "jasco.prepare.manifest", str(root), str(out),
                           "--workers", "1", "--no-progress"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 1
    assert "broken.wav" in proc.stderr and "--skip-bad" in proc.stderr
    assert not out.exists()
    with pytest.warns(UserWarning) as record:
        metas = build_manifest(root, workers=1, skip_bad=True, progress=False)
    messages = sorted(str(w.message) for w in record)
    assert len(messages) == 2 and any("broken.wav" in m for m in messages)
    assert any("empty.flac" in m and "empty" in m for m in messages)
    assert [Path(m.path).name for m in metas] == ["song0.wav"]


def test_find_audio_files_skips_side_files(tmp_path: Path) -> None:
    for name in ["a.wav", "a.drums.wav", "a.drums.flac", "b.flac", "b.json", "b.chords.json",
                 "b.salience.npz", "sub/c.mp3", "sub/c.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert [p.relative_to(tmp_path).as_posix() for p in find_audio_files(tmp_path)] == \
        ["a.wav", "b.flac", "sub/c.mp3"]


def test_manifest_errors_name_file_line_field(tmp_path: Path) -> None:
    manifest = write_manifest_lines(tmp_path / "bad.jsonl", [
        {"path": "/a.wav", "duration": 1.0, "sample_rate": 16000},
        {"path": "/b.wav", "sample_rate": 16000},
    ])
    with pytest.raises(ManifestError, match=r"bad\.jsonl, line 2: missing required field 'duration'"):
        load_manifest(manifest)
    manifest.write_text('{"path": "/a.wav", "duration": 1.0, "sample_rate": 16000}\n{oops\n')
    with pytest.raises(ManifestError, match=r"bad\.jsonl, line 2: invalid JSON"):
        load_manifest(manifest)
    with pytest.raises(ManifestError, match="does not exist"):
        load_manifest(tmp_path / "nothing.jsonl")
    with pytest.raises(ManifestError, match="data.jsonl"):
        load_manifest(tmp_path)


def test_meta_keeps_extra_fields_round_trip(tmp_path: Path) -> None:
    meta = AudioMeta.from_dict({"path": str(tmp_path / "a.wav"), "duration": 2, "sample_rate": 32000,
                                "weight": 2.0, "chords_path": str(tmp_path / "c.json"), "custom": [1, 2]})
    assert meta.extra == {"chords_path": str(tmp_path / "c.json"), "custom": [1, 2]}
    path = save_manifest(tmp_path / "m.jsonl", [meta])
    (back,) = load_manifest(path)
    assert back == meta and back.get_path("chords_path") == str(tmp_path / "c.json")


def test_segments_are_deterministic_per_epoch_and_index(tmp_path: Path) -> None:
    metas = _metas(tmp_path, [3.0, 4.0, 5.0])
    kwargs = dict(segment_duration=1.0, num_samples=20, sample_rate=16000, return_info=True)
    ds_a, ds_b = AudioDataset(metas, **kwargs), AudioDataset(metas, **kwargs)
    wav_a, info_a = ds_a[7]
    wav_b, info_b = ds_b[7]
    assert torch.equal(wav_a, wav_b) and info_a == info_b
    assert wav_a.shape == (1, 16000)
    seeks_epoch0 = [ds_a[i][1].seek_time for i in range(5)]
    ds_a.set_epoch(1)
    seeks_epoch1 = [ds_a[i][1].seek_time for i in range(5)]
    assert seeks_epoch0 != seeks_epoch1
    ds_a.set_epoch(0)
    assert [ds_a[i][1].seek_time for i in range(5)] == seeks_epoch0
    other_seed = AudioDataset(metas, shuffle_seed=1, **kwargs)
    assert [other_seed[i][1].seek_time for i in range(5)] != seeks_epoch0


def test_segment_content_matches_file_at_seek(tmp_path: Path) -> None:
    sr = 8000
    signal = torch.arange(3 * sr, dtype=torch.float32)[None] / (4 * sr)
    write_wav(tmp_path / "r.wav", signal, sr)
    metas = build_manifest(tmp_path, workers=1, progress=False)
    ds = AudioDataset(metas, segment_duration=0.5, sample_rate=sr, num_samples=5, return_info=True)
    for i in range(5):
        wav, info = ds[i]
        start = int(round(info.seek_time * sr))
        n = info.n_frames
        assert torch.allclose(wav[0, :n], signal[0, start:start + n])
        assert wav[0, n:].abs().sum() == 0 and info.total_frames == 4000


def test_padding_at_end_and_min_segment_ratio(tmp_path: Path) -> None:
    metas = _metas(tmp_path, [0.6, 0.3, 2.0])
    with pytest.warns(UserWarning, match=r"song1\.wav \(0\.30s\)"):
        ds = AudioDataset(metas, segment_duration=1.0, sample_rate=16000, min_segment_ratio=0.5,
                          num_samples=40, return_info=True)
    assert [Path(m.path).name for m in ds.metas] == ["song0.wav", "song2.wav"]
    for i in range(40):
        wav, info = ds[i]
        assert wav.shape == (1, 16000)
        assert info.n_frames >= 8000  # at least min_segment_ratio of real audio
        if info.n_frames < 16000:
            assert wav[:, info.n_frames:].abs().max() == 0
    with pytest.warns(UserWarning, match="song1.wav"), pytest.raises(EmptyDatasetError, match="no files left"):
        AudioDataset(metas[1:2], segment_duration=1.0, min_segment_ratio=1.0)


def test_weights_and_duration_sampling(tmp_path: Path) -> None:
    metas = _metas(tmp_path, [1.0, 1.0])
    metas[1].weight = 0.0
    ds = AudioDataset(metas, segment_duration=0.5, sample_rate=16000, num_samples=30, return_info=True)
    assert all(Path(ds[i][1].meta.path).name == "song0.wav" for i in range(30))
    long_metas = _metas(tmp_path / "b", [1.0, 9.0])
    ds = AudioDataset(long_metas, segment_duration=0.5, sample_rate=16000)
    assert ds.sampling_probabilities.tolist() == pytest.approx([0.1, 0.9])
    flat = AudioDataset(long_metas, segment_duration=0.5, sample_rate=16000, sample_on_duration=False)
    assert flat.sampling_probabilities.tolist() == pytest.approx([0.5, 0.5])


def test_whole_files_no_shuffle_and_collater(tmp_path: Path) -> None:
    metas = _metas(tmp_path, [0.5, 1.0], sr=8000)
    ds = AudioDataset(metas, segment_duration=None, shuffle=False, sample_rate=16000, channels=2,
                      return_info=True)
    assert len(ds) == 2
    (w0, i0), (w1, i1) = ds[0], ds[1]
    assert w0.shape == (2, 8000) and w1.shape == (2, 16000) and i0.seek_time == 0.0
    assert isinstance(i0, SegmentInfo) and i0.sample_rate == 16000 and i0.channels == 2
    batch, infos = ds.collater([ds[0], ds[1]])
    assert batch.shape == (2, 2, 16000) and batch[0, :, 8000:].abs().max() == 0 and infos[1] == i1
    plain = AudioDataset(metas, segment_duration=0.25, sample_rate=8000, num_samples=3)
    assert plain.collater([plain[0], plain[1], plain[2]]).shape == (3, 1, 2000)


def test_read_failures_raise_or_retry(tmp_path: Path) -> None:
    metas = _metas(tmp_path, [1.0, 1.0])
    Path(metas[1].path).write_bytes(b"corrupted now")
    strict = AudioDataset(metas, segment_duration=0.5, sample_rate=16000, num_samples=50)
    with pytest.raises(BadTrackError, match=r"Track \S*song1\.wav: bad audio file: .*skip_bad_files=true"):
        for i in range(50):
            strict[i]
    lenient = AudioDataset(metas, segment_duration=0.5, sample_rate=16000, num_samples=50,
                           skip_bad_files=True, return_info=True)
    with pytest.warns(UserWarning, match="Skipping a bad track.*song1.wav"):
        names = {Path(lenient[i][1].meta.path).name for i in range(50)}
    assert names == {"song0.wav"}
    # Without shuffling, the next file stands in for a bad one.
    ordered = AudioDataset(metas, segment_duration=0.5, sample_rate=16000, shuffle=False, skip_bad_files=True,
                           return_info=True)
    with pytest.warns(UserWarning, match="song1.wav"):
        assert [Path(ordered[i][1].meta.path).name for i in range(2)] == ["song0.wav", "song0.wav"]
    Path(metas[0].path).unlink()
    with pytest.warns(UserWarning), pytest.raises(BadTrackError, match="every one of 3 attempt"):
        AudioDataset(metas, segment_duration=0.5, sample_rate=16000, skip_bad_files=True, max_read_retry=3)[0]
