"""StandardSolver: the stage loop, checkpoints, best state, EMA and logging shared by solvers.

A task solver supplies `build_model`, `build_dataloaders`, `run_step`, and the `evaluate` /
`generate` stages; everything about epochs, resuming and files lives here.
"""
from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
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
from jasco.solvers.distributed import (
    full_tensors,
    gather_to_rank_zero,
    like,
    local_device,
)
from jasco.solvers.ema import ModuleDictEMA
from jasco.solvers.interrupts import (
    StopRequested,
    StopSignals,
    TrainingInterrupted,
    signal_name,
    stop_priority,
)
from jasco.solvers.resume import Averager, rng_state, set_rng_state
from jasco.solvers.run_lock import experiment_lock
from jasco.solvers.wandb_logger import WandbLogger
from jasco.solvers.watchdog import Watchdog

logger = logging.getLogger(__name__)

class StandardSolver(flashy.BaseSolver):
    """Epoch loop over stages `train`, `valid`, `evaluate`, `generate` with resumable checkpoints.

    Checkpoint (`checkpoint.th`, docs/MODEL.md, "Training checkpoint"): `history`, `xp.cfg`
    (YAML string), `xp.sig`, `best_state` (`{'model': state_dict}`), `model`, `optimizer`,
    `lr_scheduler`, optional `scaler`, `ema` (`{'state': {'model': ...}, 'count': n}`), `updates`,
    `rng` (one `resume.rng_state` per process, in rank order) and `resume` (None at an epoch
    boundary; where the epoch stopped when a signal interrupted it, see `resume_point`).

    Resuming (docs/SCALING.md, "Crash safety and resume"): `run` takes the experiment's lock, then
    restores weights, optimizer, scheduler, EMA, history, update count and random states, and, after
    an interrupted epoch, continues that epoch at the update it stopped at. A task solver's train
    loop starts where `stage_start` says and calls `step_done` after each update (and each batch of
    the other stages): that is where stop signals are honoured and the deadlock watchdog is fed.
    """

    def __init__(self, cfg: DictConfig):
        super().__init__()
        if cfg.deadlock.timeout is None or cfg.deadlock.timeout <= 0:  # checked even when off: typos show at once
            raise ValueError(f"deadlock.timeout={cfg.deadlock.timeout!r}: give a positive number of seconds")
        self.cfg = cfg
        self.device = local_device(resolve_device(cfg.device))  # cuda -> cuda:<LOCAL_RANK> when distributed
        self.model: torch.nn.Module
        self.optimizer: torch.optim.Optimizer | None = None
        self.lr_scheduler: Any = None
        self.scaler: torch.amp.GradScaler | None = None
        self.ema: ModuleDictEMA | None = None
        self.best_state: dict[str, Any] = {}
        self.dataloaders: dict[str, Any] = {}
        self.updates = 0  # optimizer updates so far, all epochs
        self._tensorboard: Any = None
        self._wandb: WandbLogger | None = None  # logging.log_wandb, rank 0
        self._stage_epoch: int | None = None  # set by execute_only: the epoch of the checkpoint it runs from
        self._stop: StopSignals | None = None  # set while `run` trains
        self._watchdog: Watchdog | None = None  # set while `run` trains with deadlock.use
        self._loaded_resume: dict[str, Any] | None = None  # `resume` of the checkpoint restored, until used
        self._train_updates = 0  # updates done in the current epoch's train stage
        self._train_average: Averager | None = None  # its running metrics
        self._rng_after_train: dict[str, Any] | None = None  # random states when the train stage ended
        self._rank_states: list[dict[str, Any]] | None = None  # every rank's `rank_state`, gathered for a save
        self.fsdp = bool(cfg.fsdp.use)  # build_model shards the model (docs/SCALING.md, "Sharded training (FSDP)")
        self._full_states: dict[str, Any] | None = None  # FSDP: whole model/optimizer/EMA/best state, for a save
        self.build_model()
        self.build_dataloaders()
        self.register_stateful("model", "optimizer", "lr_scheduler", "best_state", "updates")
        if self.ema is not None:
            self.register_stateful("ema")
        if self.scaler is not None:
            self.register_stateful("scaler")
        if cfg.logging.log_tensorboard and flashy.distrib.is_rank_zero():
            self.init_tensorboard(**cfg.tensorboard)
            self._tensorboard = self.result_logger._experiment_loggers.get("tensorboard")
        wandb_settings = {key: cfg.wandb[key] for key in ("project", "name", "group")}
        if cfg.logging.log_wandb and flashy.distrib.is_rank_zero():
            sig = self.xp.sig
            self._wandb = WandbLogger(self.folder, project=wandb_settings["project"],
                                      name=wandb_settings["name"] or sig, group=wandb_settings["group"], run_id=sig,
                                      config=OmegaConf.to_container(cfg, resolve=True))
            # flashy sends its per-stage summaries to every logger of its result logger.
            self.result_logger._experiment_loggers["wandb"] = self._wandb

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
        ranks = self._rank_states if self._rank_states is not None else [self.rank_state()]
        state["rng"] = [rank["rng"] for rank in ranks]
        state["resume"] = self.resume_point([rank["train_average"] for rank in ranks])
        if self.fsdp:
            # Whole (unsharded) tensors, gathered by `gather_rank_states`: loadable at any world size.
            state.update(self._full_states or {})
            state["fsdp_best_state"] = state["best_state"]  # the same tensors (torch.save stores them once)
        return state

    def rank_state(self) -> dict[str, Any]:
        """What differs between processes and goes into a checkpoint taken now: random states, train metrics.

        `rng`: after the train stage, the states the later stages started from (they are rerun on
        resume). `train_average`: the running metrics of the epoch's train stage (each process
        averages its own items; `_train_loop` averages over processes at the end of the stage).
        """
        after_train = "train" in self._pending_metrics and self._rng_after_train is not None
        return {"rng": self._rng_after_train if after_train else rng_state(),
                "train_average": self._train_average.state_dict() if self._train_average else None}

    def gather_rank_states(self) -> None:
        """Collect every process's `rank_state` on rank 0 for the next `state_dict`.

        Collective when distributed: every process calls it before a save. Each rank draws from a
        generator of its own (`JascoSolver.build_model`), so each rank's state is kept.
        """
        self._rank_states = gather_to_rank_zero(self.rank_state())
        if self.fsdp:
            from torch.distributed.checkpoint import state_dict as dcp
            options = dcp.StateDictOptions(full_state_dict=True, cpu_offload=True)  # whole tensors, on rank 0 only
            full: dict[str, Any] = {"model": dcp.get_model_state_dict(self.model, options=options),
                                    "optimizer": dcp.get_optimizer_state_dict(self.model, self.optimizer,
                                                                              options=options),
                                    "best_state": {k: full_tensors(v) for k, v in self.best_state.items()}}
            if self.ema is not None:
                full["ema"] = self.ema.full_state_dict()
            self._full_states = full

    def load_state_dict(self, state: dict[str, Any]) -> None:
        states = state.get("rng")
        if states:
            set_rng_state(self._own(states, "random states"))
        self._loaded_resume = state.get("resume")
        state = {k: v for k, v in state.items() if k in self.stateful.sources}
        if self.fsdp:
            state = self._load_sharded(state)
        super().load_state_dict(state)

    def _load_sharded(self, state: dict[str, Any]) -> dict[str, Any]:
        """FSDP: load the checkpoint's whole model, optimizer, EMA and best state into this rank's shards.

        Returns the rest of `state`. The optimizer state must be an FSDP checkpoint's (keyed by
        parameter names, `get_optimizer_state_dict`).
        """
        from torch.distributed.checkpoint import state_dict as dcp
        options = dcp.StateDictOptions(full_state_dict=True)
        state = dict(state)
        if "model" in state:
            dcp.set_model_state_dict(self.model, state.pop("model"), options=options)
        if "optimizer" in state:
            dcp.set_optimizer_state_dict(self.model, self.optimizer, state.pop("optimizer"), options=options)
        if "best_state" in state:
            live = self.model.state_dict()
            self.best_state.clear()
            self.best_state.update({name: {k: like(v, live[k]) if k in live else v for k, v in weights.items()}
                                    for name, weights in state.pop("best_state").items()})
        return state

    def _start_epoch(self) -> None:
        super()._start_epoch()
        self._train_updates = 0
        self._train_average = None
        self._rng_after_train = None

    @staticmethod
    def _own(per_rank: list[Any], what: str) -> Any:
        """This process's entry of a per-rank list from a checkpoint (the nearest rank's if the count differs)."""
        rank, world = flashy.distrib.rank(), flashy.distrib.world_size()
        if len(per_rank) != world:
            logger.warning("The checkpoint holds the %s of %d process(es), this run has %d: using the nearest "
                           "rank's (the run goes on, not bit-identically)", what, len(per_rank), world)
        return per_rank[min(rank, len(per_rank) - 1)]

    def resume_point(self, train_averages: list[Any] | None = None) -> dict[str, Any] | None:
        """Where the current epoch stands, for a checkpoint taken in its middle (None at its start).

        `{'epoch': E, 'train_updates': k, 'train_average': [Averager state per process]}` while the
        train stage runs (k updates done; `train_averages` default to this process's); once it is
        done, also `'train_metrics'` (its summary): a resumed run then skips to the later stages,
        which start over (they change no training state).
        """
        if not self._train_updates and "train" not in self._pending_metrics:
            return None
        if train_averages is None:
            train_averages = [self.rank_state()["train_average"]]
        point: dict[str, Any] = {"epoch": self.epoch, "train_updates": self._train_updates,
                                 "train_average": train_averages}
        if "train" in self._pending_metrics:
            point["train_metrics"] = dict(self._pending_metrics["train"])
        return point

    def _apply_resume_point(self) -> None:
        """After `restore` in training: continue the epoch the checkpoint was taken in."""
        point, self._loaded_resume = self._loaded_resume, None
        if not point:
            return
        if point["epoch"] != self.epoch:
            logger.warning("Checkpoint stopped in epoch %d but its history ends at epoch %d: starting epoch %d "
                           "from its beginning", point["epoch"], len(self.history), self.epoch)
            return
        self._train_updates = int(point["train_updates"])
        average = self._own(point["train_average"], "train metrics") if point.get("train_average") else None
        if average is not None:
            self._train_average = Averager()
            self._train_average.load_state_dict(average)
        if point.get("train_metrics") is not None:
            self._pending_metrics["train"] = dict(point["train_metrics"])
            logger.info("Resuming epoch %d after its train stage (%d updates)", self.epoch, self._train_updates)
        else:
            logger.info("Resuming epoch %d at update %d", self.epoch, self._train_updates + 1)

    def stage_start(self) -> tuple[int, Averager]:
        """Where the loop of the current stage starts: `(batches already done, running mean of their metrics)`.

        `(0, a new Averager)` except for a train stage resumed in its middle. The train loop skips
        that many batches (without loading them) and updates the returned Averager.
        """
        if self._current_stage != "train":
            return 0, Averager()
        if self._train_average is None:
            self._train_average = Averager()
        return self._train_updates, self._train_average

    def step_done(self) -> None:
        """Call after each update of the train stage (after the optimizer step) and each batch of the others.

        Counts the update, feeds the deadlock watchdog and, when a stop signal came, raises
        `StopRequested` (handled by `run`: checkpoint, then exit or requeue). With several
        processes, stops are agreed on at train updates only, where all processes are in step.
        """
        stage = self._current_stage
        if stage == "train":
            self._train_updates += 1
        if self._watchdog is not None:
            what = f"update {self._train_updates}" if stage == "train" else "batch"
            self._watchdog.beat(f"{stage} {what} of epoch {self.epoch}")
        if stage == "train" or flashy.distrib.world_size() == 1:
            self.check_stop()

    def check_stop(self) -> None:
        """Raise `StopRequested` when a stop signal came (to this process or, when distributed, to any).

        Collective when distributed: every process must call it at the same points.
        """
        if self._stop is None:
            return
        signum = self._stop.requested or 0
        if flashy.distrib.world_size() > 1:
            code = torch.tensor([stop_priority(signum) * 1000 + signum], device=self.device)
            torch.distributed.all_reduce(code, op=torch.distributed.ReduceOp.MAX)
            signum = int(code.item()) % 1000
        if signum:
            raise StopRequested(signum)

    def _progress(self, what: str) -> None:
        if self._watchdog is not None:
            self._watchdog.beat(what)

    def commit(self, save_checkpoint_: bool = True) -> None:
        """Append this epoch's metrics to the history and write the checkpoint(s) atomically.

        `checkpoint.th` (which holds the history) is written first, `history.json` second: a job
        killed in between leaves history.json one epoch behind, never ahead of the checkpoint, and
        the next run rewrites it from the checkpoint (`run`).
        """
        self.history.append(self._pending_metrics)
        self._start_epoch()
        if save_checkpoint_:
            self.gather_rank_states()
        if not flashy.distrib.is_rank_zero():
            self._full_states = None
            return
        if not save_checkpoint_:
            self.xp.link.update_history(self.history)
            return
        self._progress("saving the checkpoint")
        state = self.state_dict()
        self._rank_states = self._full_states = None
        save_checkpoint(state, self.checkpoint_path)
        self.xp.link.update_history(self.history)
        ckpt = self.cfg.checkpoint
        epoch = len(self.history)
        if ckpt.save_every and epoch % ckpt.save_every == 0:
            save_checkpoint(state, epoch_checkpoint_path(self.folder, epoch))
            flush_stale_checkpoints(self.folder, ckpt.keep_last)
        self._progress(f"checkpoint of epoch {epoch} saved")

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
        """Per-update scalars to TensorBoard and wandb (flashy logs per-epoch summaries itself)."""
        if self._wandb is not None:
            self._wandb.log_scalars(prefix, metrics, "update", step)
        if self._tensorboard is None or self._tensorboard.writer is None:
            return
        for key, value in metrics.items():
            self._tensorboard.writer.add_scalar(f"{prefix}/{key}", float(value), step)

    def log_generated_samples(self) -> None:
        """The generate stage's samples (`<generate.path>/<epoch>/`: audio, controls picture) to wandb."""
        if self._wandb is None:
            return
        folder = self.folder / self.cfg.generate.path / str(self.epoch)
        count = self._wandb.log_samples(folder, self.cfg.generate.audio.format, self.epoch)
        logger.info("Logged %d samples of %s to wandb", count, folder)

    # ------------------------------------------------------------------ loop
    def _should_run(self, every: int | None) -> bool:
        last = self.epoch == self.cfg.optim.epochs
        return bool(every) and (self.epoch % every == 0 or last)

    def run_epoch(self) -> None:
        """train → valid → (evaluate) → (generate) → commit.

        A stop signal raises `StopRequested` between stages or at a batch (`step_done`); the
        context managers below put the live weights back before `run` saves them.
        """
        self.check_stop()
        if "train" not in self._pending_metrics:  # resumed after its train stage: done already
            self.run_stage("train", self.train)
        self._rng_after_train = rng_state()
        self.check_stop()
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
                self.log_generated_samples()
        self.commit()

    def run_one_stage(self, stage: str) -> None:
        """`execute_only`: one stage from the best state, nothing saved."""
        stages = {"valid": self.valid, "evaluate": self.evaluate, "generate": self.generate}
        if stage not in stages:
            raise ValueError(f"execute_only={stage!r}: choose one of {sorted(stages)}")
        restored = self.restore()
        if not restored and not self.cfg.get("continue_from"):
            raise FileNotFoundError(f"execute_only={stage}: no checkpoint in {self.folder}; train first, "
                                    "or give continue_from=MODEL to run the stage on that model")
        # Logs and samples/<epoch> name the epoch the checkpoint was saved at (0: the continue_from weights).
        self._stage_epoch = max(1, len(self.history)) if restored else 0
        try:
            with self.swap_best_state(), torch.no_grad():
                self.run_stage(stage, stages[stage])
            if stage == "generate":
                self.log_generated_samples()
        finally:
            self._stage_epoch = None
        self._start_epoch()

    def run(self) -> None:
        """Resume if possible, then run the remaining epochs.

        Raises:
            run_lock.ExperimentLocked: another process is training this experiment.
            interrupts.TrainingInterrupted: a stop signal came; the checkpoint is saved (under
                submitit, a requeue signal requeues the job and exits instead).
        """
        with ExitStack() as stack:
            if self._wandb is not None:
                stack.callback(self._wandb.finish)  # flushes the run's files, also after an error
            if self.cfg.execute_only:
                self.run_one_stage(self.cfg.execute_only)
                return
            # Training only (execute_only may run beside the training job). One writer per folder:
            # then temp files of killed saves can go before any checkpoint is written, and
            # history.json is rewritten from the checkpoint's history.
            if flashy.distrib.is_rank_zero():
                stack.enter_context(experiment_lock(self.folder))
            self._stop = stack.enter_context(StopSignals())
            stack.callback(setattr, self, "_stop", None)
            if self.cfg.deadlock.use:
                self._watchdog = stack.enter_context(Watchdog(self.cfg.deadlock.timeout))
                stack.callback(setattr, self, "_watchdog", None)
            if flashy.distrib.is_rank_zero():
                remove_stale_temp_files(self.folder)
            if self.restore() and flashy.distrib.is_rank_zero():
                self.xp.link.update_history(self.history)
            self._apply_resume_point()
            begin = time.time()
            try:
                while self.epoch <= self.cfg.optim.epochs:
                    self.run_epoch()
            except StopRequested as stop:
                self._stop_training(stop.signum)
        logger.info("Training done in %.1f s: %d epochs.", time.time() - begin, len(self.history))

    def _stop_training(self, signum: int) -> None:
        """Save where the run stands (if it moved since the last checkpoint), then requeue or raise."""
        point = self.resume_point()
        if point is None:
            where = f"at the start of epoch {self.epoch}"
        elif "train_metrics" in point:
            where = f"in epoch {self.epoch}, after its train stage"
        else:
            where = f"in epoch {self.epoch}, after update {point['train_updates']} of {self.cfg.optim.updates_per_epoch}"
        if point is not None:
            self.gather_rank_states()
            if flashy.distrib.is_rank_zero():
                self._progress("saving the checkpoint of an interrupted run")
                save_checkpoint(self.state_dict(), self.checkpoint_path)
                self._rank_states = self._full_states = None
            saved = f"checkpoint saved to {self.checkpoint_path}"  # by rank 0, before the barrier below
        elif self.checkpoint_path.exists():
            saved = f"nothing new since {self.checkpoint_path}"
        else:
            saved = "nothing to save yet"
        flashy.distrib.barrier()  # no process leaves (and gets its peers killed) before the save is done
        message = f"{signal_name(signum)}: stopped {where}; {saved}. Run the same command to resume."
        logger.warning("%s", message)
        if self._stop is not None:
            self._stop.forward()  # submitit requeues the job and exits here
        raise TrainingInterrupted(signum, message)
