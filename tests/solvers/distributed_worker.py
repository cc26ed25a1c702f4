"""Worker of tests/solvers/test_distributed_training.py: train in-process, save what each process ends with.

    torchrun --standalone --nproc_per_node 2 tests/solvers/distributed_worker.py DORA_DIR OUT OVERRIDE...
    python tests/solvers/distributed_worker.py DORA_DIR OUT OVERRIDE...     # one process

Runs `solver.run()` in the Dora experiment of the overrides (as `dora run` would, in DORA_DIR) and
writes `OUT/rank<r>.th`: `losses` (the loss of every update over the whole global batch),
`grad_norms` (of every update's gradient, before clipping), `model`, `ema`, `best_state` and `history` (whole tensors,
gathered under FSDP). With `RESUME_FROM=checkpoint.th` in the environment, that checkpoint is copied into the
experiment's folder first (when it has none): the run resumes from it. Needs `tests/` on PYTHONPATH.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import torch


def main() -> None:
    dora_dir, out, *overrides = sys.argv[1:]
    from helpers_training import experiment

    from jasco.environment import resolve_device
    from jasco.solvers import distributed
    from jasco.train import get_solver, init_seed_and_system
    with experiment(dora_dir, overrides) as xp:
        if os.environ.get("RESUME_FROM") and not (xp.folder / "checkpoint.th").exists():
            xp.folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(os.environ["RESUME_FROM"], xp.folder / "checkpoint.th")
        init_seed_and_system(xp.cfg)
        distributed.init(resolve_device(xp.cfg.device))
        solver = get_solver(xp.cfg)
        losses: list[float] = []
        grad_norms: list[float] = []
        items: list[int] = []
        train_update = solver.train_update

        def recorded(batches: list, positions: list, global_batch: int | None = None) -> dict[str, float]:
            metrics = train_update(batches, positions, global_batch)
            losses.append(float(metrics["loss"]))  # this process's mean over its items of the update
            items.append(sum(len(where) for where in positions))
            grad_norms.append(float(metrics["grad_norm"]))  # of the averaged gradient: the same on every process
            return metrics

        solver.train_update = recorded
        solver.run()
        # A process has the same items count in every update: weighted by it, the means are the global batch's.
        losses = list(distributed.average_metrics({f"{i:04d}": v for i, v in enumerate(losses)}, items[0]).values())
        # Whole tensors (FSDP: gathered from the shards; collective).
        state = {"losses": losses, "grad_norms": grad_norms, "model": distributed.full_tensors(solver.model.state_dict()),
                 "ema": solver.ema.full_state_dict(),
                 "best_state": {k: distributed.full_tensors(v) for k, v in solver.best_state.items()},
                 "history": solver.history, "world": distributed.world_size()}
        torch.save(state, Path(out) / f"rank{distributed.rank()}.th")


if __name__ == "__main__":
    main()
