"""Drum stems: lookup of existing stems, chunked separation, and cached drum codes vs the conditioner."""
from __future__ import annotations

import sys

import pytest
import torch
from helpers_prepare import copy_clips, settings

from jasco.controls.drums.stems import find_drum_stem, separate_chunked, separate_drums
from jasco.data.jasco_dataset import JascoDataset
from jasco.data.manifest import load_manifest
from jasco.models.codec import EncodecCompressionModel
from jasco.modules.conditioners.drums import DrumsConditioner
from jasco.prepare.runner import prepare


def test_find_drum_stem_order(tmp_path):
    audio = tmp_path / "song.wav"
    audio.touch()
    assert find_drum_stem(audio) is None
    (tmp_path / "drums").mkdir()
    (tmp_path / "drums" / "song.flac").touch()
    assert find_drum_stem(audio) == tmp_path / "drums" / "song.flac"
    (tmp_path / "song.drums.flac").touch()
    assert find_drum_stem(audio) == tmp_path / "song.drums.flac"
    (tmp_path / "song.drums.wav").touch()
    assert find_drum_stem(audio) == tmp_path / "song.drums.wav"


def test_chunked_separation_crossfades_exactly():
    mix = torch.randn(2, 2, 1000, generator=torch.Generator().manual_seed(0))
    calls = []

    def half(x):  # a linear "separator": cross-fading chunks must reproduce it exactly
        calls.append(x.shape[-1])
        return 0.5 * x

    out = separate_chunked(mix, half, chunk=300, overlap=50)
    torch.testing.assert_close(out, 0.5 * mix)
    assert max(calls) <= 300 and len(calls) == 4


def test_separate_drums_shapes_and_rates():
    wav = torch.randn(1, 16000, generator=torch.Generator().manual_seed(1))
    out = separate_drums(wav, 16000, model=lambda x: x, chunk_s=0.3, overlap_s=0.05)
    assert out.shape == wav.shape
    torch.testing.assert_close(out, wav, atol=1e-5, rtol=0)
    batched = separate_drums(wav[None].repeat(2, 1, 1), 16000, model=lambda x: 0 * x)
    assert batched.shape == (2, 1, 16000) and batched.abs().max() == 0


def test_missing_demucs_names_the_extra(monkeypatch):
    # Demucs made unimportable, whether or not it is installed here.
    monkeypatch.setitem(sys.modules, "demucs", None)
    monkeypatch.setitem(sys.modules, "demucs.pretrained", None)
    with pytest.raises(ImportError, match=r"jasco\[drums\]"):
        separate_drums(torch.zeros(1, 100), 32000)


def test_cached_drum_codes_equal_conditioner_codes(tmp_path):
    """Codes read from the cache equal what the conditioner computes from the segment's stem.

    The encoder is not time-invariant at the edges of what it encodes, so exact equality holds when
    the cache was encoded in windows equal to the segments (seek 0, 4 s windows, no overlap); for a
    whole-track cache at arbitrary seeks the interior frames agree.
    """
    audio = copy_clips(tmp_path / "audio", names=("clip_00",), seconds=8.0)
    codec = EncodecCompressionModel.debug()
    conditioner = DrumsConditioner(2, codec, segment_duration=4.0)
    for window, overlap, shuffle in ((4.0, 0.0, False), (20.0, 4.0, True)):
        out = tmp_path / f"out_{window}"
        prepare(audio, out, settings(steps=["manifest", "drums"], latent_window=window, latent_overlap=overlap))
        metas = load_manifest(out / "train")
        assert metas[0].get_path("drums_path").endswith("clip_00.drums.wav")  # a pointer to the existing stem
        kwargs = dict(segment_duration=4.0, shuffle=shuffle, num_samples=3, return_info=True, train=False)
        cached = JascoDataset(metas, **kwargs)
        metas_audio = [m for m in load_manifest(out / "train")]
        for m in metas_audio:
            del m.extra["drum_codes_path"]
        live = JascoDataset(metas_audio, **kwargs)
        for i in range(len(cached)):
            (_, a), (_, b) = cached[i], live[i]
            assert a.seek_time == b.seek_time and a.drums.wav is None and b.drums.codes is None
            codes = conditioner.drum_codes(conditioner.tokenize([b.drums]))[0]
            assert a.drums.codes.shape == codes.shape == (200,)
            if not shuffle:
                assert torch.equal(a.drums.codes, codes)
            else:
                agree = (a.drums.codes[25:-5] == codes[25:-5]).float().mean()
                assert agree > 0.9, agree
