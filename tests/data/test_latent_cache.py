"""Latent cache: windowed encoding, codec identity, and loss parity with the codec in the loop."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from helpers_prepare import copy_clips, settings
from hydra import compose, initialize_config_dir

from jasco.audio.io import audio_read
from jasco.data.jasco_dataset import JascoDataset
from jasco.data.latents import LatentCacheError, codec_identity, latent_path, verify_latent_cache
from jasco.data.manifest import load_manifest
from jasco.environment import CONFIG_DIR
from jasco.models import flow
from jasco.models.builders import get_jasco_model
from jasco.models.codec import EncodecCompressionModel
from jasco.models.track_encoding import encode_windowed
from jasco.prepare.runner import prepare

SEGMENT = 4.0


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Two example clips with a whole-track cache (20 s windows) and a segment-aligned one (4 s, no overlap)."""
    root = tmp_path_factory.mktemp("prep")
    audio = copy_clips(root / "audio", names=("clip_00", "clip_01"))
    whole = root / "whole"
    aligned = root / "aligned"
    prepare(audio, whole, settings(steps=["manifest", "latents"]))
    prepare(audio, aligned, settings(steps=["manifest", "latents"], latent_window=SEGMENT, latent_overlap=0.0))
    return whole, aligned


def test_windowed_encoding_matches_whole_track():
    codec = EncodecCompressionModel.debug()
    wav = 0.3 * torch.randn(1, 1, 32000 * 5, generator=torch.Generator().manual_seed(0))
    whole = codec.encode_latents(wav)[0]
    windowed = encode_windowed(codec, wav, window_s=2.0, overlap_s=1.0)
    assert windowed.shape == whole.shape == (250, 128)
    torch.testing.assert_close(windowed, whole, atol=1e-4, rtol=0)
    # With no overlap each window restarts the encoder: the joins differ, proving the overlap matters.
    cut = encode_windowed(codec, wav, window_s=2.0, overlap_s=0.0)
    assert (cut[100:105] - whole[100:105]).abs().max() > 1e-3


def test_codec_identity_written_and_checked(prepared):
    whole, _ = prepared
    stored = json.loads((whole / "latents" / "codec.json").read_text())
    codec = EncodecCompressionModel.debug()
    assert stored == json.loads(json.dumps(codec_identity(codec)))
    assert verify_latent_cache(whole / "train", codec)["stored"] == "raw"
    with pytest.raises(LatentCacheError, match="another codec.*state_dict_sha256"):
        verify_latent_cache(whole / "train", EncodecCompressionModel.debug(seed=1))
    with pytest.raises(LatentCacheError, match="latent_std"):
        verify_latent_cache(whole / "train", EncodecCompressionModel.debug(latent_std=2.0))
    # The dataset folder itself (not only a manifest) finds latents/codec.json.
    with pytest.raises(LatentCacheError, match="another codec"):
        verify_latent_cache(whole, EncodecCompressionModel.debug(seed=2))


def test_latents_stored_raw_and_sharded(prepared):
    whole, _ = prepared
    metas = load_manifest(whole / "train")
    assert len(metas) == 2
    for meta in metas:
        track = meta.path.rsplit("/", 1)[-1][:-4]
        assert meta.get_path("latents_path") == str(latent_path(whole / "latents", track))
    codec = EncodecCompressionModel.debug()
    wav, _ = audio_read(metas[0].path)
    cached = torch.from_numpy(np.load(metas[0].get_path("latents_path")))
    assert cached.shape == (round(metas[0].duration * 50), 128)
    # RAW latents: interior frames equal the un-normalised encoder output of the whole track.
    torch.testing.assert_close(cached[20:250], codec.encode_latents(wav[None])[0, 20:250], atol=1e-4, rtol=0)


def _debug_model():
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.1"):
        cfg = compose("config", overrides=["solver=jasco/debug"])
    torch.manual_seed(0)
    model = get_jasco_model(cfg)
    model.eval()  # no layer dropout: the two losses must see the same network
    return model


def _losses(manifest_dir, shuffle: bool) -> tuple[float, float]:
    """Loss of one batch with z1 from the codec and from the cache, same seed for noise and times."""
    # read_audio=True: the audio is decoded although the cache replaces it, to compare both paths.
    dataset = JascoDataset(load_manifest(manifest_dir), segment_duration=SEGMENT, shuffle=shuffle, num_samples=4,
                           return_info=True, sample_rate=32000, channels=1, train=False, read_audio=True)
    wav, infos = dataset.collater([dataset[i] for i in range(2)])
    assert all(info.latents is not None for info in infos)
    model = _debug_model()
    codec = model.condition_provider.conditioners["self_wav"].compression_model
    losses = []
    for z1 in (codec.normalize(torch.stack([i.latents for i in infos])),  # what the solver does with a cache
               codec.encode(wav)):  # codec in the loop
        attributes = [dataclasses.replace(i, latents=None).to_condition_attributes() for i in infos]
        z0, t, z_t = flow.sample_training_point(z1, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            v = model(z_t, t, condition_tensors=model.condition_tensors(attributes))
        losses.append(flow.flow_matching_loss(v, z0, z1, t).item())
    return losses[0], losses[1]


def test_loss_parity_segment_aligned_cache(prepared):
    """Exact parity: each cached window is the very segment the codec encodes in the loop (seek 0)."""
    _, aligned = prepared
    cached, in_loop = _losses(aligned / "train", shuffle=False)
    assert abs(cached - in_loop) < 1e-4, (cached, in_loop)


def test_loss_close_whole_track_cache_random_seeks(prepared):
    """Whole-track cache at random seeks: the encoder's edges (LSTM warm-up, conv context) differ."""
    whole, _ = prepared
    cached, in_loop = _losses(whole / "train", shuffle=True)
    print(f"whole-track cache loss {cached:.6f} vs codec in loop {in_loop:.6f}")
    assert abs(cached - in_loop) < 1e-3, (cached, in_loop)
