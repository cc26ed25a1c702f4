"""Explorer showing the metrics of JASCO experiments in `dora grid` tables."""
from __future__ import annotations

import treetable as tt
from dora import Explorer


class JascoExplorer(Explorer):
    """Columns: train/valid loss per epoch and the evaluate loss."""

    def get_grid_metrics(self) -> list:
        return [
            tt.group("train", [tt.leaf("epoch"), tt.leaf("loss", ".4f")], align=">"),
            tt.group("valid", [tt.leaf("loss", ".4f")], align=">"),
            tt.group("evaluate", [tt.leaf("loss", ".4f")], align=">"),
        ]

    def process_history(self, history: list[dict]) -> dict:
        train, valid, evaluate = {"epoch": len(history)}, {}, {}
        for metrics in history:
            train.update(metrics.get("train", {}))
            valid.update(metrics.get("valid", {}))
            evaluate.update(metrics.get("evaluate", {}))
        return {"train": train, "valid": valid, "evaluate": evaluate}
