"""Dora entry point: `dora run solver=jasco/debug`, `dora grid <grid>` (DORA_PACKAGE=jasco)."""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import flashy
import torch
from dora import hydra_main
from omegaconf import DictConfig

from jasco import environment

logger = logging.getLogger(__name__)


def get_solver(cfg: DictConfig) -> "flashy.BaseSolver":
    """The solver named by `cfg.solver` (a small registry)."""
    from jasco.solvers.jasco_solver import JascoSolver
    solvers = {"jasco": JascoSolver}
    if cfg.solver not in solvers:
        raise ValueError(f"solver={cfg.solver!r} is unknown; known: {sorted(solvers)}")
    return solvers[cfg.solver](cfg)


def describe(solver: "flashy.BaseSolver") -> str:
    """`show=true`: the model, parameter counts and the data pipeline."""
    model = solver.model
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    lines = [str(model), f"trainable parameters: {trainable / 1e6:.3f} M", f"frozen parameters: {frozen / 1e6:.3f} M"]
    for name, sub in model.condition_provider.conditioners.items():
        count = sum(p.numel() for p in sub.parameters() if p.requires_grad)
        lines.append(f"  conditioner {name}: {type(sub).__name__}, {count / 1e6:.3f} M trainable")
    for split, loader in solver.dataloaders.items():
        dataset = loader.dataset
        lines.append(f"data {split}: {type(dataset).__name__} {len(dataset.metas)} files, {len(dataset)} items, "
                     f"batch {loader.batch_size}, segment {dataset.segment_duration} s")
    return "\n".join(lines)


def init_seed_and_system(cfg: DictConfig) -> None:
    """Seeds, threads and the multiprocessing start method."""
    import random

    import numpy as np
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if cfg.dataset.num_workers > 0 and cfg.mp_start_method:
        torch.multiprocessing.set_start_method(cfg.mp_start_method, force=True)


@hydra_main(config_path="../config", config_name="config", version_base="1.1")
def main(cfg: DictConfig) -> None:
    """Train (or `show`, or `execute_only` one stage) the experiment described by `cfg`."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but no GPU is visible: pass device=cpu")
    init_seed_and_system(cfg)
    flashy.setup_logging(level=logging.getLevelName(str(cfg.logging.level).upper()), with_file_log=not cfg.show)
    flashy.distrib.init()
    solver = get_solver(cfg)
    if cfg.show:
        print(describe(solver))
        return
    solver.run()
    if flashy.distrib.is_rank_zero():
        folder = solver.folder
        print(f"\nExperiment folder: {folder}\n  checkpoint: {solver.checkpoint_path}\n"
              f"  samples: {folder / cfg.generate.path}\n  tensorboard: {folder / 'tensorboard'}\n"
              f"  history: {folder / 'history.json'}")


main.dora.dir = str(environment.dora_dir())


@contextmanager
def experiment(dora_dir: str | Path, overrides: list[str]) -> Iterator[Any]:
    """Enter the Dora experiment of `overrides` in this process (tests, benchmarks, notebooks).

    `with experiment(dir, ["solver=jasco/debug"]) as xp: solver = get_solver(xp.cfg)` builds the
    same solver, in the same folder `<dir>/xps/<SIG>`, as `dora run solver=jasco/debug` would.
    """
    os.environ["JASCO_DORA_DIR"] = str(dora_dir)
    main.dora.dir = Path(dora_dir)
    xp = main.get_xp(overrides)
    with xp.enter():
        yield xp
if environment.slurm_partitions().get("global"):
    main._base_cfg.slurm.partition = environment.slurm_partitions()["global"]  # type: ignore[attr-defined]

if __name__ == "__main__":
    main()
