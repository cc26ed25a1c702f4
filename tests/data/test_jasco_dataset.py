"""Tests for jasco.data.jasco_dataset: side files, alignment, null conditions, latents, collation."""
from __future__ import annotations

import json
from pathlib import Path

import julius
import numpy as np
import pytest
import soundfile as sf
import torch
from helpers_audio import write_wav

from jasco.controls.chords.vocabulary import ChordVocabulary, frame_chords
from jasco.controls.melody.salience import N_MELODY_BINS, write_salience
from jasco.data.attributes import ConditioningAttributes
from jasco.data.audio_dataset import BadTrackError
from jasco.data.jasco_dataset import JascoDataset, JascoInfo
from jasco.data.manifest import build_manifest, load_manifest, save_manifest

SR = 16000


def _song(root: Path, name: str = "song", duration: float = 3.0) -> torch.Tensor:
    """A mix whose samples encode their index, and a drum stem = -0.5 * mix."""
    mix = (torch.arange(int(duration * SR), dtype=torch.float32) / (duration * SR))[None]
    write_wav(root / f"{name}.wav", mix, SR)
    write_wav(root / f"{name}.drums.wav", -0.5 * mix, SR)
    return mix


def _dataset(root: Path, **kwargs) -> JascoDataset:
    metas = build_manifest(root, workers=1, progress=False)
    base = {"segment_duration": 1.0, "sample_rate": SR, "num_samples": 6, "chords_vocabulary": "builtin"}
    base.update(kwargs)
    return JascoDataset(metas, **base)


def test_all_conditions_are_aligned(tmp_path: Path) -> None:
    mix = _song(tmp_path)
    progression = [[0.0, "C"], [1.0, "G:min"], [2.2, "A7"]]
    (tmp_path / "song.chords.json").write_text(json.dumps(progression))
    sal = torch.zeros(N_MELODY_BINS, 3 * 86)
    sal[10, :86] = 1.0  # bin 10 during the first second, bin 20 after
    sal[20, 86:] = 1.0
    write_salience(tmp_path / "song.salience.npz", sal, 86.0)
    ds = _dataset(tmp_path)
    vocab = ChordVocabulary.builtin()
    for i in range(len(ds)):
        wav, info = ds[i]
        assert isinstance(info, JascoInfo) and wav.shape == (1, SR)
        start = round(info.seek_time * SR)
        assert start % (SR // 50) == 0  # segments start on a latent frame boundary
        n = info.n_frames
        assert torch.allclose(wav[0, :n], mix[0, start:start + n])
        # The drum stem is the same segment of its own file, same length and rate as the mix.
        drums = info.drums
        assert drums.sample_rate == SR and drums.seek_time == info.seek_time
        assert drums.path.endswith("song.drums.wav") and drums.wav.shape == wav.shape
        assert torch.allclose(drums.wav, -0.5 * wav, atol=1e-7)
        expected = frame_chords(progression, vocab, 50, 50.0, offset_s=info.seek_time)
        assert torch.equal(info.frame_chords, expected)
        assert info.melody.shape == (N_MELODY_BINS, 50)
        times = info.seek_time + torch.arange(50) / 50
        voiced = times < 3.0 - 1 / 86
        first = (times < 0.98) & voiced
        later = (times > 1.02) & voiced
        assert torch.all(info.melody[10, first] == 1) and torch.all(info.melody[20, later] == 1)
        assert torch.all(info.melody[:, ~voiced] == 0)


def test_missing_side_files_give_null_conditions(tmp_path: Path) -> None:
    write_wav(tmp_path / "plain.wav", torch.zeros(1, 2 * SR), SR)
    (tmp_path / "plain.json").write_text(json.dumps({"description": "calm piano"}))
    _, info = _dataset(tmp_path)[0]
    assert info.frame_chords is None and info.melody is None and info.drums is None and info.latents is None
    attrs = info.to_condition_attributes()
    assert isinstance(attrs, ConditioningAttributes)
    assert attrs.text == {"description": "calm piano"}
    assert attrs.wav["self_wav"].is_null and attrs.wav["self_wav"].sample_rate == SR
    assert attrs.symbolic == {"chords": None, "melody": None}


def test_disabled_conditions_and_attributes(tmp_path: Path) -> None:
    _song(tmp_path)
    (tmp_path / "song.chords.json").write_text(json.dumps([[0.0, "C"]]))
    _, info = _dataset(tmp_path, chords_vocabulary=None, use_drums=False)[0]
    assert info.frame_chords is None and info.drums is None
    _, info = _dataset(tmp_path)[0]
    attrs = info.to_condition_attributes()
    assert attrs.wav["self_wav"] is info.drums and torch.equal(attrs.symbolic["chords"], info.frame_chords)


def test_latents_slice_follows_seek(tmp_path: Path) -> None:
    _song(tmp_path, duration=2.0)
    latents = np.tile(np.arange(100, dtype=np.float16)[:, None], (1, 128))  # row i holds i
    np.save(tmp_path / "song.latents.npy", latents)
    metas = build_manifest(tmp_path, workers=1, progress=False)
    metas[0].extra["latents_path"] = str(tmp_path / "song.latents.npy")
    manifest = save_manifest(tmp_path / "data.jsonl", metas, relative=True)
    assert json.loads(manifest.read_text())["latents_path"] == "song.latents.npy"
    ds = JascoDataset(load_manifest(manifest), segment_duration=1.0, sample_rate=SR, num_samples=8)
    for i in range(len(ds)):
        _, info = ds[i]
        first = round(info.seek_time * 50)
        assert info.latents.shape == (50, 128) and info.latents.dtype == torch.float32
        real = min(50, 100 - first)
        assert info.latents[:real, 0].tolist() == list(range(first, first + real))
        assert info.latents[real:].abs().sum() == 0


def test_explicit_side_paths_and_errors(tmp_path: Path) -> None:
    _song(tmp_path)
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "chords.json").write_text(json.dumps([[0.0, "D"]]))
    metas = build_manifest(tmp_path, workers=1, progress=False)
    metas[0].extra["chords_path"] = str(other / "chords.json")
    ds = JascoDataset(metas, segment_duration=1.0, sample_rate=SR, num_samples=2)
    assert set(ds[0][1].frame_chords.tolist()) == {ChordVocabulary.builtin().index("D")}
    metas[0].extra["salience_path"] = str(other / "missing.npz")
    with pytest.raises(BadTrackError, match=r"song\.wav: bad salience file .*missing\.npz.*salience_path"):
        JascoDataset(metas, segment_duration=1.0, sample_rate=SR, num_samples=2)[0]
    del metas[0].extra["salience_path"]
    np.save(other / "bad_latents.npy", np.zeros((150, 64), dtype=np.float32))
    metas[0].extra["latents_path"] = str(other / "bad_latents.npy")
    with pytest.raises(BadTrackError, match=r"song\.wav: bad latents file .*bad_latents\.npy.*128"):
        JascoDataset(metas, segment_duration=1.0, sample_rate=SR, num_samples=2)[0]


