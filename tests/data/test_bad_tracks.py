"""Bad data at training time: every bad file of a track is an error naming the track and the file,
or with skip_bad_files a warning naming them; empty datasets explain themselves; cached latents
replace the audio without decoding it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_audio import write_wav

from jasco.controls.melody.salience import N_MELODY_BINS, write_salience
from jasco.data import audio_dataset, jasco_dataset
from jasco.data.audio_dataset import AudioDataset, BadTrackError, EmptyDatasetError
from jasco.data.drum_codes import write_drum_codes
from jasco.data.jasco_dataset import JascoDataset
from jasco.data.manifest import build_manifest, save_manifest

SR = 16000


def _track(root: Path, name: str, seconds: float = 3.0, drums: float | None = None) -> Path:
    """A noise mix (and a drum stem of `drums` seconds); returns the mix path."""
    gen = torch.Generator().manual_seed(len(name))
    path = write_wav(root / f"{name}.wav", 0.1 * torch.randn(1, int(seconds * SR), generator=gen), SR)
    if drums is not None:
        write_wav(root / f"{name}.drums.wav", 0.1 * torch.randn(1, int(drums * SR), generator=gen), SR)
    return path


def _dataset(root: Path, **kwargs) -> JascoDataset:
    base = dict(segment_duration=1.0, sample_rate=SR, num_samples=12, return_info=True)
    base.update(kwargs)
    return JascoDataset(build_manifest(root, workers=1, progress=False), **base)


def _names(dataset: JascoDataset) -> set[str]:
    return {Path(dataset[i][1].meta.path).name for i in range(len(dataset))}


def test_short_drum_stem_names_track_and_stem(tmp_path: Path) -> None:
    _track(tmp_path, "song", drums=0.5)  # was: RuntimeError "cannot reshape tensor of 0 elements", no file named
    with pytest.raises(BadTrackError, match=r"Track \S*song\.wav: bad drum stem \S*song\.drums\.wav: it lasts "
                                            r"0\.50 s .* the track 3\.00 s .*skip_bad_files=true") as caught:
        for i in range(12):
            _dataset(tmp_path)[i]
    assert caught.value.kind == "drum stem" and caught.value.path.endswith("song.drums.wav")


def test_skip_bad_files_covers_side_files(tmp_path: Path) -> None:
    _track(tmp_path, "good", drums=3.0)
    _track(tmp_path, "song", drums=3.0)
    (tmp_path / "song.chords.json").write_text('[[0.0, "C"], oops')
    with pytest.raises(BadTrackError, match=r"song\.wav: bad chord file \S*song\.chords\.json: .*not valid JSON"):
        _names(_dataset(tmp_path))
    with pytest.warns(UserWarning, match=r"Skipping a bad track .*song\.wav: bad chord file \S*song\.chords\.json"):
        assert _names(_dataset(tmp_path, skip_bad_files=True)) == {"good.wav"}


@pytest.mark.parametrize("side", ["sidecar", "salience_nan", "salience_short", "salience_shape", "latents_nan",
                                  "latents_short", "drum_codes_short", "drums_nan", "drums_rate"])
def test_bad_side_files_name_track_and_file(tmp_path: Path, side: str) -> None:
    _track(tmp_path, "good")
    _track(tmp_path, "song", drums=3.0 if side.startswith("drums") else None)
    salience = np.zeros((N_MELODY_BINS, 150), np.float32)
    extra = {}
    if side == "sidecar":
        bad = tmp_path / "song.json"
        bad.write_text(json.dumps({"description": "x", "bpm": "fast"}))
        kind = "metadata sidecar"
    elif side.startswith("salience"):
        bad = tmp_path / "song.salience.npz"
        if side == "salience_nan":
            salience[3, 7] = np.nan
        elif side == "salience_short":
            salience = salience[:, :50]  # 1 s of salience for a 3 s track
        else:
            salience = salience[:40]
        np.savez(bad, salience=salience, frame_rate=50.0)
        kind = "salience file"
    elif side.startswith("latents"):
        bad = tmp_path / "song.latents.npy"
        latents = np.zeros((150 if side == "latents_nan" else 60, 128), np.float16)
        latents[:, 5] = np.inf if side == "latents_nan" else 0
        np.save(bad, latents)
        extra["latents_path"] = str(bad)
        kind = "latents file"
    elif side == "drum_codes_short":
        bad = write_drum_codes(tmp_path / "song.codes.npy", torch.zeros(40, dtype=torch.long))
        extra["drum_codes_path"] = str(bad)
        kind = "drum codes file"
    else:
        bad = tmp_path / "song.drums.wav"
        if side == "drums_nan":
            stem = torch.zeros(1, 3 * SR)
            stem[0, ::1000] = float("nan")
            write_wav(bad, stem, SR)
        else:  # the stem's samples, written with a header rate of half theirs: it lasts 6 s
            write_wav(bad, torch.zeros(1, 3 * SR), SR // 2)
        kind = "drum stem"
    metas = build_manifest(tmp_path, workers=1, progress=False)
    for meta in metas:
        if Path(meta.path).name == "song.wav":
            meta.extra.update(extra)
    kwargs = dict(segment_duration=1.0, sample_rate=SR, num_samples=12, return_info=True)
    with pytest.raises(BadTrackError, match=rf"Track \S*song\.wav: bad {kind} \S*{bad.name}: "):
        dataset = JascoDataset(metas, **kwargs)
        for i in range(len(dataset)):
            dataset[i]
    dataset = JascoDataset(metas, skip_bad_files=True, **kwargs)
    with pytest.warns(UserWarning, match=rf"song\.wav: bad {kind} \S*{bad.name}"):
        assert {Path(dataset[i][1].meta.path).name for i in range(len(dataset))} == {"good.wav"}


def test_truncated_audio_and_wrong_manifest_duration(tmp_path: Path) -> None:
    _track(tmp_path, "song", seconds=3.0)
    (meta,) = build_manifest(tmp_path, workers=1, progress=False)
    meta.duration = 5.0  # the manifest promises 2 s more than the file holds
    with pytest.raises(BadTrackError, match=r"song\.wav: bad audio file: it lasts 3\.00 s .* manifest gives the "
                                            r"track 5\.00 s"):
        AudioDataset([meta], segment_duration=1.0, sample_rate=SR)[0]
    AudioDataset([meta], segment_duration=1.0, sample_rate=SR, length_tolerance=2.5)[0]  # within tolerance


def test_segment_shorter_than_manifest_when_the_header_agrees(tmp_path: Path, monkeypatch) -> None:
    """A compressed file whose header matches the manifest but decodes short (e.g. a cut mp3)."""
    _track(tmp_path, "song", seconds=3.0)
    (meta,) = build_manifest(tmp_path, workers=1, progress=False)
    meta.duration = 6.0
    monkeypatch.setattr(audio_dataset, "audio_info", lambda path: type("H", (), dict(
        duration=6.0, sample_rate=SR, channels=1))())
    dataset = AudioDataset([meta], segment_duration=1.0, sample_rate=SR, num_samples=20, min_segment_ratio=1.0)
    with pytest.raises(BadTrackError, match=r"song\.wav: bad audio file: it is shorter than the manifest says"):
        for i in range(20):
            dataset[i]


def test_non_finite_audio_is_an_error(tmp_path: Path) -> None:
    wav = torch.zeros(1, 2 * SR)
    wav[0, 100::3000] = float("inf")
    write_wav(tmp_path / "song.wav", wav, SR)
    dataset = AudioDataset(build_manifest(tmp_path, workers=1, progress=False), segment_duration=1.0, sample_rate=SR)
    with pytest.raises(BadTrackError, match=r"song\.wav: bad audio file: \d+ non-finite values"):
        dataset[0]


def test_empty_dataset_names_manifest_counts_and_fix(tmp_path: Path) -> None:
    _track(tmp_path / "audio", "a", seconds=1.0)
    _track(tmp_path / "audio", "b", seconds=2.0)
    manifest = save_manifest(tmp_path / "valid" / "data.jsonl", build_manifest(tmp_path / "audio", progress=False))
    with pytest.warns(UserWarning, match="dropped 2 file"), pytest.raises(EmptyDatasetError) as caught:
        AudioDataset.from_meta(manifest.parent, segment_duration=10.0, min_segment_ratio=0.8)
    text = str(caught.value)
    assert f"the manifest {manifest}" in text and "all 2 file(s)" in text
    assert "2 shorter than 8.00 s (= min_segment_ratio 0.8 x segment_duration 10 s" in text
    assert "longest of them lasts 2.00 s" in text and "Fix: lower segment_duration or min_segment_ratio" in text
    manifest.write_text("")
    with pytest.raises(EmptyDatasetError, match=r"data\.jsonl has no entries"):
        AudioDataset.from_meta(manifest, segment_duration=10.0)


def test_cached_latents_replace_the_audio_without_decoding_it(tmp_path: Path, monkeypatch) -> None:
    for name in ("a", "b"):
        _track(tmp_path, name, seconds=3.0, drums=3.0)
    (tmp_path / "a.chords.json").write_text(json.dumps([[0.0, "C"], [1.5, "G"]]))
    write_salience(tmp_path / "a.salience.npz", torch.zeros(N_MELODY_BINS, 150), 50.0)
    metas = build_manifest(tmp_path, workers=1, progress=False)
    for meta in metas:
        stem = Path(meta.path).stem
        np.save(tmp_path / f"{stem}.latents.npy", np.ones((150, 128), np.float16))
        meta.extra["latents_path"] = str(tmp_path / f"{stem}.latents.npy")
        meta.extra["drum_codes_path"] = str(write_drum_codes(tmp_path / f"{stem}.codes.npy", torch.ones(150)))

    def no_decoding(*args, **kwargs):
        raise AssertionError("audio decoded although cached latents replace it")

    for module in (audio_dataset, jasco_dataset):
        monkeypatch.setattr(module, "audio_read", no_decoding)
    monkeypatch.setattr(audio_dataset, "audio_info", no_decoding)
    dataset = JascoDataset(metas, segment_duration=2.0, sample_rate=SR, channels=2, num_samples=6, return_info=True)
    assert dataset.read_audio is False
    batch, infos = dataset.collater([dataset[i] for i in range(len(dataset))])
    assert batch.shape == (6, 2, 0)
    for info in infos:
        assert info.latents.shape == (100, 128) and info.drums.codes.shape == (100,)
        assert info.total_frames == 2 * SR and info.n_frames == min(2 * SR, round((3.0 - info.seek_time) * SR))
        assert info.seek_time <= 3.0 - 0.5 * 2.0  # min_segment_ratio of the manifest duration
    assert any(info.frame_chords is not None for info in infos)
    # One track without latents: the mix is decoded for every track (a batch encodes all or none).
    del metas[1].extra["latents_path"]
    assert JascoDataset(metas, segment_duration=2.0, sample_rate=SR, num_samples=2).read_audio is True
