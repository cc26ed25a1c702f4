"""The evaluate stage's metrics: generate for the evaluate split, score each sample against its own conditions.

`evaluation_settings` reads the `evaluate` config section (every key, unknown keys are errors) into
`jasco.metrics.EvaluationSettings`. `evaluate_generations` is the solver's part: it generates the
evaluate split with the configured sampler and guidance (`JascoSolver.sample_audio`, the same path as
the generate stage), optionally also text-only (`evaluate.drop_controls`), scores every sample with
`jasco.metrics.SampleScorer` against the conditions it was generated from (`conditions_of`), writes
the samples, `metrics.csv` and `summary.json` (`jasco.metrics.EvaluationTable`) to
`<xp>/<evaluate.path>/<epoch>/` and returns the means. The `jasco-evaluate` CLI does the same
scoring on folders of files (docs/EVALUATION.md).

A metric that cannot run (missing extra, model or weights) is `unavailable` with its reason: in
the CSV (cell `unavailable`, reason in the `unavailable` column), `summary.json` and the log, and NaN
in the stage's metrics (history, TensorBoard); never 0, never left out.

Shapes: `B` batch, `C` channels, `N` samples, `K` melody bins (53), `T` frames.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from jasco.audio.io import audio_write
from jasco.controls.chords.recognition import BACKENDS
from jasco.data.attributes import ConditioningAttributes
from jasco.data.jasco_dataset import JascoInfo
from jasco.metrics import (
    FAD_EMBEDDINGS,
    METRIC_KEYS,
    TEXT_ONLY,
    WITH_CONTROLS,
    EvaluationSettings,
    EvaluationTable,
    SampleConditions,
    SampleScorer,
    set_fad,
)
from jasco.solvers import distributed
from jasco.solvers.samples import chord_runs

logger = logging.getLogger(__name__)

# Config keys of `evaluate` and of each `evaluate.metrics.<name>` section (config/solver/default.yaml).
EVALUATE_KEYS = ("every", "path", "drop_controls", "metrics")


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
