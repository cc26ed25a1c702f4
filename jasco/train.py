"""Dora entry point: `dora run solver=jasco/debug`, `dora grid <grid>` (DORA_PACKAGE=jasco), or
`jasco-dora run ...` / `jasco-dora grid ...`, which needs no DORA_PACKAGE."""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import flashy
import torch
from dora.conf import DoraConfig, SlurmConfig
from dora.hydra import HydraMain
from hydra.errors import Hydra14MigrationWarning
from omegaconf import DictConfig

from jasco import environment
from jasco.solvers import distributed

logger = logging.getLogger(__name__)


def ensure_example_data(cfg: DictConfig) -> None:
    """Build the synthesised example dataset on first use, when a `datasource.*` path lies in its
    folder (`environment.example_dataset_dir()`, what `dset=audio/example` names) and it is missing."""
    example = environment.example_dataset_dir()
    if any(path and environment.resolve_dataset_path(path).is_relative_to(example)
           for path in cfg.datasource.values()):
        from jasco.data.example_dataset import ensure_example_dataset, is_complete
        if not is_complete(example):
            logger.info("Building the example dataset in %s (first use)", example)
        ensure_example_dataset(example)


def get_solver(cfg: DictConfig) -> "flashy.BaseSolver":
    """The solver named by `cfg.solver` (a small registry)."""
    from jasco.solvers.jasco_solver import JascoSolver
    solvers = {"jasco": JascoSolver}
    if cfg.solver not in solvers:
        raise ValueError(f"solver={cfg.solver!r} is unknown; known: {sorted(solvers)}")
    ensure_example_data(cfg)
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
                     f"batch {loader.batch_size or solver.batch_size}, segment {dataset.segment_duration} s")
    lines.append(f"global batch {solver.cfg.dataset.batch_size} = micro-batches of up to {solver.batch_size} x "
                 f"{solver.accumulation} accumulation steps x {distributed.world_size()} process(es)")
    return "\n".join(lines)


