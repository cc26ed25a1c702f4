"""Tests for jasco.metrics.log_mel and jasco.metrics.vggish (random weights in torchvggish's layout)."""
from __future__ import annotations

import pytest
import torch
from helpers_audio import sine

from jasco.metrics import (
    MetricUnavailable,
    VGGishEmbedding,
    VGGishNetwork,
    embedding_statistics,
    frechet_audio_distance,
    get_embedding,
)
from jasco.metrics.log_mel import examples, log_mel, mel_matrix
from jasco.metrics.waveform import mono_at

TORCHVGGISH_KEYS = {f"features.{i}.{p}" for i in (0, 3, 6, 8, 11, 13) for p in ("weight", "bias")} | {
    f"embeddings.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    """Randomly initialised VGGish saved as a torchvggish state_dict (with its PCA entries)."""
    torch.manual_seed(0)
    state = VGGishNetwork().state_dict()
    state["pproc._pca_matrix"], state["pproc._pca_means"] = torch.eye(128), torch.zeros(128, 1)
    path = tmp_path_factory.mktemp("vggish") / "vggish_random.pth"
    torch.save(state, path)
    return str(path)


def test_log_mel_front_end() -> None:
    weights = mel_matrix(257)
    assert weights.shape == (257, 64) and weights[0].sum() == 0  # DC feeds no band
    features = log_mel(sine(1.0, 16000, 1000.0)[0])
    assert features.shape == (98, 64)  # 1 + (16000 - 400) // 160 frames
    centre_hz = 700 * (torch.exp(torch.linspace(1127 * torch.log1p(torch.tensor(125 / 700)),
                                                1127 * torch.log1p(torch.tensor(7500 / 700)), 66) / 1127) - 1)
    peak_band = int(features.mean(0).argmax())
    assert abs(centre_hz[peak_band + 1] - 1000.0) < 60.0  # the band centred nearest 1 kHz
    assert examples(features).shape == (1, 96, 64)
    assert log_mel(torch.zeros(100)).shape == (0, 64)


def test_network_layout_and_shapes() -> None:
    network = VGGishNetwork()
    assert set(network.state_dict()) == TORCHVGGISH_KEYS
    assert network.embeddings[0].in_features == 12288 and network.embeddings[4].out_features == 128
    assert network(torch.randn(2, 1, 96, 64)).shape == (2, 128)


def test_embedding_with_random_weights(weights: str) -> None:
    embedding = get_embedding("vggish", weights=weights)
    assert isinstance(embedding, VGGishEmbedding) and embedding.identity == f"vggish:{weights}"
    wav = sine(3.0, 32000, 440.0)  # resampled to 16 kHz: 3 non-overlapping 0.96 s examples
    vectors = embedding.embed(wav, 32000)
    assert vectors.shape == (3, 128) and (vectors >= 0).all()  # ReLU after the last layer
    resampled = mono_at(wav, 32000, 16000)
    with torch.no_grad():
        by_hand = embedding.network(examples(log_mel(resampled))[:, None])
    torch.testing.assert_close(vectors, by_hand)
    # One 0.96 s example per clip keeps the full-size network's CPU time short.
    noise = [0.3 * torch.randn(16000, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    tones = embedding_statistics([sine(1.0, 16000, f)[0] for f in (200.0, 300.0, 400.0)], embedding,
                                 sample_rate=16000)
    assert tones.count == 3 and tones.embedding == embedding.identity
    assert frechet_audio_distance(tones, tones, embedding) == pytest.approx(0, abs=1e-6)
    assert frechet_audio_distance(tones, noise, embedding, sample_rate=16000) > 0


def test_missing_or_wrong_weights(tmp_path) -> None:
    with pytest.raises(MetricUnavailable, match="evaluate.metrics.fad.weights") as info:
        get_embedding("vggish")
    assert info.value.metric == "fad"
    with pytest.raises(MetricUnavailable, match="do not exist"):
        get_embedding("vggish", weights=tmp_path / "none.pth")
    torch.save({"features.0.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a torchvggish state_dict"):
        get_embedding("vggish", weights=tmp_path / "bad.pth")
