"""The table of an evaluation: one row per scored sample, set-level metrics (FAD), means, CSV and JSON.

Rows carry `controls` (`with_controls`, or `text_only` for the ablation), `sample`, `source`,
`seek_time`, the metric columns and the reasons of unavailable metrics: a cell is a number,
`unavailable` (the metric could not run: the reason is in the row) or empty (the sample lacks that
condition). Means leave NaN out and give NaN for a metric that produced no number at all.
"""
from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

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
