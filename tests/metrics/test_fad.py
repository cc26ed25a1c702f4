"""Tests for jasco.metrics.fad and the `mel` embedding: Fréchet distance, statistics and the cache."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
from helpers_audio import sine, write_wav

from jasco.metrics import (
    EmbeddingStatistics,
    MelEmbedding,
    embedding_statistics,
    frechet_audio_distance,
    frechet_distance,
    get_embedding,
    reference_statistics,
)

SR = 16000


def tones(freqs: list[float], seconds: float = 2.0) -> list[torch.Tensor]:
    return [sine(seconds, SR, f)[0] + 0.01 * torch.randn(int(seconds * SR)) for f in freqs]


def stats(mean: list[float], cov: np.ndarray) -> EmbeddingStatistics:
    return EmbeddingStatistics(torch.tensor(mean, dtype=torch.float64),
                               torch.as_tensor(cov, dtype=torch.float64), 10, "test")


def test_frechet_distance_known_values() -> None:
    # Diagonal covariances: |mu_a - mu_b|^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
    a, b = stats([0.0, 1.0], np.diag([4.0, 1.0])), stats([3.0, 1.0], np.diag([1.0, 9.0]))
    assert frechet_distance(a, b) == pytest.approx(9.0 + 1.0 + 4.0)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-12)
    # A general case against scipy's sqrtm; a singular covariance stays finite and real.
    scipy_linalg = pytest.importorskip("scipy.linalg")
    g = np.random.default_rng(0)
    x, y = g.normal(size=(6, 6)), g.normal(size=(6, 3))
    cov_a, cov_b = x @ x.T, y @ y.T  # cov_b has rank 3
    expected = np.trace(cov_a + cov_b - 2 * scipy_linalg.sqrtm(cov_a @ cov_b).real)
    got = frechet_distance(stats([0.0] * 6, cov_a), stats([0.0] * 6, cov_b))
    assert got == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="different embeddings"):
        frechet_distance(a, stats([0.0] * 6, cov_a))


def test_mel_embedding_is_deterministic_and_windowed() -> None:
    embedding = get_embedding("mel")
    assert isinstance(embedding, MelEmbedding) and embedding.sample_rate == SR
    wav = tones([440.0])[0]
    vectors = embedding.embed(wav, SR)
    assert vectors.shape == (3, 128)  # 2 s: windows of 0.96 s every 0.48 s
    assert torch.equal(vectors, embedding.embed(torch.stack([wav, wav]).numpy(), SR))
    assert embedding.embed(torch.zeros(SR // 2), SR).shape == (0, 128)
    with pytest.raises(ValueError, match="Unknown FAD embedding 'nope'"):
        get_embedding("nope")


def test_fad_of_a_set_with_itself_and_with_another() -> None:
    torch.manual_seed(0)
    low, high = tones([220.0, 247.0, 262.0, 294.0]), tones([1760.0, 1975.0, 2093.0, 2349.0])
    assert frechet_audio_distance(low, low, "mel", sample_rate=SR) == pytest.approx(0.0, abs=1e-6)
    near = frechet_audio_distance(low, tones([233.0, 277.0, 311.0, 330.0]), "mel", sample_rate=SR)
    far = frechet_audio_distance(low, high, "mel", sample_rate=SR)
    assert 0 < near < far
    # (wav, rate) pairs at another rate, and statistics instead of clips.
    pairs = [(sine(2.0, 32000, 220.0), 32000)] * 3
    reference = embedding_statistics(low, "mel", sample_rate=SR)
    assert frechet_audio_distance(reference, pairs) == pytest.approx(
        frechet_audio_distance(low, pairs, sample_rate=SR))
    with pytest.raises(ValueError, match="sample_rate="):
        frechet_audio_distance(low, high)
    with pytest.raises(ValueError, match="at least 2 embedding vectors"):
        embedding_statistics([torch.zeros(SR // 2)], "mel", sample_rate=SR)


def test_statistics_roundtrip_and_reference_cache(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = [write_wav(tmp_path / f"ref{i}.wav", w[None], SR)
             for i, w in enumerate(tones([220.0, 330.0, 440.0]))]
    first = reference_statistics(paths, "mel", cache_dir=tmp_path / "cache")
    cached = list((tmp_path / "cache").glob("fad_mel_*.npz"))
    assert len(cached) == 1
    loaded = EmbeddingStatistics.load(cached[0])
    assert torch.equal(loaded.mean, first.mean) and torch.equal(loaded.cov, first.cov)
    assert loaded.count == first.count == 9 and loaded.embedding == "mel"
    # A second call reads the cache (embedding never runs); touching a file invalidates it.
    monkeypatch.setattr(MelEmbedding, "embed_mono", lambda self, wav: sys.exit("recomputed"))
    assert torch.equal(reference_statistics(paths, "mel", tmp_path / "cache").mean, first.mean)
    os.utime(paths[0], ns=(1, 1))
    with pytest.raises(SystemExit, match="recomputed"):
        reference_statistics(paths, "mel", tmp_path / "cache")
    monkeypatch.undo()
    other = EmbeddingStatistics(first.mean, first.cov, first.count, "vggish:/w.pth")
    with pytest.raises(ValueError, match="come from embedding 'vggish:/w.pth'"):
        frechet_audio_distance(other, paths, "mel")
    assert frechet_audio_distance(paths, paths, "mel", cache_dir=tmp_path / "cache") == pytest.approx(0.0, abs=1e-6)
