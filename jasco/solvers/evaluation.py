"""The evaluate stage's metrics: generate for the evaluate split, score each sample against its own conditions.

`evaluation_settings` reads the `evaluate` config section (every key, unknown keys are errors).
`SampleScorer` scores one generated piece against its `SampleConditions` (chords, drum stem,
melody, text) with `jasco.metrics`; `EvaluationTable` collects the per-sample rows, writes `metrics.csv` and
`summary.json` and gives the means. `evaluate_generations` is the solver's part: it generates the
evaluate split with the configured sampler and guidance (`JascoSolver.sample_audio`, the same path as the
generate stage), optionally also text-only (`evaluate.drop_controls`), writes the samples to
`<xp>/<evaluate.path>/<epoch>/` and returns the means. The `jasco-evaluate` CLI reuses the scoring
and the table on folders of files (docs/EVALUATION.md).

A metric that cannot run (missing extra, model or weights) is `unavailable` with its reason: in
the CSV (cell `unavailable`, reason in the `unavailable` column), `summary.json` and the log, and NaN
in the stage's metrics (history, TensorBoard); never 0, never left out.

Shapes: `B` batch, `C` channels, `N` samples, `K` melody bins (53), `T` frames.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from jasco.audio.io import audio_write
from jasco.controls.chords.recognition import BACKENDS
from jasco.data.attributes import ConditioningAttributes
from jasco.data.jasco_dataset import JascoInfo
from jasco.metrics import (
    AudioEmbedding,
    MetricUnavailable,
    chord_metrics,
    clap_score,
    frechet_audio_distance,
    get_embedding,
    load_melody_extractor,
    melody_similarity,
    onset_f1,
)
from jasco.solvers import distributed
from jasco.solvers.samples import chord_runs

logger = logging.getLogger(__name__)

# Config keys of `evaluate` and of each `evaluate.metrics.<name>` section (config/solver/default.yaml).
EVALUATE_KEYS = ("every", "path", "drop_controls", "metrics")
METRIC_KEYS: dict[str, tuple[str, ...]] = {
    "chords": ("use", "backend"), "onsets": ("use", "window_s"), "melody": ("use", "weights"),
    "fad": ("use", "embedding", "weights"), "clap": ("use", "model"),
}
FAD_EMBEDDINGS = ("mel", "vggish", "clap")
UNAVAILABLE = "unavailable"  # the CSV cell of a metric that could not run
WITH_CONTROLS, TEXT_ONLY = "with_controls", "text_only"  # the `controls` column; history keys of TEXT_ONLY rows get its prefix
# The metric each column belongs to (its `MetricUnavailable.metric`), and the column standing for a
# metric in the means (history, explorer) when it gave no number at all.
COLUMN_METRIC = {"chords_iou": "chords", "chords_majmin_accuracy": "chords", "chords_exact_accuracy": "chords",
                 "onset_f1": "onsets", "onset_precision": "onsets", "onset_recall": "onsets", "beat_f1": "onsets",
                 "tempo_agreement": "onsets", "chroma_similarity": "melody", "salience_accuracy": "melody_salience",
                 "fad": "fad", "clap": "clap"}
PRIMARY_COLUMN = {"chords": "chords_iou", "onsets": "onset_f1", "melody": "chroma_similarity",
                  "melody_salience": "salience_accuracy", "fad": "fad", "clap": "clap"}


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


def evaluation_settings(section: DictConfig) -> EvaluationSettings:
    """Read every key of the `evaluate` config section.

    Raises:
        ValueError: an unknown key, or a value out of range (one line naming `evaluate.<key>`).
        TypeError: a metric given as a value instead of a section.
    """
    _check_keys(section, EVALUATE_KEYS, "evaluate")
    _check_keys(section.metrics, tuple(METRIC_KEYS), "evaluate.metrics")
    enabled: dict[str, dict[str, Any]] = {}
    for name, keys in METRIC_KEYS.items():
        options = section.metrics.get(name)
        if options is None:
            raise ValueError(f"evaluate.metrics.{name} is missing: give a section with {list(keys)}")
        _check_keys(options, keys, f"evaluate.metrics.{name}")
        values = {key: options[key] for key in keys}  # every key read, used or not
        if values.pop("use"):
            enabled[name] = values
    if "chords" in enabled and enabled["chords"]["backend"] not in BACKENDS:
        raise ValueError(f"evaluate.metrics.chords.backend={enabled['chords']['backend']!r}: choose one of {BACKENDS}")
    if "onsets" in enabled and not enabled["onsets"]["window_s"] > 0:
        raise ValueError(f"evaluate.metrics.onsets.window_s={enabled['onsets']['window_s']!r}: give seconds > 0")
    if "fad" in enabled and enabled["fad"]["embedding"] not in FAD_EMBEDDINGS:
        raise ValueError(f"evaluate.metrics.fad.embedding={enabled['fad']['embedding']!r}: choose one of "
                         f"{FAD_EMBEDDINGS}")
    return EvaluationSettings(path=str(section.path), drop_controls=bool(section.drop_controls), metrics=enabled)


def _check_keys(section: Any, known: Sequence[str], where: str) -> None:
    if not isinstance(section, (DictConfig, dict)):
        raise TypeError(f"{where}={section!r}: give a section with keys {list(known)}")
    unknown = sorted(set(section) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {list(known)}")


# ---------------------------------------------------------------- one sample
@dataclass
class SampleConditions:
    """What one sample is scored against; None: the sample has no such condition (its cells stay empty).

    Attributes:
        name: the sample's name (file stem), the CSV's `sample` column.
        text: the text description (CLAP).
        chords: the chord condition `[(start_s, label), ...]`.
        drums: the drum stem `[C, N]` and its sample rate.
        melody: the melody salience `[K, T]` and its frames per second.
        missing: condition -> why it cannot be scored although the sample has it (e.g. drums given as codes).
    """

    name: str
    text: str | None = None
    chords: list[tuple[float, str]] | None = None
    drums: tuple[torch.Tensor, int] | None = None
    melody: tuple[torch.Tensor, float] | None = None
    missing: dict[str, str] = field(default_factory=dict)


def conditions_of(info: JascoInfo, name: str, frame_rate: float, chord_labels: list[str] | None) -> SampleConditions:
    """The conditions a dataset item was generated from (chord indices back to labels)."""
    out = SampleConditions(name=name, text=info.description)
    if info.frame_chords is not None and chord_labels is not None:
        runs = chord_runs(info.frame_chords, frame_rate, chord_labels) or []
        out.chords = [(start, label if isinstance(label, str) else "X") for start, label in runs]
    if info.melody is not None:
        out.melody = (info.melody, float(frame_rate))
    if info.drums is not None:
        if info.drums.wav is not None:
            out.drums = (info.drums.wav, info.drums.sample_rate)
        else:
            out.missing["onsets"] = (f"the drum condition of {info.meta.path} is cached codes ({info.drums.path}), "
                                     "not audio; evaluate a split whose manifest gives drum stems")
    return out


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


# ---------------------------------------------------------------- the table
@dataclass
class EvaluationTable:
    """Per-sample rows (`controls`, `sample`, `source`, `seek_time`, metric columns, `unavailable`) and set metrics."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    set_values: dict[str, dict[str, float]] = field(default_factory=dict)  # controls -> metric -> value
    set_unavailable: dict[str, dict[str, str]] = field(default_factory=dict)  # controls -> metric -> reason

    def add(self, controls: str, conditions: SampleConditions, values: dict[str, float],
            unavailable: dict[str, str], source: str = "", seek_time: float = 0.0) -> None:
        """One scored sample."""
        self.rows.append({"controls": controls, "sample": conditions.name, "source": source,
                          "seek_time": seek_time, "values": values, "unavailable": unavailable})

    def extend(self, rows: Iterable[dict[str, Any]]) -> None:
        """Rows of another table (another process's)."""
        self.rows.extend(rows)

    def columns(self) -> list[str]:
        """Metric columns in the order met."""
        return list(dict.fromkeys(key for row in self.rows for key in row["values"]))

    def unavailable(self, controls: str) -> dict[str, str]:
        """metric -> reason, of every metric unavailable in some row (or as a set metric) of `controls`."""
        out: dict[str, str] = {}
        for row in self.rows:
            if row["controls"] == controls:
                for metric, reason in row["unavailable"].items():
                    out.setdefault(metric, reason)
        out.update(self.set_unavailable.get(controls, {}))
        return out

    def means(self, controls: str) -> dict[str, float]:
        """Mean of each metric column over the rows of `controls` (NaN cells left out), set metrics, and
        NaN for each unavailable metric that gave no number at all."""
        rows = [row for row in self.rows if row["controls"] == controls]
        out: dict[str, float] = {}
        for column in self.columns():
            numbers = [row["values"][column] for row in rows
                       if column in row["values"] and not math.isnan(row["values"][column])]
            out[column] = sum(numbers) / len(numbers) if numbers else math.nan
        out.update(self.set_values.get(controls, {}))
        for metric in self.unavailable(controls):
            if not any(metric_of(key) == metric for key in out):
                out[PRIMARY_COLUMN.get(metric, metric)] = math.nan
        return out

    def write(self, folder: Path) -> tuple[Path, Path]:
        """`metrics.csv` (one row per sample) and `summary.json` (means, counts, unavailable reasons) in `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        columns = self.columns()
        csv_path = folder / "metrics.csv"
        with csv_path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["controls", "sample", "source", "seek_time", *columns, "unavailable"])
            for row in self.rows:
                cells = [_cell(row, column) for column in columns]
                reasons = "; ".join(f"{metric}: {reason}" for metric, reason in row["unavailable"].items())
                writer.writerow([row["controls"], row["sample"], row["source"], f"{row['seek_time']:.3f}",
                                 *cells, reasons])
        summary = {}
        for controls in dict.fromkeys(row["controls"] for row in self.rows):
            summary[controls] = {
                "samples": sum(row["controls"] == controls for row in self.rows),
                "means": {k: None if math.isnan(v) else v for k, v in self.means(controls).items()},
                "unavailable": self.unavailable(controls)}
        summary_path = folder / "summary.json"
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
        return csv_path, summary_path


def _cell(row: dict[str, Any], column: str) -> str:
    if column in row["values"]:
        return f"{row['values'][column]:.6g}"
    metric = metric_of(column)
    return UNAVAILABLE if metric in row["unavailable"] else ""


def metric_of(column: str) -> str:
    """The metric (`chords`, `onsets`, `melody`, `melody_salience`, `fad`, `clap`) a column belongs to."""
    if column in COLUMN_METRIC:
        return COLUMN_METRIC[column]
    return "chords" if column.startswith("chords_") else column


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


# ---------------------------------------------------------------- the solver's part
def text_only(attributes: ConditioningAttributes) -> ConditioningAttributes:
    """A copy keeping only the text: chords, drums and melody null (the model card's "text only" rows)."""
    out = attributes.copy()
    for name in list(out.wav):
        out.nullify("wav", name)
    for name in list(out.symbolic):
        out.nullify("symbolic", name)
    return out


def write_sample(path: Path, wav: torch.Tensor, sample_rate: int) -> Path:
    """The raw samples of `[C, N]` as 32-bit float wav (no normalisation: the file is what was scored)."""
    return audio_write(path, wav, sample_rate, normalize=False, subtype="FLOAT", log_clipping=False)


def evaluate_generations(solver: Any, loader: Any, settings: EvaluationSettings) -> dict[str, float]:
    """Generate the evaluate split (with controls, and text-only with `drop_controls`), score every sample.

    Samples go to `<xp>/<settings.path>/<epoch>/<index>_<track>.wav` (text-only ones to its
    `text_only/`), with `metrics.csv` and `summary.json` beside them (written by rank 0). FAD's
    reference set is the whole audio files of the tracks evaluated; their statistics are cached in
    `<xp>/<settings.path>/reference_statistics/`. Returns the means on rank 0 (text-only ones
    prefixed `text_only_`), `{}` on the other processes.

    Collective when distributed: every process generates and scores its shard, rank 0 gathers the rows.
    """
    out_dir = solver.folder / settings.path / str(solver.epoch)
    sample_rate = solver.compression_model.sample_rate
    labels = None if solver.vocabulary is None else solver.vocabulary.labels
    variants = [WITH_CONTROLS, TEXT_ONLY] if settings.drop_controls else [WITH_CONTROLS]
    scorer = SampleScorer(settings)
    table = EvaluationTable()
    written: dict[str, list[Path]] = {controls: [] for controls in variants}
    seen = 0
    begin = time.time()
    for _, infos in loader:
        indices = [loader.sampler.global_index(seen + i) for i in range(len(infos))]
        seen += len(infos)
        attributes = [info.to_condition_attributes() for info in infos]
        keys = [(solver.cfg.seed, "evaluate_generate", i) for i in indices]  # one noise for both variants
        n_samples = max(info.total_frames for info in infos)
        for controls in variants:
            attrs = attributes if controls == WITH_CONTROLS else [text_only(a) for a in attributes]
            audio = solver.sample_audio(attrs, n_samples, keys)
            folder = out_dir if controls == WITH_CONTROLS else out_dir / TEXT_ONLY
            for sample, index, info in zip(audio, indices, infos):
                name = f"{index:03d}_{Path(info.meta.path).stem}"
                sample = sample[..., :info.n_frames]  # the real part of the segment
                written[controls].append(write_sample(folder / f"{name}.wav", sample, sample_rate))
                conditions = conditions_of(info, name, solver.compression_model.frame_rate, labels)
                values, unavailable = scorer(sample, sample_rate, conditions)
                table.add(controls, conditions, values, unavailable, source=info.meta.path, seek_time=info.seek_time)
        solver.step_done()
    gathered = distributed.gather_to_rank_zero((table.rows, written))
    if gathered is None:
        return {}
    table = EvaluationTable()
    for rows, _ in gathered:
        table.extend(rows)
    table.rows.sort(key=lambda row: (variants.index(row["controls"]), row["sample"]))
    if "fad" in settings.metrics:
        reference = sorted({Path(row["source"]) for row in table.rows})
        samples = {controls: sorted(p for _, part in gathered for p in part[controls]) for controls in variants}
        set_fad(table, samples, reference, settings.metrics["fad"],
                solver.folder / settings.path / "reference_statistics")
    csv_path, _ = table.write(out_dir)
    metrics: dict[str, float] = {}
    for controls in variants:
        for metric, reason in table.unavailable(controls).items():
            logger.warning("evaluate: metric %s is unavailable (%s samples): %s", metric, controls, reason)
        prefix = "" if controls == WITH_CONTROLS else f"{TEXT_ONLY}_"
        metrics.update({prefix + key: value for key, value in table.means(controls).items()})
    logger.info("Evaluated %d samples in %.1f s: %s", len(table.rows), time.time() - begin, csv_path)
    return metrics
