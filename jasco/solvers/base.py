"""StandardSolver: the stage loop, checkpoints, best state, EMA and logging shared by solvers.

A task solver supplies `build_model`, `build_dataloaders`, `run_step`, and the `evaluate` /
`generate` stages; everything about epochs, resuming and files lives here.
"""
from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import flashy
import torch
from omegaconf import DictConfig, OmegaConf

from jasco.environment import resolve_device
from jasco.solvers.checkpoint import (
    epoch_checkpoint_path,
    flush_stale_checkpoints,
    load_checkpoint,
    remove_stale_temp_files,
    save_checkpoint,
)
from jasco.solvers.ema import ModuleDictEMA

logger = logging.getLogger(__name__)

# Keys of features that are not built yet (each has its own open issue): the value that leaves the
# feature off, which is what happens today, and the feature's name. Any other value stops the run.
NOT_SUPPORTED_YET: dict[str, tuple[Any, str]] = {
    "fsdp.use": (False, "FSDP sharded training"),
    "logging.log_wandb": (False, "Weights & Biases logging"),
    "deadlock.use": (False, "deadlock detection"),
    "evaluate.metrics": ({}, "evaluation metrics (FAD, KLD, text consistency, chroma)"),
}


def check_not_supported(cfg: DictConfig) -> None:
    """Refuse a config that turns on a feature of `NOT_SUPPORTED_YET` (one line naming the key)."""
    for key, (off, feature) in NOT_SUPPORTED_YET.items():
        value = OmegaConf.select(cfg, key)
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        if value is not None and value != off:
            raise NotImplementedError(f"{key}={value!r}: {feature} is not supported yet; leave {key}={off!r}")


