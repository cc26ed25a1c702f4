"""Explorer showing the metrics of JASCO experiments in `dora grid` tables."""
from __future__ import annotations

import treetable as tt
from dora import Explorer


class JascoExplorer(Explorer):
    """One row per experiment (after Dora's index, name, state, signature and job id):

    - train: epochs done, then the last epoch's loss, learning rate (its mean over the epoch) and
      samples/s (all GPUs together);
    - valid: the last epoch's loss and the best (lowest) so far, the one the best state keeps;
    - evaluate: the loss of the best state at the last evaluation (mean over t = 0.1 … 0.9).

    Empty cells: not logged yet (a pending job, an epoch in progress, no evaluation yet).
    """

    def get_grid_metrics(self) -> list:
        return [
            # Widths at least the header's: Dora shortens a header to its column's width.
            tt.group("train", [tt.leaf("epoch", "5d"), tt.leaf("loss", ".4f"), tt.leaf("lr", ".2e"),
                               tt.leaf("samples_per_s", "9.1f", display="samples/s")], align=">"),
            tt.group("valid", [tt.leaf("loss", ".4f"), tt.leaf("best", ".4f")], align=">"),
            tt.group("evaluate", [tt.leaf("loss", "8.4f")], align=">"),
        ]

    def process_history(self, history: list[dict]) -> dict:
        train, valid, evaluate = {"epoch": len(history)}, {}, {}
        for metrics in history:
            train.update(metrics.get("train", {}))
            valid.update(metrics.get("valid", {}))
            evaluate.update(metrics.get("evaluate", {}))
        losses = [metrics["valid"]["loss"] for metrics in history if "loss" in metrics.get("valid", {})]
        if losses:
            valid["best"] = min(losses)
        return {"train": train, "valid": valid, "evaluate": evaluate}
