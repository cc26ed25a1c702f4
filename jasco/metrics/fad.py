"""Fréchet audio distance (FAD) between two sets of audio, with cached reference statistics.

Each set is summarised by the mean `mu` and covariance `S` of its embedding vectors (all frames
of all clips, `jasco.metrics.embeddings`); the distance between the two Gaussians is

    FAD = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2)).

The trace of the matrix square root is computed as `tr((A^(1/2) S_b A^(1/2))^(1/2))` with
`A = S_a`: both square roots are of symmetric positive semi-definite matrices, taken by
eigendecomposition in float64 with negative rounding-noise eigenvalues clipped to 0, so the
result is real and a set against itself gives 0 up to rounding.

Reference statistics are cached (`reference_statistics`): the cache file's name hashes the
embedding's identity (name and weights) and each reference file's path, size and modification time,
so editing, adding or removing a file recomputes them.

Shapes: `D` embedding size, `n` vectors.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from jasco.audio.io import audio_read
from jasco.files import atomic_write
from jasco.metrics.embedding import AudioEmbedding
from jasco.metrics.embeddings import get_embedding
from jasco.metrics.waveform import Waveform

AudioItem = str | Path | tuple[Waveform, int] | Waveform


@dataclass
class EmbeddingStatistics:
    """Gaussian statistics of a set of embedding vectors.

    Attributes:
        mean: `[D]` float64.
        cov: `[D, D]` float64 (unbiased).
        count: number of vectors.
        embedding: identity of the embedding that made them (`AudioEmbedding.identity`).
    """

    mean: torch.Tensor
    cov: torch.Tensor
    count: int
    embedding: str = ""

    def save(self, path: str | Path) -> Path:
        """Write as `.npz` (atomically)."""
        path = Path(path)
        with atomic_write(path, "wb") as f:
            np.savez(f, mean=self.mean.numpy(), cov=self.cov.numpy(), count=np.int64(self.count),
                     embedding=np.str_(self.embedding))
        return path

    @classmethod
    def load(cls, path: str | Path) -> EmbeddingStatistics:
        """Read a file written by `save`."""
        with np.load(Path(path), allow_pickle=False) as data:
            return cls(torch.from_numpy(data["mean"]), torch.from_numpy(data["cov"]),
                       int(data["count"]), str(data["embedding"]))


def _resolve_embedding(embedding: str | AudioEmbedding) -> AudioEmbedding:
    return get_embedding(embedding) if isinstance(embedding, str) else embedding


def _load_item(item: AudioItem, sample_rate: int | None, index: int) -> tuple[Waveform, int]:
    """`(wav, sample_rate)` of a path, a `(wav, sample_rate)` pair or a bare waveform."""
    if isinstance(item, (str, Path)):
        return audio_read(item)
    if isinstance(item, tuple):
        return item
    if sample_rate is None:
        raise ValueError(f"Item {index} is a bare waveform: pass sample_rate=, or give "
                         "(wav, sample_rate) pairs or file paths.")
    return item, sample_rate


def embedding_statistics(wavs_or_paths: Sequence[AudioItem], embedding: str | AudioEmbedding,
                         sample_rate: int | None = None) -> EmbeddingStatistics:
    """Statistics of the embedding vectors of every clip (paths, `(wav, sr)` pairs, or
    waveforms `[N]` / `[C, N]` at `sample_rate`).

    Raises:
        ValueError: fewer than 2 vectors in all (clips shorter than one embedding window).
    """
    embedding = _resolve_embedding(embedding)
    total, outer, count = None, None, 0
    for i, item in enumerate(wavs_or_paths):
        wav, rate = _load_item(item, sample_rate, i)
        vectors = embedding.embed(wav, rate).double()  # [n, D]
        if vectors.shape[0] == 0:
            continue
        total = vectors.sum(0) if total is None else total + vectors.sum(0)
        outer = vectors.T @ vectors if outer is None else outer + vectors.T @ vectors
        count += vectors.shape[0]
    if count < 2:
        raise ValueError(f"FAD needs at least 2 embedding vectors, the {len(wavs_or_paths)} clips "
                         f"gave {count} (the {embedding.name} embedding needs clips of about 1 s "
                         "or more).")
    mean = total / count
    cov = (outer - count * torch.outer(mean, mean)) / (count - 1)
    return EmbeddingStatistics(mean, (cov + cov.T) / 2, count, embedding.identity)


def reference_statistics(paths: Sequence[str | Path], embedding: str | AudioEmbedding,
                         cache_dir: str | Path | None = None) -> EmbeddingStatistics:
    """Statistics of reference files, read from / written to `cache_dir` when given (the file
    `fad_<embedding name>_<hash>.npz`; the hash covers the embedding identity and each file's
    path, size and modification time)."""
    embedding = _resolve_embedding(embedding)
    if cache_dir is None:
        return embedding_statistics(paths, embedding)
    files = []
    for path in paths:
        path = Path(path).resolve()
        stat = path.stat()  # raises FileNotFoundError naming a missing reference file
        files.append([str(path), stat.st_size, stat.st_mtime_ns])
    key = hashlib.sha256(json.dumps([embedding.identity, files]).encode()).hexdigest()[:20]
    cached = Path(cache_dir) / f"fad_{embedding.name}_{key}.npz"
    if cached.is_file():
        return EmbeddingStatistics.load(cached)
    statistics = embedding_statistics(paths, embedding)
    cached.parent.mkdir(parents=True, exist_ok=True)
    statistics.save(cached)
    return statistics


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative noise clipped)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(values.clip(min=0))) @ vectors.T


def frechet_distance(a: EmbeddingStatistics, b: EmbeddingStatistics) -> float:
    """Fréchet distance between two Gaussians (module docstring); >= 0."""
    if a.mean.shape != b.mean.shape:
        raise ValueError(f"Statistics of different embeddings: sizes {tuple(a.mean.shape)} and "
                         f"{tuple(b.mean.shape)} ({a.embedding!r}, {b.embedding!r}).")
    mu_a, mu_b = a.mean.double().numpy(), b.mean.double().numpy()
    cov_a, cov_b = a.cov.double().numpy(), b.cov.double().numpy()
    root_a = _sqrt_psd(cov_a)
    middle = np.linalg.eigvalsh((root_a @ cov_b @ root_a + (root_a @ cov_b @ root_a).T) / 2)
    trace_sqrt = np.sqrt(middle.clip(min=0)).sum()
    distance = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt)
    if not math.isfinite(distance):
        raise ValueError("FAD is not finite: the embeddings hold NaN or infinite values.")
    return max(distance, 0.0)


def frechet_audio_distance(reference: Sequence[AudioItem] | EmbeddingStatistics,
                           generated: Sequence[AudioItem] | EmbeddingStatistics,
                           embedding: str | AudioEmbedding = "mel",
                           cache_dir: str | Path | None = None,
                           sample_rate: int | None = None) -> float:
    """FAD between a reference set and a generated set.

    Args:
        reference: clips (paths, `(wav, sr)` pairs, or waveforms at `sample_rate`) or their statistics;
            statistics of reference paths are cached in `cache_dir` when given.
        generated: the same, for the generated clips.
        embedding: an embedding name (`mel`; `vggish` and `clap` need kwargs: build them with
            `get_embedding`) or a built `AudioEmbedding`.
        cache_dir: folder of cached reference statistics (None: no cache).
        sample_rate: the rate of bare waveforms in either list.

    Raises:
        ValueError: statistics from another embedding, or too few vectors.
        MetricUnavailable: the embedding cannot be built (weights or model missing).
    """
    needs_embedding = not (isinstance(reference, EmbeddingStatistics)
                           and isinstance(generated, EmbeddingStatistics))
    model = _resolve_embedding(embedding) if needs_embedding else None
    stats = []
    for items, is_reference in ((reference, True), (generated, False)):
        if isinstance(items, EmbeddingStatistics):
            stats.append(items)
        elif is_reference and cache_dir is not None and all(isinstance(x, (str, Path)) for x in items):
            stats.append(reference_statistics(items, model, cache_dir))
        else:
            stats.append(embedding_statistics(items, model, sample_rate))
    identity = model.identity if model is not None else stats[0].embedding
    for which, s in zip(("reference", "generated"), stats):
        if s.embedding and identity and s.embedding != identity:
            raise ValueError(f"The {which} statistics come from embedding {s.embedding!r}, not "
                             f"{identity!r}: FAD compares only statistics of one embedding.")
    return frechet_distance(*stats)