class StandardSolver(flashy.BaseSolver):
    """Epoch loop over stages `train`, `valid`, `evaluate`, `generate` with resumable checkpoints.

    Checkpoint (`checkpoint.th`, docs/MODEL.md, "Training checkpoint"): `history`, `xp.cfg`
    (YAML string), `xp.sig`, `best_state` (`{'model': state_dict}`), `model`, `optimizer`,
    `lr_scheduler`, optional `scaler`, `ema` (`{'state': {'model': ...}, 'count': n}`).
    """

    def __init__(self, cfg: DictConfig):
        super().__init__()
        check_not_supported(cfg)
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.model: torch.nn.Module
        self.optimizer: torch.optim.Optimizer | None = None
        self.lr_scheduler: Any = None
        self.scaler: torch.amp.GradScaler | None = None
        self.ema: ModuleDictEMA | None = None
        self.best_state: dict[str, Any] = {}
        self.dataloaders: dict[str, Any] = {}
        self._tensorboard: Any = None
        self._stage_epoch: int | None = None  # set by execute_only: the epoch of the checkpoint it runs from
        self.build_model()
        self.build_dataloaders()
        self.register_stateful("model", "optimizer", "lr_scheduler", "best_state")
        if self.ema is not None:
            self.register_stateful("ema")
        if self.scaler is not None:
            self.register_stateful("scaler")
        if cfg.logging.log_tensorboard and flashy.distrib.is_rank_zero():
            self.init_tensorboard(**cfg.tensorboard)
            self._tensorboard = self.result_logger._experiment_loggers.get("tensorboard")

    # ------------------------------------------------------------------ to implement
    def build_model(self) -> None:
        """Create `self.model`, `self.optimizer`, `self.lr_scheduler`, `self.ema`, `self.scaler`."""
        raise NotImplementedError

    def build_dataloaders(self) -> None:
        """Fill `self.dataloaders` (`train`, `valid`, `evaluate`, `generate`)."""
        raise NotImplementedError

    def train(self) -> dict[str, float]:
        """Train stage."""
        raise NotImplementedError

    def valid(self) -> dict[str, float]:
        """Validation stage (runs with EMA weights when EMA is enabled)."""
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        """Evaluate stage (on the best state)."""
        raise NotImplementedError

    def generate(self) -> dict[str, float]:
        """Generate stage (on the best state)."""
        raise NotImplementedError

    @property
    def epoch(self) -> int:
        """The epoch being run (1-based): the next one when training, the checkpoint's own in `execute_only`."""
        return self._stage_epoch if self._stage_epoch is not None else len(self.history) + 1

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        # YAML string so that `torch.load(weights_only=True)` reads checkpoints.
        state["xp.cfg"] = OmegaConf.to_yaml(self.cfg, resolve=True)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = {k: v for k, v in state.items() if k in self.stateful.sources}
        super().load_state_dict(state)

    def commit(self, save_checkpoint_: bool = True) -> None:
        """Append this epoch's metrics to the history and write the checkpoint(s) atomically.

        `checkpoint.th` (which holds the history) is written first, `history.json` second: a job
        killed in between leaves history.json one epoch behind, never ahead of the checkpoint, and
        the next run rewrites it from the checkpoint (`run`).
        """
        self.history.append(self._pending_metrics)
        self._start_epoch()
        if not flashy.distrib.is_rank_zero():
            return
        if not save_checkpoint_:
            self.xp.link.update_history(self.history)
            return
        state = self.state_dict()
        save_checkpoint(state, self.checkpoint_path)
        self.xp.link.update_history(self.history)
        ckpt = self.cfg.checkpoint
        epoch = len(self.history)
        if ckpt.save_every and epoch % ckpt.save_every == 0:
            save_checkpoint(state, epoch_checkpoint_path(self.folder, epoch))
            flush_stale_checkpoints(self.folder, ckpt.keep_last)

    def restore(self) -> bool:
        """Resume from this experiment's own checkpoint, if any."""
        if not self.checkpoint_path.exists():
            return False
        self.load_state_dict(load_checkpoint(self.checkpoint_path))
        logger.info("Resumed from %s at epoch %d", self.checkpoint_path, self.epoch)
        return True

    def update_best_state(self, metrics: dict[str, float], key: str = "loss") -> bool:
        """Keep the weights just validated when their `key` metric is the lowest so far."""
        previous = [h["valid"][key] for h in self.history if "valid" in h and key in h["valid"]]
        if previous and metrics[key] >= min(previous):
            return False
        self.best_state.clear()
        self.best_state["model"] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return True

    @contextmanager
    def swap_best_state(self) -> Iterator[None]:
        """Temporarily load the best weights into the model (no-op before the first valid stage)."""
        if not self.best_state:
            yield
            return
        live = copy.deepcopy(self.model.state_dict())
        self.model.load_state_dict(self.best_state["model"])
        try:
            yield
        finally:
            self.model.load_state_dict(live)

    def ema_weights(self) -> Any:
        """Context: run with EMA weights when EMA is enabled."""
        return self.ema.swap() if self.ema is not None else nullcontext()

    # ------------------------------------------------------------------ logging helpers
    def log_scalars(self, prefix: str, metrics: dict[str, float], step: int) -> None:
        """Per-update TensorBoard scalars (flashy logs per-epoch summaries itself)."""
        if self._tensorboard is None or self._tensorboard.writer is None:
            return
        for key, value in metrics.items():
            self._tensorboard.writer.add_scalar(f"{prefix}/{key}", float(value), step)

    # ------------------------------------------------------------------ loop
    def _should_run(self, every: int | None) -> bool:
        last = self.epoch == self.cfg.optim.epochs
        return bool(every) and (self.epoch % every == 0 or last)

    def run_epoch(self) -> None:
        """train → valid → (evaluate) → (generate) → commit."""
        self.run_stage("train", self.train)
        with torch.no_grad(), self.ema_weights():
            metrics = self.run_stage("valid", self.valid)
            self.update_best_state(metrics)
        with self.swap_best_state():
            if self._should_run(self.cfg.evaluate.every):
                with torch.no_grad():
                    self.run_stage("evaluate", self.evaluate)
            if self._should_run(self.cfg.generate.every):
                with torch.no_grad():
                    self.run_stage("generate", self.generate)
        self.commit()

    def run_one_stage(self, stage: str) -> None:
        """`execute_only`: one stage from the best state, nothing saved."""
        stages = {"valid": self.valid, "evaluate": self.evaluate, "generate": self.generate}
        if stage not in stages:
            raise ValueError(f"execute_only={stage!r}: choose one of {sorted(stages)}")
        if not self.restore():
            raise FileNotFoundError(f"execute_only={stage}: no checkpoint in {self.folder}; train first")
        # Logs and samples/<epoch> name the epoch the checkpoint was saved at, not the next one.
        self._stage_epoch = max(1, len(self.history))
        try:
            with self.swap_best_state(), torch.no_grad():
                self.run_stage(stage, stages[stage])
        finally:
            self._stage_epoch = None
        self._start_epoch()

    def run(self) -> None:
        """Resume if possible, then run the remaining epochs."""
        if self.cfg.execute_only:
            self.run_one_stage(self.cfg.execute_only)
            return
        # Training only (execute_only may run beside the training job): temp files of killed saves
        # go before any checkpoint is written; history.json is rewritten from the checkpoint's history.
        if flashy.distrib.is_rank_zero():
            remove_stale_temp_files(self.folder)
        if self.restore() and flashy.distrib.is_rank_zero():
            self.xp.link.update_history(self.history)
        begin = time.time()
        while self.epoch <= self.cfg.optim.epochs:
            self.run_epoch()
        logger.info("Training done in %.1f s: %d epochs.", time.time() - begin, len(self.history))
