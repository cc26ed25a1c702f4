"""Scoring generated music against its conditions with the enabled metrics, one sample at a time.

`EvaluationSettings` says which metrics run and with what options (`evaluate.metrics.<name>` in the
solver's config, the options of `jasco-evaluate`); `SampleScorer` scores one piece `[C, N]` against
its `SampleConditions` (chords, drum stem, melody salience, text) with this package's metric
functions; `set_fad` adds the set-level FAD to an `EvaluationTable`. A metric that cannot run is
reported as unavailable with its reason, never as 0 (docs/EVALUATION.md).

Shapes: `C` channels, `N` samples, `K` melody bins (53), `T` frames.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from jasco.metrics.availability import MetricUnavailable
from jasco.metrics.chords import chord_metrics
from jasco.metrics.clap import clap_score
from jasco.metrics.embedding import AudioEmbedding
from jasco.metrics.embeddings import get_embedding
from jasco.metrics.fad import frechet_audio_distance
from jasco.metrics.melody import load_melody_extractor, melody_similarity
from jasco.metrics.onsets import onset_f1
from jasco.metrics.table import EvaluationTable, SampleConditions

FAD_EMBEDDINGS = ("mel", "vggish", "clap")  # evaluate.metrics.fad.embedding
# The options of each metric (`evaluate.metrics.<name>`, `use` switching it on).
METRIC_KEYS: dict[str, tuple[str, ...]] = {
    "chords": ("use", "backend"), "onsets": ("use", "window_s"), "melody": ("use", "weights"),
    "fad": ("use", "embedding", "weights"), "clap": ("use", "model"),
}


@dataclass(frozen=True)
class EvaluationSettings:
    """The `evaluate` section, read and checked.

    Attributes:
        path: folder of the samples and tables, relative to the experiment folder.
        drop_controls: also generate text-only samples (the model card's ablation rows).
        metrics: enabled metric -> its options (the section without `use`).
    """

    path: str
    drop_controls: bool
    metrics: dict[str, dict[str, Any]]

    @property
    def generates(self) -> bool:
        """Whether the stage generates samples (some metric is on)."""
        return bool(self.metrics)


class SampleScorer:
    """Scores samples against their conditions with the enabled metrics; models (the melody extractor) load once.

    Args:
        settings: the enabled metrics and their options.
    """

    def __init__(self, settings: EvaluationSettings) -> None:
        self.settings = settings
        self._extractor: Any = None
        self._extractor_error: MetricUnavailable | None = None
        melody = settings.metrics.get("melody")
        if melody is not None and melody["weights"] is not None:
            try:
                self._extractor = load_melody_extractor(melody["weights"])
            except MetricUnavailable as err:
                self._extractor_error = err

    def __call__(self, wav: torch.Tensor, sample_rate: int, conditions: SampleConditions
                 ) -> tuple[dict[str, float], dict[str, str]]:
        """Per-sample metrics of audio `[C, N]` against its conditions.

        Returns:
            (column -> value, metric -> reason it is unavailable). Conditions the sample lacks give no column.
        """
        metrics = self.settings.metrics
        values: dict[str, float] = {}
        unavailable: dict[str, str] = {}
        duration = wav.shape[-1] / sample_rate
        jobs = []
        if "chords" in metrics and conditions.chords is not None:
            jobs.append(("chords", lambda: {f"chords_{k}": v for k, v in chord_metrics(
                wav, sample_rate, conditions.chords, backend=metrics["chords"]["backend"], duration=duration).items()}))
        if "onsets" in metrics and (conditions.drums is not None or "onsets" in conditions.missing):
            jobs.append(("onsets", lambda: self._onsets(wav, sample_rate, conditions)))
        if "melody" in metrics and conditions.melody is not None:
            jobs.append(("melody", lambda: melody_similarity(wav, sample_rate, conditions.melody[0],
                                                             salience_fps=conditions.melody[1],
                                                             extractor=self._extractor)))
            if self._extractor_error is not None:
                unavailable[self._extractor_error.metric] = self._extractor_error.reason
        if "clap" in metrics and conditions.text:
            jobs.append(("clap", lambda: {"clap": clap_score([wav], sample_rate, [conditions.text],
                                                             **_clap_kwargs(metrics["clap"]))}))
        for metric, compute in jobs:
            try:
                values.update({key: float(value) for key, value in compute().items()})
            except MetricUnavailable as err:
                unavailable[metric] = err.reason
        return values, unavailable

    def _onsets(self, wav: torch.Tensor, sample_rate: int, conditions: SampleConditions) -> dict[str, float]:
        if conditions.drums is None:
            raise MetricUnavailable("onsets", conditions.missing["onsets"])
        drums, drums_rate = conditions.drums
        return onset_f1(wav, sample_rate, drums, drums_rate, window_s=self.settings.metrics["onsets"]["window_s"])


def _clap_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    return {} if options["model"] is None else {"model": options["model"]}


def fad_embedding(options: dict[str, Any]) -> AudioEmbedding:
    """The FAD embedding of `evaluate.metrics.fad` (`weights`: the VGGish weights, or the CLAP model).

    Raises:
        MetricUnavailable: the embedding's weights or model cannot be loaded.
        ValueError: `weights` given for the `mel` embedding, which has none.
    """
    name, weights = options["embedding"], options["weights"]
    if name == "mel":
        if weights is not None:
            raise ValueError(f"evaluate.metrics.fad.weights={weights!r}: the mel embedding has no weights; "
                             "leave it null or choose embedding vggish or clap")
        return get_embedding("mel")
    if name == "clap":
        return get_embedding("clap") if weights is None else get_embedding("clap", model=weights)
    return get_embedding(name, weights=weights)


def set_fad(table: EvaluationTable, generated: dict[str, Sequence[Path]], reference: Sequence[Path],
            options: dict[str, Any], cache_dir: Path) -> None:
    """FAD of each set of generated files (`controls` -> paths) against the reference files, into `table`.

    The reference statistics are cached in `cache_dir` (keyed by the embedding and the files). An
    embedding that cannot load, or sets too short to embed, make FAD unavailable with the reason.
    """
    try:
        embedding = fad_embedding(options)
    except MetricUnavailable as err:
        for controls in generated:
            table.set_unavailable.setdefault(controls, {})["fad"] = err.reason
        return
    for controls, paths in generated.items():
        try:
            value = frechet_audio_distance(list(reference), list(paths), embedding=embedding, cache_dir=cache_dir)
        except MetricUnavailable as err:
            table.set_unavailable.setdefault(controls, {})["fad"] = err.reason
        except ValueError as err:  # too few embedding vectors (clips too short)
            table.set_unavailable.setdefault(controls, {})["fad"] = " ".join(str(err).split())
        else:
            table.set_values.setdefault(controls, {})["fad"] = value