def init_seed_and_system(cfg: DictConfig) -> None:
    """Seeds, threads and the multiprocessing start method."""
    import random

    import numpy as np
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    threads = environment.resolve_num_threads(cfg.num_threads)  # auto: the CPUs this process may use
    if threads:
        torch.set_num_threads(threads)
    start_method = cfg.mp_start_method  # checked even without workers: a typo shows on the first run
    if start_method and start_method not in torch.multiprocessing.get_all_start_methods():
        raise ValueError(f"mp_start_method={start_method!r}: choose one of "
                         f"{torch.multiprocessing.get_all_start_methods()} (or null)")
    if cfg.dataset.num_workers > 0 and start_method:
        torch.multiprocessing.set_start_method(start_method, force=True)


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class PlainFormatter(logging.Formatter):
    """flashy's log line layout for files: no colours, and ANSI codes in messages (flashy's bold
    stage summaries) removed."""

    def __init__(self) -> None:
        super().__init__("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s", datefmt="%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        return _ANSI_ESCAPE.sub("", super().format(record))


def setup_logging(level: str, with_file_log: bool = True) -> None:
    """flashy's logging: coloured lines on stderr and, with `with_file_log`, the XP folder's
    `solver.log.0` in plain text (flashy gives its file handler the coloured formatter too).

    With several processes, rank 0 logs for all: the others write no file and print warnings and
    errors only.
    """
    rank = distributed.launch_rank()
    level = str(level).upper() if rank == 0 else "WARNING"
    flashy.setup_logging(level=logging.getLevelName(level), with_file_log=with_file_log and rank == 0)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.setFormatter(PlainFormatter())


@contextmanager
def hydra_migration_warnings_hidden() -> Iterator[None]:
    """Within the block, hide the two warnings Hydra prints because of `version_base="1.1"`.

    Dora's HydraMain initialises Hydra several times per command (building the main, each
    `get_xp`, the run itself) with the `version_base` it was given, and each time Hydra warns that
    1.1 compatibility goes away in Hydra 1.4; the run then warns that Hydra will stop changing the
    working directory. jasco keeps 1.1 on purpose (the run's working directory is its XP folder),
    so these say nothing to act on. Only those two messages are hidden, and only inside the block
    (`warnings.catch_warnings` restores the filters): importing jasco changes no warning filter.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r'\s*version_base="1\.1" selects Hydra 1\.1 compatibility',
                                category=Hydra14MigrationWarning)
        warnings.filterwarnings("ignore", message=r"\s*Future Hydra versions will no longer change working directory",
                                category=UserWarning)
        yield


class JascoMain(HydraMain):
    """Dora's Hydra main, with the machine-dependent settings taken from `jasco.environment`.

    config/config.yaml only holds placeholders for the experiment root (`dora.dir: outputs`) and
    the SLURM partition (`slurm.partition: null`): the real values come from `$JASCO_DORA_DIR` and
    the team config. They are supplied through the two hooks Dora reads them from, `_get_dora`
    (when the main is built) and `get_slurm_config` (each `dora grid`/`dora launch`), so that nothing
    writes into Dora's objects (`_base_cfg`, `dora`) or any other library global after the fact.

    The three places where Dora initialises Hydra (building the main, `get_xp`, `_main`) run
    inside `hydra_migration_warnings_hidden`.
    """

    def __init__(self, main: Callable[..., Any], config_name: str, config_path: str, **kwargs: Any) -> None:
        with hydra_migration_warnings_hidden():
            super().__init__(main, config_name=config_name, config_path=config_path, **kwargs)

    def get_xp(self, argv: Any) -> Any:
        with hydra_migration_warnings_hidden():
            return super().get_xp(argv)

    def _main(self) -> Any:
        with hydra_migration_warnings_hidden():
            return super()._main()

    def init_xp(self, xp: Any) -> None:
        """Dora writes the XP's `.argv.json` here; with several processes only rank 0 writes it."""
        if distributed.launch_rank() > 0:
            xp.folder.mkdir(exist_ok=True, parents=True)
            return
        super().init_xp(xp)

    def _get_dora(self) -> DoraConfig:
        dora = super()._get_dora()
        dora.dir = environment.dora_dir()
        return dora

    def get_slurm_config(self) -> SlurmConfig:
        slurm = super().get_slurm_config()
        partition = environment.slurm_partitions().get("global")
        if partition:
            slurm.partition = partition
        for key, value in environment.slurm_job_settings().items():
            if key == "setup":  # the team's lines first, then the experiment's own
                slurm.setup = [*value, *[line for line in slurm.setup if line not in value]]
            elif not getattr(slurm, key):  # an experiment's own slurm.<key> wins
                setattr(slurm, key, value)
        return slurm


def jasco_main(config_path: str, config_name: str, **kwargs: Any) -> Callable[[Callable[..., Any]], JascoMain]:
    """`dora.hydra_main`, building a `JascoMain`."""
    def decorator(function: Callable[..., Any]) -> JascoMain:
        return JascoMain(function, config_name=config_name, config_path=config_path, **kwargs)
    return decorator


@jasco_main(config_path=str(environment.CONFIG_DIR), config_name="config", version_base="1.1")
def main(cfg: DictConfig) -> None:
    """Train (or `show`, or `execute_only` one stage) the experiment described by `cfg`."""
    device = environment.resolve_device(cfg.device)  # a bad or missing device fails before anything starts
    init_seed_and_system(cfg)
    setup_logging(cfg.logging.level, with_file_log=not cfg.show)
    distributed.init(device)  # several processes (dora run -d, torchrun, SLURM): nccl on CUDA, gloo on CPU
    from contextlib import nullcontext

    from jasco.solvers.interrupts import StopSignals, TrainingInterrupted
    from jasco.solvers.run_lock import ExperimentLocked
    # Training: a stop signal (Ctrl-C, SIGTERM, SLURM's SIGUSR1) that comes while the solver is
    # built is kept for its first update boundary (docs/SCALING.md, "Preemption").
    with StopSignals() if not cfg.show and not cfg.execute_only else nullcontext():
        solver = get_solver(cfg)
        if cfg.show:
            print(describe(solver))
            return
        try:
            solver.run()
        except ExperimentLocked as error:  # one line, no traceback: nothing went wrong in this run
            logger.error("%s", error)
            raise SystemExit(error.exit_code) from None
        except TrainingInterrupted as stop:  # checkpoint saved and logged: exit as the signal would have
            raise SystemExit(stop.exit_code) from None
    rank_zero = flashy.distrib.is_rank_zero()
    distributed.shutdown()  # every rank finished: leave the process group together
    if not rank_zero:
        # Other ranks have nothing left to write. Their interpreter teardown has been seen to abort
        # in torch's C++ destructors ("terminate called without an active exception", exit -6),
        # which launchers report as a failed run: end the process here instead.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    if rank_zero:
        folder = solver.folder
        print(f"\nExperiment folder: {folder}\n  checkpoint: {solver.checkpoint_path}\n"
              f"  samples: {folder / cfg.generate.path}\n  evaluation: {folder / cfg.evaluate.path} (metrics.csv, "
              f"summary.json)\n  tensorboard: {folder / 'tensorboard'}\n  history: {folder / 'history.json'}")


@contextmanager
def experiment(dora_dir: str | Path, overrides: list[str]) -> Iterator[Any]:
    """Enter the Dora experiment of `overrides` in this process (tests, benchmarks, notebooks).

    `with experiment(dir, ["solver=jasco/debug"]) as xp: solver = get_solver(xp.cfg)` builds the
    same solver, in the same folder `<dir>/xps/<SIG>`, as `dora run solver=jasco/debug` would.

    For its duration `$JASCO_DORA_DIR` is `dora_dir` (what `jasco.environment.dora_dir()` and so
    `continue_from=//sig/...` read) and `main.dora` a copy pointing at `dora_dir`. Both are restored
    on exit, also when the body raises; the XP keeps its copy, so `xp.folder` stays valid afterwards.
    """
    saved_env = os.environ.get("JASCO_DORA_DIR")
    saved_dora = main.dora
    try:
        os.environ["JASCO_DORA_DIR"] = str(dora_dir)
        main.dora = dataclasses.replace(saved_dora, dir=Path(dora_dir))
        xp = main.get_xp(overrides)
        with xp.enter():
            yield xp
    finally:
        main.dora = saved_dora
        if saved_env is None:
            os.environ.pop("JASCO_DORA_DIR", None)
        else:
            os.environ["JASCO_DORA_DIR"] = saved_env


def dora_cli() -> None:
    """`jasco-dora`: Dora's command line with the package set to jasco (`jasco-dora run solver=jasco/debug`,
    `jasco-dora grid debug`), so that an installed jasco runs from any folder without DORA_PACKAGE."""
    os.environ.setdefault("DORA_PACKAGE", "jasco")  # inherited by the processes Dora starts (-d, SLURM)
    from dora.__main__ import main as dora_main
    dora_main()


if __name__ == "__main__":
    main()
