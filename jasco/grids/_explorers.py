"""Explorer showing the metrics of JASCO experiments in `dora grid` tables."""
from __future__ import annotations

import math

import treetable as tt
from dora import Explorer

# Evaluate-stage metric means shown (history key -> column header), docs/EVALUATION.md.
EVALUATION_COLUMNS = {"chords_iou": "chord_iou", "onset_f1": "onset_f1", "chroma_similarity": "melody",
                      "fad": "fad", "clap": "clap"}
TEXT_ONLY_PREFIX = "text_only_"  # the `evaluate.drop_controls` ablation's keys


class JascoExplorer(Explorer):
    """One row per experiment (after Dora's index, name, state, signature and job id):

    - train: epochs done, then the last epoch's loss, learning rate (its mean over the epoch) and
      samples/s (all GPUs together);
    - valid: the last epoch's loss and the best (lowest) so far, the one the best state keeps;
    - evaluate: the loss of the best state at the last evaluation (mean over t = 0.1 … 0.9), and the
      means of its metrics: chord IOU, onset F1, melody (chroma similarity), FAD, CLAP;
    - text only: the same metrics of the samples generated without controls (`evaluate.drop_controls`).

    Empty cells: not logged yet (a pending job, an epoch in progress, no evaluation yet, a metric
    switched off); `n/a`: logged as NaN, i.e. unavailable (its reason is in the log and in
    `evaluate/<epoch>/summary.json`) or with nothing to compare.
    """

    def get_grid_metrics(self) -> list:
        return [
            # Widths at least the header's: Dora shortens a header to its column's width.
            tt.group("train", [tt.leaf("epoch", "5d"), tt.leaf("loss", ".4f"), tt.leaf("lr", ".2e"),
                               tt.leaf("samples_per_s", "9.1f", display="samples/s")], align=">"),
            tt.group("valid", [tt.leaf("loss", ".4f"), tt.leaf("best", ".4f")], align=">"),
            tt.group("evaluate", [tt.leaf("loss", "8.4f"), *self._metric_leaves()], align=">"),
            tt.group("text only", self._metric_leaves(), align=">"),
        ]

    @staticmethod
    def _metric_leaves() -> list:
        # Cells are text (`format_metric`): a number or n/a.
        return [tt.leaf(key, f">{max(len(header), 6)}", display=header) for key, header in EVALUATION_COLUMNS.items()]

    def process_history(self, history: list[dict]) -> dict:
        train, valid, evaluate = {"epoch": len(history)}, {}, {}
        for metrics in history:
            train.update(metrics.get("train", {}))
            valid.update(metrics.get("valid", {}))
            evaluate.update(metrics.get("evaluate", {}))
        losses = [metrics["valid"]["loss"] for metrics in history if "loss" in metrics.get("valid", {})]
        if losses:
            valid["best"] = min(losses)
        text_only = {key[len(TEXT_ONLY_PREFIX):]: value for key, value in evaluate.items()
                     if key.startswith(TEXT_ONLY_PREFIX)}
        for group in (evaluate, text_only):
            group.update({key: format_metric(group[key]) for key in EVALUATION_COLUMNS if key in group})
        return {"train": train, "valid": valid, "evaluate": evaluate, "text only": text_only}


def format_metric(value: float | None) -> str:
    """A metric mean as a table cell: 4 significant digits, `n/a` for NaN (unavailable)."""
    return "n/a" if value is None or math.isnan(value) else f"{value:.4g}"
