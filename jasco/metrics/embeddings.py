"""The audio embeddings FAD can use, by name: `get_embedding("vggish" | "clap" | "mel", **kwargs)`."""
from __future__ import annotations

from typing import Any

from jasco.metrics.clap import ClapEmbedding
from jasco.metrics.embedding import AudioEmbedding
from jasco.metrics.mel_embedding import MelEmbedding
from jasco.metrics.vggish import VGGishEmbedding

EMBEDDINGS: dict[str, type[AudioEmbedding]] = {
    "vggish": VGGishEmbedding,  # kwargs: weights (path or URL, required), device, batch_size
    "clap": ClapEmbedding,  # kwargs: model (hub id or folder), device
    "mel": MelEmbedding,  # no kwargs: fixed features, for tests and debugging
}


def get_embedding(name: str, **kwargs: Any) -> AudioEmbedding:
    """The embedding `name` built with `kwargs` (see `EMBEDDINGS`).

    Raises:
        ValueError: unknown name.
        MetricUnavailable: its weights or model cannot be loaded.
    """
    if name not in EMBEDDINGS:
        raise ValueError(f"Unknown FAD embedding {name!r}; choose one of {sorted(EMBEDDINGS)}.")
    return EMBEDDINGS[name](**kwargs)
