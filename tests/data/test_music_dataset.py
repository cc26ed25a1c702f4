"""Tests for jasco.data.music_dataset: sidecar parsing, text augmentation, music datasets."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers_audio import make_audio_dir

from jasco.data.audio_dataset import SegmentInfo
from jasco.data.manifest import AudioMeta, build_manifest
from jasco.data.music_dataset import InfoAudioDataset, MusicDataset, MusicInfo, SidecarError


def _segment(tmp_path: Path) -> SegmentInfo:
    meta = AudioMeta(path=str(tmp_path / "a.wav"), duration=3.0, sample_rate=32000)
    return SegmentInfo(meta=meta, seek_time=1.0, n_frames=100, total_frames=100, sample_rate=32000, channels=1)


def _full_info(tmp_path: Path) -> MusicInfo:
    return MusicInfo.from_segment_info(
        _segment(tmp_path), description="An upbeat track.", key="C major", bpm=120.0, genre="rock",
        moods=["happy", "calm"], instrument="guitar", keywords=["live"])


def test_from_sidecar_parses_and_ignores_unknown(tmp_path: Path) -> None:
    sidecar = tmp_path / "a.json"
    sidecar.write_text(json.dumps({"title": "T", "artist": "A", "key": "D minor", "bpm": "96.5",
                                   "genre": "jazz", "moods": "sad, slow ,", "keywords": ["piano", "night"],
                                   "description": "A piano ballad.", "name": "n", "instrument": "piano",
                                   "sample_rate": 44100, "unknown_key": {"x": 1}}))
    info = MusicInfo.from_sidecar(_segment(tmp_path), sidecar)
    assert (info.title, info.artist, info.key, info.bpm, info.genre) == ("T", "A", "D minor", 96.5, "jazz")
    assert info.moods == ["sad", "slow"] and info.keywords == ["piano", "night"]
    assert info.description == "A piano ballad." and info.instrument == "piano"
    assert info.seek_time == 1.0 and info.sample_rate == 32000  # segment fields win over the sidecar


def test_sidecar_errors_name_the_file(tmp_path: Path) -> None:
    seg = _segment(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SidecarError, match="bad.json"):
        MusicInfo.from_sidecar(seg, bad)
    bad.write_text("[1, 2]")
    with pytest.raises(SidecarError, match="bad.json.*JSON object"):
        MusicInfo.from_sidecar(seg, bad)
    bad.write_text(json.dumps({"moods": 3}))
    with pytest.raises(SidecarError, match="bad.json.*'moods'"):
        MusicInfo.from_sidecar(seg, bad)
    bad.write_text(json.dumps({"bpm": "fast"}))
    with pytest.raises(SidecarError, match="bad.json.*'bpm'"):
        MusicInfo.from_sidecar(seg, bad)
    with pytest.raises(SidecarError, match="missing.json"):
        MusicInfo.from_sidecar(seg, tmp_path / "missing.json")


def test_augment_text_is_deterministic_given_generator(tmp_path: Path) -> None:
    info = _full_info(tmp_path)
    outs = [info.augment_text(1.0, 0.5, 0.5, torch.Generator().manual_seed(s)).description for s in range(20)]
    again = [info.augment_text(1.0, 0.5, 0.5, torch.Generator().manual_seed(s)).description for s in range(20)]
    assert outs == again and len(set(outs)) > 5
    assert info.description == "An upbeat track."  # the original is not modified


def test_augment_text_merges_all_fields(tmp_path: Path) -> None:
    info = _full_info(tmp_path)
    out = info.augment_text(merge_text_p=1.0, drop_desc_p=0.0, drop_other_p=1.0,
                            generator=torch.Generator().manual_seed(3)).description
    assert out.startswith("An upbeat track. ")
    parts = out[len("An upbeat track. "):].split(". ")
    assert sorted(parts) == sorted(["key: C major", "bpm: 120", "genre: rock", "moods: happy, calm",
                                    "instrument: guitar", "keywords: live"])
    dropped = info.augment_text(1.0, 1.0, 1.0, torch.Generator().manual_seed(3)).description
    assert "upbeat" not in dropped and "genre: rock" in dropped
    unchanged = info.augment_text(0.0, 1.0, 1.0, torch.Generator().manual_seed(3)).description
    assert unchanged == "An upbeat track."
    nothing = MusicInfo.from_segment_info(_segment(tmp_path)).augment_text(1.0, 1.0, 1.0)
    assert nothing.description is None


def test_music_dataset_reads_sidecars_and_augments_only_in_train(tmp_path: Path) -> None:
    make_audio_dir(tmp_path, [1.0, 1.0], sidecars=True)
    metas = build_manifest(tmp_path, workers=1, progress=False)
    common = dict(segment_duration=0.5, sample_rate=16000, num_samples=8)
    plain = MusicDataset(metas, train=False, merge_text_p=1.0, drop_other_p=1.0, **common)
    wav, info = plain[0]
    assert wav.shape == (1, 8000) and isinstance(info, MusicInfo)
    assert info.description.startswith("song number") and info.genre == "rock"
    train = MusicDataset(metas, train=True, merge_text_p=1.0, drop_other_p=1.0, **common)
    descriptions = [train[i][1].description for i in range(4)]
    assert all("genre: rock" in d for d in descriptions)
    assert descriptions == [train[i][1].description for i in range(4)]  # deterministic per item
    wav2, seg = InfoAudioDataset(metas, **common)[0]
    assert torch.equal(wav2, wav) and type(seg) is SegmentInfo


def test_music_dataset_without_sidecar(tmp_path: Path) -> None:
    make_audio_dir(tmp_path, [1.0])
    metas = build_manifest(tmp_path, workers=1, progress=False)
    _, info = MusicDataset(metas, segment_duration=0.5, sample_rate=16000, merge_text_p=1.0, num_samples=2)[0]
    assert info.description is None and info.genre is None
