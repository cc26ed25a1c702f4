"""Evaluation metrics: does generated audio follow its controls, and how good does it sound.

Each metric is a function usable on its own (definitions in docs/EVALUATION.md):
`chord_metrics`, `onset_f1`, `melody_similarity` / `melody_salience_accuracy`,
`frechet_audio_distance` (embeddings `vggish`, `clap`, `mel`) and `clap_score`. A metric whose
extra, model or weights are missing raises `MetricUnavailable` (never returns 0).
"""
from jasco.metrics.availability import MetricUnavailable
from jasco.metrics.chords import chord_metrics, compare_progressions, harte_label
from jasco.metrics.clap import ClapEmbedding, clap_score
from jasco.metrics.embedding import AudioEmbedding
from jasco.metrics.embeddings import EMBEDDINGS, get_embedding
from jasco.metrics.fad import (
    EmbeddingStatistics,
    embedding_statistics,
    frechet_audio_distance,
    frechet_distance,
    reference_statistics,
)
from jasco.metrics.mel_embedding import MelEmbedding
from jasco.metrics.melody import (
    chroma_similarity,
    load_melody_extractor,
    melody_salience_accuracy,
    melody_similarity,
)
from jasco.metrics.onsets import onset_f1
from jasco.metrics.scoring import (
    FAD_EMBEDDINGS,
    METRIC_KEYS,
    EvaluationSettings,
    SampleScorer,
    set_fad,
)
from jasco.metrics.table import (
    TEXT_ONLY,
    WITH_CONTROLS,
    EvaluationTable,
    SampleConditions,
    metric_of,
)
from jasco.metrics.vggish import VGGishEmbedding, VGGishNetwork, load_vggish

__all__ = [
    "EMBEDDINGS",
    "FAD_EMBEDDINGS",
    "METRIC_KEYS",
    "TEXT_ONLY",
    "WITH_CONTROLS",
    "EvaluationSettings",
    "EvaluationTable",
    "SampleConditions",
    "SampleScorer",
    "metric_of",
    "set_fad",
    "AudioEmbedding",
    "ClapEmbedding",
    "EmbeddingStatistics",
    "MelEmbedding",
    "MetricUnavailable",
    "VGGishEmbedding",
    "VGGishNetwork",
    "chord_metrics",
    "chroma_similarity",
    "clap_score",
    "compare_progressions",
    "embedding_statistics",
    "frechet_audio_distance",
    "frechet_distance",
    "get_embedding",
    "harte_label",
    "load_melody_extractor",
    "load_vggish",
    "melody_salience_accuracy",
    "melody_similarity",
    "onset_f1",
    "reference_statistics",
]