def test_collater_and_drums_resampled(tmp_path: Path) -> None:
    write_wav(tmp_path / "s.wav", torch.rand(2, 2 * SR) - 0.5, SR)
    write_wav(tmp_path / "s.drums.flac", torch.rand(1, 2 * 8000) * 0.1, 8000, subtype="PCM_16")
    ds = _dataset(tmp_path, num_samples=3, channels=1)
    batch, infos = ds.collater([ds[i] for i in range(3)])
    assert batch.shape == (3, 1, SR) and len(infos) == 3
    stem = torch.from_numpy(sf.read(tmp_path / "s.drums.flac", dtype="float32")[0])
    for info in infos:
        assert info.drums.wav.shape == (1, SR) and info.drums.sample_rate == SR
        assert info.drums.path.endswith("s.drums.flac")
        # The stem's own segment (8 kHz) resampled to the mix rate, zero-padded past the file's end.
        start = round(info.seek_time * 8000)
        expected = julius.resample_frac(stem[None, start:start + 8000], 8000, SR)
        n = expected.shape[-1]
        torch.testing.assert_close(info.drums.wav[:, :n], expected, atol=1e-6, rtol=0)
        assert not info.drums.wav[:, n:].any()


class _AudioOpenCounter:
    """Counts every audio open/decode (soundfile and PyAV), whatever reader in jasco.audio.io calls them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        targets = [(sf, "SoundFile"), (sf, "read"), (sf, "info")]
        try:
            import av
            targets.append((av, "open"))
        except ImportError:
            pass
        for module, name in targets:
            monkeypatch.setattr(module, name, self._counted(getattr(module, name), f"{module.__name__}.{name}"))

    def _counted(self, fn, label: str):
        def wrapper(*args, **kwargs):
            self.calls.append(f"{label}({args[0] if args else ''})")
            return fn(*args, **kwargs)
        return wrapper


def test_cached_items_decode_no_audio_and_match_the_codec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With latents + drum codes cached no audio file is opened, and the cache holds what the codec gives."""
    from helpers_prepare import copy_clips, settings

    from jasco.models.codec import EncodecCompressionModel
    from jasco.prepare.runner import prepare

    audio = copy_clips(tmp_path / "audio", names=("clip_00", "clip_01"), seconds=4.0)
    # 4 s windows without overlap: the window at 0 s is exactly the segment the codec encodes in the loop.
    prepare(audio, tmp_path / "out", settings(steps=["manifest", "drums", "latents"], latent_window=4.0,
                                              latent_overlap=0.0))
    cached_metas = load_manifest(tmp_path / "out" / "train")
    assert len(cached_metas) == 2
    plain_metas = load_manifest(tmp_path / "out" / "train")
    for meta in plain_metas:  # the same tracks with the caches left out: the codec-in-the-loop dataset
        del meta.extra["latents_path"], meta.extra["drum_codes_path"]
    kwargs = {"segment_duration": 4.0, "shuffle": False, "sample_rate": 32000, "channels": 1, "train": False}
    counter = _AudioOpenCounter(monkeypatch)
    cached = JascoDataset(cached_metas, **kwargs)
    assert not cached.read_audio
    cached_wav, cached_infos = cached.collater([cached[i] for i in range(2)])
    assert counter.calls == []
    assert cached_wav.shape == (2, 1, 0)
    plain = JascoDataset(plain_metas, **kwargs)
    wav, infos = plain.collater([plain[i] for i in range(2)])
    assert counter.calls, "the codec path must decode audio (else the counter proves nothing)"
    assert wav.shape == (2, 1, 4 * 32000)

    codec = EncodecCompressionModel.debug()
    for a, b, mix in zip(cached_infos, infos, wav):
        # One track at a time, as prepare encodes: in a batch of 2 the codec's float sums differ a little,
        # enough to flip a near-tie code (2 of 200 here), whichever path feeds it.
        with torch.no_grad():
            torch.testing.assert_close(a.latents, codec.encode_latents(mix[None])[0], atol=1e-4, rtol=0)
            assert torch.equal(a.drums.codes, codec.encode_codes(b.drums.wav[None])[0, 0])
        assert a.drums.wav is None and b.drums.codes is None and b.latents is None
        assert a.meta.path == b.meta.path and a.seek_time == b.seek_time and a.description == b.description
        assert torch.equal(a.frame_chords, b.frame_chords) and torch.equal(a.melody, b.melody)
