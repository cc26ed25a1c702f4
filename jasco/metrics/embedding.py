"""The interface of an audio embedding model for FAD: `AudioEmbedding`.

An embedding turns a waveform into a sequence of vectors `[frames, D]`; FAD compares the Gaussian
statistics of those vectors over two sets of audio (`jasco.metrics.fad`).
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from jasco.metrics.waveform import Waveform, mono_at


class AudioEmbedding(ABC):
    """An audio embedding model: `embed(wav, sample_rate)` -> `[frames, D]` float32 on the CPU.

    Attributes:
        name: the registry name (`vggish`, `clap`, `mel`).
        sample_rate: the rate the model works at; inputs are mono-mixed and resampled to it.
    """

    name: str
    sample_rate: int

    @property
    def identity(self) -> str:
        """What the vectors depend on (name and weights), for cache keys of reference statistics."""
        return self.name

    def embed(self, wav: Waveform, sample_rate: int) -> torch.Tensor:
        """Embeddings `[frames, D]` of audio `[N]` / `[C, N]` at `sample_rate`."""
        with torch.no_grad():
            return self.embed_mono(mono_at(wav, sample_rate, self.sample_rate)).detach().float().cpu()

    @abstractmethod
    def embed_mono(self, wav: torch.Tensor) -> torch.Tensor:
        """Embeddings `[frames, D]` of mono audio `[N]` already at `self.sample_rate`."""
