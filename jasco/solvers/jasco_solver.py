"""JascoSolver: flow-matching training of JASCO on codec latents (docs/MODEL.md, "Flow matching").

Shapes: `B` batch, `C` channels, `N` samples, `T` latent frames, `F` flow dim (128).
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from jasco.audio.io import SOUNDFILE_EXTENSIONS
from jasco.controls.chords.vocabulary import ChordVocabulary
from jasco.data.attributes import ConditioningAttributes
from jasco.data.audio_dataset import EmptyDatasetError
from jasco.data.jasco_dataset import JascoDataset, JascoInfo
from jasco.data.latents import verify_latent_cache
from jasco.environment import resolve_autocast, resolve_dataset_path
from jasco.models import flow
from jasco.models.builders import get_compression_model, get_flow_matching_model
from jasco.solvers import distributed
from jasco.solvers.base import StandardSolver
from jasco.solvers.continuation import initial_state_from
from jasco.solvers.ema import ModuleDictEMA
from jasco.solvers.evaluation import evaluate_generations, evaluation_settings
from jasco.solvers.finetune import prepare_model
from jasco.solvers.interrupts import StopRequested, ignore_stop_signals
from jasco.solvers.pending_metrics import PendingMetrics
from jasco.solvers.resume import Averager, batches_from
from jasco.solvers.samples import write_samples
from jasco.solvers.schedulers import build_lr_scheduler

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "evaluate", "generate")
DATASET_ARGS = ("segment_duration", "num_samples", "shuffle", "sample_on_duration", "sample_on_weight",
                "min_segment_ratio", "shuffle_seed", "permutation_on_files", "skip_bad_files",
                "length_tolerance", "merge_text_p", "drop_desc_p", "drop_other_p")


def dataset_kwargs(dataset_cfg: DictConfig, split: str) -> dict[str, Any]:
    """JascoDataset arguments of one split: `dataset.<split>.ARG`, else `dataset.ARG` (nulls: the dataset's defaults).

    Raises:
        ValueError: `dataset.<split>` has a key that is not a dataset argument.
    """
    section = dataset_cfg.get(split) or {}
    unknown = sorted(set(section) - set(DATASET_ARGS))
    if unknown:
        raise ValueError(f"dataset.{split}: unknown key(s) {unknown}; known: {sorted(DATASET_ARGS)}")
    kwargs = {}
    for arg in DATASET_ARGS:
        value = section.get(arg)
        value = dataset_cfg.get(arg) if value is None else value
        if value is not None:
            kwargs[arg] = value
    return kwargs


def batch_tracks(infos: list[JascoInfo], limit: int = 16) -> str:
    """`path@seek_s` of a batch's items (the first `limit`), for error messages."""
    names = [f"{info.meta.path}@{info.seek_time:.2f}s" for info in infos[:limit]]
    more = f" and {len(infos) - limit} more" if len(infos) > limit else ""
    return ", ".join(names) + more


def chord_vocabulary(spec: str | None) -> ChordVocabulary | None:
    """`builtin`, `published:PATH` or a `.pkl`/`.json` PATH → ChordVocabulary."""
    return None if spec is None else ChordVocabulary.from_spec(spec)


class JascoSolver(StandardSolver):
    """Trains the FlowMatchingModel; the frozen codec (or a latent cache) provides targets."""

    # ------------------------------------------------------------------ build
    def build_model(self) -> None:
        cfg = self.cfg
        start = initial_state_from(cfg, self.folder)  # may adopt architecture keys: before building
        self.compression_model = get_compression_model(cfg).to(self.device)
        self.model = get_flow_matching_model(cfg, self.compression_model).to(self.device)
        prepare_model(self.model, cfg, start)  # starting weights, LoRA adapters, what trains (finetune.*)
        if cfg.compile:
            # In place, layer by layer: parameter names and checkpoints unchanged (docs/PERFORMANCE.md).
            self.model.transformer.compile_layers()
        fsdp_dtypes = {key: getattr(torch, cfg.fsdp[key]) for key in ("param_dtype", "reduce_dtype")}
        for key, dtype in fsdp_dtypes.items():
            if dtype not in (torch.float32, torch.bfloat16, torch.float16):
                raise ValueError(f"fsdp.{key}={cfg.fsdp[key]!r}: choose float32, bfloat16 or float16")
        if self.fsdp:
            # FSDP2 (docs/SCALING.md, "Sharded training (FSDP)"): every transformer block, then the root, sharded
            # in place; `self.model` is the sharded module (checkpoints gather it whole, `gather_rank_states`).
            # Every rank built the same weights from the same seed, so each keeps its own shard of them.
            self.model = distributed.shard(self.model, list(self.model.transformer.layers), self.device,
                                           **fsdp_dtypes)
            self.train_model = self.model
        else:
            # What the train stage runs: DDP over the same module when distributed (docs/SCALING.md); `self.model`
            # (checkpoints, EMA, valid, generate) stays the plain module. Wrapping syncs every rank to rank 0's weights.
            self.train_model = distributed.wrap(self.model, self.device)
        params = [p for p in self.model.parameters() if p.requires_grad]  # with LoRA: adapters (+ finetune.trainable)
        fused = cfg.optim.get("fused", "auto")
        # auto: fused AdamW on GPU, and on CPU (~10x faster than foreach there) except over FSDP's sharded tensors.
        fused = (self.device.type == "cuda" or (self.device.type == "cpu" and not self.fsdp)) if fused == "auto" \
            else bool(fused)
        if cfg.optim.optimizer != "adamw":
            raise ValueError(f"optim.optimizer={cfg.optim.optimizer!r}: only adamw is supported")
        self.optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=tuple(cfg.optim.adam.betas),
                                           weight_decay=cfg.optim.adam.weight_decay, eps=cfg.optim.adam.eps,
                                           fused=fused or None)
        total_updates = cfg.optim.epochs * cfg.optim.updates_per_epoch
        self.lr_scheduler = build_lr_scheduler(self.optimizer, cfg.schedule, total_updates)
        if cfg.optim.ema.use:
            self.ema = ModuleDictEMA(nn.ModuleDict({"model": self.model}), decay=cfg.optim.ema.decay,
                                     device=cfg.optim.ema.device or self.device)
        # autocast / autocast_dtype (auto: bfloat16 where the device runs it natively), environment.resolve_autocast.
        dtype = resolve_autocast(cfg.autocast, cfg.autocast_dtype, self.device)
        self.autocast_enabled = dtype is not None
        self.autocast_dtype = dtype or torch.float32
        logger.info("Mixed precision: %s", f"{dtype} autocast" if dtype else "float32 (no autocast)")
        if dtype == torch.float16:
            self.scaler = torch.amp.GradScaler(self.device.type)
        self.updates = 0
        if distributed.world_size() > 1:
            # Every rank built the model from the same seed; what still draws from torch's global generator
            # (dropout layers) gets a stream of its own per rank. Flow-matching noise and condition dropout
            # draw from generators keyed by item and update instead (`batch_loss`).
            torch.manual_seed(distributed.item_seed(cfg.seed, "rank", distributed.rank()))

    @contextmanager
    def root_unsharded(self) -> Iterator[None]:
        """FSDP: the root's own parameters gathered whole for the block (evaluate and generate call submodules
        such as the condition provider outside the root's forward; the blocks still gather in their forwards).

        Collective: every process enters it.
        """
        if not self.fsdp:
            yield
            return
        self.model.unshard()
        try:
            yield
        finally:
            self.model.reshard()

    def autocast(self) -> torch.autocast:
        """Mixed precision for the flow network (the codec always runs in fp32: `codec.full_precision`)."""
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_enabled)

    def build_dataloaders(self) -> None:
        cfg = self.cfg
        world, rank = distributed.world_size(), distributed.rank()
        # dataset.batch_size is the global batch of one update: accumulation_steps x processes micro-batches.
        self.accumulation = cfg.optim.accumulation_steps
        distributed.check_global_batch(cfg.dataset.batch_size, self.accumulation, world)
        self.batch_size = -(-cfg.dataset.batch_size // (self.accumulation * world))  # the largest micro-batch
        lm = cfg.generate.lm
        try:  # at start, not at the first generate stage
            flow.check_sampler(lm.solver, lm.steps, lm.time_grid, lm.sway_coef, lm.ode_atol, lm.ode_rtol)
        except ValueError as err:
            raise ValueError(f"generate.lm: {err}") from None
        if f".{cfg.generate.audio.format}" not in SOUNDFILE_EXTENSIONS:
            raise ValueError(f"generate.audio.format={cfg.generate.audio.format!r}: choose one of "
                             f"{sorted(suffix[1:] for suffix in SOUNDFILE_EXTENSIONS)}")
        vocabulary = self.vocabulary = chord_vocabulary(cfg.get("chords_vocabulary", "builtin"))
        conditioners = self.model.condition_provider.conditioners
        if "chords" in conditioners and vocabulary is not None and len(vocabulary) != conditioners["chords"].card:
            raise ValueError(f"chords_vocabulary has {len(vocabulary)} labels but the model's chords card is "
                             f"{conditioners['chords'].card}: use a vocabulary of that size or set "
                             f"conditioners.chords.chords_emb.card={len(vocabulary)}")
        for split in SPLITS:
            path = cfg.datasource.get(split)
            if path is None or OmegaConf.is_missing(cfg.datasource, split):
                if split in ("train", "valid"):
                    raise ValueError(f"datasource.{split} is not set: give a folder with a data.jsonl manifest")
                continue
            kwargs = dataset_kwargs(cfg.dataset, split)
            try:
                # The mix is decoded only when some track lacks cached latents (JascoDataset.read_audio).
                dataset = JascoDataset.from_meta(
                    str(resolve_dataset_path(path)), sample_rate=cfg.sample_rate, channels=cfg.channels,
                    return_info=True, chords_vocabulary=vocabulary if "chords" in conditioners else None,
                    use_melody="melody" in conditioners, use_drums="self_wav" in conditioners,
                    melody_frame_rate=cfg.dataset.melody_kwargs.melody_fr,
                    frame_rate=cfg.compression_model_framerate, train=split == "train", **kwargs)
            except EmptyDatasetError as exc:
                raise EmptyDatasetError(
                    f"datasource.{split}={path}: {exc} In the training config these are dataset.segment_duration "
                    f"({kwargs.get('segment_duration')}) and dataset.{split}.min_segment_ratio or "
                    f"dataset.min_segment_ratio ({kwargs.get('min_segment_ratio')}).") from exc
            if any(meta.get_path("latents_path") for meta in dataset.metas):
                # A cache made with another codec would silently train on wrong targets.
                verify_latent_cache(resolve_dataset_path(path), self.compression_model)
            loader_kwargs = {"num_workers": cfg.dataset.num_workers, "collate_fn": dataset.collater,
                             "worker_init_fn": ignore_stop_signals if cfg.dataset.num_workers else None}
            if split == "train":
                # This process's micro-batches of each update, the same every epoch (distributed.UpdateBatchSampler).
                sampler = distributed.UpdateBatchSampler(len(dataset), cfg.dataset.batch_size, self.accumulation,
                                                         cfg.optim.updates_per_epoch, rank, world)
                self.dataloaders[split] = DataLoader(dataset, batch_sampler=sampler, **loader_kwargs)
            else:
                size = len(dataset) if split != "generate" else min(len(dataset), cfg.dataset.generate.num_samples)
                if self.fsdp:
                    self._check_fsdp_shards(split, size, world)
                self.dataloaders[split] = DataLoader(dataset, batch_size=self.batch_size,
                                                     sampler=distributed.ShardSampler(size, rank, world), **loader_kwargs)

    def _check_fsdp_shards(self, split: str, size: int, world: int) -> None:
        """FSDP gathers the weights in every forward, a collective: all processes must run as many batches.

        Raises:
            ValueError: the shards of `split` give the processes different numbers of batches, or
                `generate.lm.solver` is adaptive (each process would take its own number of steps).
        """
        counts = [-(-len(range(r, size, world)) // self.batch_size) for r in range(world)]
        if len(set(counts)) > 1:
            raise ValueError(f"fsdp.use=true: the {size} items of datasource.{split} give the {world} processes "
                             f"{min(counts)} to {max(counts)} batches of {self.batch_size}; every process must run "
                             f"as many: change dataset.{split}.num_samples or dataset.batch_size")
        if world > 1 and self.cfg.generate.every and self.cfg.generate.lm.solver in flow.ADAPTIVE_SOLVERS:
            raise ValueError(f"fsdp.use=true with generate.lm.solver={self.cfg.generate.lm.solver!r}: an adaptive "
                             f"solver takes a different number of steps on each process; use a fixed-step "
                             f"solver ({', '.join(sorted(flow.FIXED_STEP_SOLVERS))})")

    # ------------------------------------------------------------------ one step
    def latents_of(self, wav: torch.Tensor, infos: list[JascoInfo]) -> torch.Tensor:
        """Normalised target latents `[B, T, F]`: from the latent cache when every sample has one."""
        if infos and all(info.latents is not None for info in infos):
            raw = torch.stack([info.latents for info in infos]).to(self.device, torch.float32)
            return self.compression_model.normalize(raw)
        if wav.shape[-1] == 0:
            raise ValueError(f"The batch has no audio (the dataset was told not to read it) and not every item has "
                             f"cached latents: {batch_tracks([i for i in infos if i.latents is None])}.")
        with torch.no_grad():
            return self.compression_model.encode(wav.to(self.device))

    def batch_loss(self, batch: tuple[torch.Tensor, list[JascoInfo]], positions: Sequence[int],
                   train: bool) -> torch.Tensor:
        """Flow-matching loss (mean over the batch) of a (micro-)batch whose items sit at `positions`.

        Item `i`'s noise `z0` and time `t` are keyed by the seed, the update (training; the split
        otherwise) and `positions[i]` (its place in the update's global batch, or its dataset index):
        the same whichever process or micro-batch holds the item, and after a resume. Training
        applies condition dropout (`dropout_generator`) and runs `train_model` (DDP when distributed).
        The loss stays on the device: whether it is finite is checked where metrics are read (`settle_metrics`).
        """
        wav, infos = batch
        attributes = [info.to_condition_attributes() for info in infos]
        if train:
            attributes = self.model.apply_condition_dropout(attributes, self.dropout_generator(positions))
        z1 = self.latents_of(wav, infos)
        stream: tuple[int | str, ...] = ("train", self.updates) if train else ("valid",)
        z0, t = distributed.item_noise([(self.cfg.seed, *stream, p) for p in positions], tuple(z1.shape[1:]),
                                       z1.device, z1.dtype)
        with self.autocast():
            # Conditions are embedded inside the forward, so DDP sees the conditioners' parameters used.
            v = (self.train_model if train else self.model)(flow.interpolate(z0, z1, t), t, conditions=attributes)
        return flow.flow_matching_loss(v, z0, z1, t, self.cfg.get("loss_func", "increasing"))

    def dropout_generator(self, positions: Sequence[int]) -> torch.Generator:
        """Condition dropout's draws in the current update.

        One stream per update, so the published one decision per batch is taken once for the global
        batch: every micro-batch of every process drops the same conditions. With
        `condition_dropout_per_sample`, a stream per micro-batch (keyed by its first position).
        """
        key: tuple[int | str, ...] = (self.cfg.seed, "dropout", self.updates)
        if self.cfg.condition_dropout_per_sample:
            key += (positions[0] if len(positions) else 0,)
        return torch.Generator().manual_seed(distributed.item_seed(*key))

    def run_step(self, batch: tuple[torch.Tensor, list[JascoInfo]], train: bool,
                 positions: Sequence[int] | None = None) -> dict[str, float]:
        """Loss of one batch; in training, one whole update on it (as this process's share of the global batch).

        `positions` default to `0, 1, ...` (see `batch_loss`). The metrics are read at once (one host
        sync; the stage loops read theirs only at logging points), a non-finite loss raising.
        """
        positions = range(len(batch[1])) if positions is None else positions
        pending = PendingMetrics()
        if train:
            pending.add(self.updates + 1, self.train_update([batch], [positions]), batch[1])
        else:
            pending.add(self.updates, {"loss": self.batch_loss(batch, positions, train=False)}, batch[1])
        return self.settle_metrics(pending, Averager())

    def train_update(self, batches: list[tuple[torch.Tensor, list[JascoInfo]]], positions: list[Sequence[int]],
                     global_batch: int | None = None) -> dict[str, torch.Tensor | float]:
        """One optimizer update from this process's micro-batches of the update, in accumulation order.

        Micro-batch `j` (`n_j` items at `positions[j]`) weighs its mean loss by `n_j W / G` (`G`
        items in the global batch, default `W` times this process's; DDP averages over the `W`
        processes): the update's gradient is that of the mean loss over the global batch, however
        it is split. DDP all-reduces once, in the backward of the last micro-batch (`no_sync` before).
        The `loss` returned is this process's mean over its items, a 0-d tensor on the device, as is
        `grad_norm`: nothing here waits for the device (read them with `PendingMetrics`).
        """
        world = distributed.world_size()
        local_items = sum(len(where) for where in positions)
        global_batch = global_batch or local_items * world
        self.optimizer.zero_grad(set_to_none=True)
        total: torch.Tensor | None = None
        for step, (batch, where) in enumerate(zip(batches, positions)):
            last = step == len(batches) - 1
            if self.fsdp:  # FSDP2: reduce-scatter the gradients in the last micro-batch's backward only
                self.model.set_requires_gradient_sync(last)
            with nullcontext() if last or world == 1 or self.fsdp else self.train_model.no_sync():
                loss = self.batch_loss(batch, where, train=True)
                weighted = loss * (len(where) * world / global_batch)
                (weighted if self.scaler is None else self.scaler.scale(weighted)).backward()
            part = loss.detach().double() * len(where)
            total = part if total is None else total + part
        metrics: dict[str, torch.Tensor | float] = {"loss": total / local_items}
        metrics.update(self.optimizer_step())
        return metrics

    def optimizer_step(self) -> dict[str, torch.Tensor | float]:
        """Once the update's gradients are accumulated (and averaged by DDP): clipping, step, scheduler, EMA.

        `grad_norm` stays a device tensor (no host sync; fp16's GradScaler still reads its inf check).
        """
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        metrics: dict[str, torch.Tensor | float] = {}
        if self.cfg.optim.max_norm:
            norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.max_norm)  # FSDP: over all shards
            metrics["grad_norm"] = (norm.full_tensor() if hasattr(norm, "full_tensor") else norm).detach()
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        self.updates += 1
        if self.ema is not None and self.updates % self.cfg.optim.ema.updates == 0:
            self.ema.step()
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        return metrics

    def settle_metrics(self, pending: PendingMetrics, average: Averager, log_prefix: str | None = None
                       ) -> dict[str, float]:
        """Read the pending steps' metrics (one host sync), fold them into `average` and return its means.

        With `log_prefix`, each step's metrics also go to TensorBoard at its update.

        Raises:
            FloatingPointError: a step's loss is not finite; the message names that batch's tracks.
        """
        for done in pending.read():
            loss = done.metrics.get("loss", 0.0)
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"Loss is {loss} at update {done.step} (epoch {self.epoch}) on a batch of tracks (path@seek): "
                    f"{batch_tracks(done.items)}. Lower optim.lr, check the data (silent or clipped audio), or "
                    f"disable fp16 autocast (autocast_dtype=bfloat16).")
            average(done.metrics, done.weight)
            if log_prefix is not None:
                self.log_scalars(log_prefix, done.metrics, done.step)
        return average.means()

    # ------------------------------------------------------------------ stages
    def _train_loop(self) -> dict[str, float]:
        """`optim.updates_per_epoch` updates of `accumulation_steps` micro-batches each (`train_update`).

        A train stage resumed in its middle starts at the update `stage_start` gives, without
        loading the micro-batches before it; `step_done` follows every update.
        """
        loader = self.dataloaders["train"]
        loader.dataset.set_epoch(self.epoch)
        sampler: distributed.UpdateBatchSampler = loader.batch_sampler
        total = self.cfg.optim.updates_per_epoch
        start, average = self.stage_start()
        micro_batches = batches_from(loader, start * self.accumulation)
        positions = [sampler.positions(step) for step in range(self.accumulation)]
        progress = self.log_progress("train", range(start, total), total=total - start,
                                     updates=max(1, total // max(1, self.cfg.logging.log_updates)))
        metrics: dict[str, float] = average.means()
        pending = PendingMetrics()  # updates whose metrics are still on the device
        begin = time.time()
        for index in progress:
            batches = [next(micro_batches) for _ in range(self.accumulation)]
            step_metrics = self.train_update(batches, positions, sampler.global_batch)
            step_metrics["samples_per_s"] = sampler.global_batch / max(time.time() - begin, 1e-9)
            begin = time.time()
            pending.add(self.updates, step_metrics, [info for _, infos in batches for info in infos])
            # The host waits for the device only where the bar logs (about every logging.log_updates) and at the end.
            if progress.update(**metrics) or index == total - 1:
                metrics = self.settle_metrics(pending, average, "train_step")
                progress.update(**metrics)
            try:
                self.step_done()  # update boundary: stop signals, deadlock watchdog
            except StopRequested:
                self.settle_metrics(pending, average, "train_step")  # the resume point keeps the running means
                raise
        # Each process's means are over its items of every update: weighting by them gives the global means.
        return distributed.average_metrics(metrics, sum(len(where) for where in positions))

    def _eval_loop(self, split: str) -> dict[str, float]:
        """Mean loss over this process's shard of `split`, averaged over the processes by item."""
        loader = self.dataloaders[split]
        loader.dataset.set_epoch(self.epoch)
        _, average = self.stage_start()
        progress = self.log_progress(split, loader, total=len(loader),
                                     updates=max(1, len(loader) // max(1, self.cfg.logging.log_updates)))
        metrics: dict[str, float] = {}
        pending = PendingMetrics()  # batches whose loss is still on the device
        seen = 0
        begin = time.time()
        for index, batch in enumerate(progress):
            indices = [loader.sampler.global_index(seen + i) for i in range(len(batch[1]))]
            seen += len(indices)
            step_metrics = {"loss": self.batch_loss(batch, indices, train=False),
                            "samples_per_s": len(indices) * distributed.world_size() / max(time.time() - begin, 1e-9)}
            begin = time.time()
            pending.add(self.updates, step_metrics, batch[1], weight=len(indices))
            if progress.update(**metrics) or index == len(loader) - 1:
                metrics = self.settle_metrics(pending, average)
                progress.update(**metrics)
            self.step_done()
        metrics = self.settle_metrics(pending, average) if len(pending) else metrics
        return distributed.average_metrics(metrics, seen)

    def train(self) -> dict[str, float]:
        self.model.train()
        return self._train_loop()

    def valid(self) -> dict[str, float]:
        self.model.eval()
        # Each item's noise and time are keyed by its index: the same every epoch, so valid losses
        # are comparable across epochs (and do not depend on the number of processes).
        return self._eval_loop("valid")

    def evaluate(self) -> dict[str, float]:
        """The best state on the evaluate split: losses at fixed times t (unweighted: how well each part of
        the path is fit), then, when `evaluate.metrics` enables some, samples scored against their own
        conditions (`jasco.solvers.evaluation`, docs/EVALUATION.md)."""
        with self.root_unsharded():
            return self._evaluate()

    def _evaluate(self) -> dict[str, float]:
        settings = evaluation_settings(self.cfg.evaluate)  # checked before the losses: a typo fails at once
        self.model.eval()
        loader = self.dataloaders.get("evaluate") or self.dataloaders["valid"]
        loader.dataset.set_epoch(0)
        times = [0.1, 0.3, 0.5, 0.7, 0.9]
        sums = {t: 0.0 for t in times}
        count = 0
        for wav, infos in loader:
            indices = [loader.sampler.global_index(count + i) for i in range(len(infos))]
            z1 = self.latents_of(wav, infos)
            tensors = self.model.condition_tensors([info.to_condition_attributes() for info in infos])
            for k, t_value in enumerate(times):
                z0, _ = distributed.item_noise([(self.cfg.seed, "evaluate", k, i) for i in indices],
                                               tuple(z1.shape[1:]), z1.device, z1.dtype)
                t = torch.full((z1.shape[0], 1, 1), t_value, device=self.device)
                with self.autocast():
                    v = self.model(flow.interpolate(z0, z1, t), t, condition_tensors=tensors)
                sums[t_value] += flow.flow_matching_loss(v, z0, z1, t, "uniform").item() * z1.shape[0]
            count += z1.shape[0]
            self.step_done()
        metrics = {f"loss_t{t:.1f}": s / max(count, 1) for t, s in sums.items()}
        metrics["loss"] = sum(metrics.values()) / len(times)
        metrics = distributed.average_metrics(metrics, count)
        if settings.generates:
            metrics.update(evaluate_generations(self, loader, settings))
        return metrics

    def generate(self) -> dict[str, float]:
        """Sample from the conditions of the generate set; write wavs, condition JSON and pictures.

        Each process samples its shard of the set, item `i` from initial noise keyed by `i` (the
        samples do not depend on the number of processes); rank 0 gathers and writes them all.
        """
        with self.root_unsharded():
            return self._generate()

    def sample_audio(self, attributes: list[ConditioningAttributes], n_samples: int,
                     noise_keys: list[tuple[int | str, ...]]) -> torch.Tensor:
        """Audio `[B, C, N']` on the CPU (`N' >= n_samples`) sampled with `generate.lm`'s solver and guidance
        from item `i`'s initial noise keyed by `noise_keys[i]`, decoded by the codec (generate and evaluate stages).

        The network runs under the solver's autocast; the ODE state stays fp32 (`FlowMatchingModel.generate`).
        """
        lm = self.cfg.generate.lm
        n_frames = math.ceil(n_samples / self.compression_model.hop_length)
        noise, _ = distributed.item_noise(noise_keys, (n_frames, self.model.flow_dim), self.device)
        with self.autocast():
            latents = self.model.generate(attributes, max_gen_len=n_frames, cfg_coef_all=lm.cfg_coef_all,
                                          cfg_coef_txt=lm.cfg_coef_txt, solver=lm.solver, steps=lm.steps,
                                          time_grid=lm.time_grid, sway_coef=lm.sway_coef,
                                          ode_atol=lm.ode_atol, ode_rtol=lm.ode_rtol, initial_noise=noise)
        return self.compression_model.decode(latents.float()).cpu()

    def _generate(self) -> dict[str, float]:
        self.model.eval()
        loader = self.dataloaders.get("generate") or self.dataloaders["valid"]
        loader.dataset.set_epoch(0)
        out_dir = self.folder / self.cfg.generate.path / str(self.epoch)
        wanted = min(self.cfg.dataset.generate.num_samples, loader.sampler.size)
        done: list[tuple[int, torch.Tensor, JascoInfo]] = []  # (index in the set, audio [C, N] on CPU, info)
        seen = 0
        begin = time.time()
        for _, infos in loader:
            indices = [loader.sampler.global_index(seen + i) for i in range(len(infos))]
            seen += len(infos)
            infos, indices = [info for info, i in zip(infos, indices) if i < wanted], [i for i in indices if i < wanted]
            if not infos:
                break
            attributes = [info.to_condition_attributes() for info in infos]
            # Lengths from the infos: the batch holds no audio when the dataset reads cached latents.
            audio = self.sample_audio(attributes, max(info.total_frames for info in infos),
                                      [(self.cfg.seed, "generate", i) for i in indices])
            done += list(zip(indices, audio, infos))
            self.step_done()
        gathered = distributed.gather_to_rank_zero(done)
        if gathered is not None:  # rank 0: every process's samples, written in the set's order
            for index, wav, info in sorted((item for part in gathered for item in part), key=lambda item: item[0]):
                write_samples(out_dir, wav[None], self.compression_model.sample_rate, [info], index,
                              self.cfg.generate.audio, self._tensorboard, self.epoch,
                              frame_rate=self.compression_model.frame_rate,
                              chord_labels=None if self.vocabulary is None else self.vocabulary.labels)
        logger.info("Generated %d samples in %s", wanted, out_dir)
        return {"num_samples": wanted, "seconds_per_sample": (time.time() - begin) / max(wanted, 1)}

def cycle(loader: Any, total: int, start: int = 0) -> Any:
    """Yield batches `start` to `total - 1` of the loader restarted each time it runs out.

    The `start` batches before are not loaded (`resume.batches_from`): a resumed epoch continues at
    the batch it stopped at.
    """
    count = start
    while count < total:
        for batch in batches_from(loader, count % len(loader)):
            yield batch
            count += 1
            if count >= total:
                return
