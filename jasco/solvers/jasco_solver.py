"""JascoSolver: flow-matching training of JASCO on codec latents (docs/MODEL.md, "Flow matching").

Shapes: `B` batch, `C` channels, `N` samples, `T` latent frames, `F` flow dim (128).
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from typing import Any

import flashy
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from jasco.audio.io import SOUNDFILE_EXTENSIONS
from jasco.controls.chords.vocabulary import ChordVocabulary
from jasco.data.audio_dataset import EmptyDatasetError
from jasco.data.jasco_dataset import JascoDataset, JascoInfo
from jasco.data.latents import verify_latent_cache
from jasco.models import flow
from jasco.models.builders import get_compression_model, get_flow_matching_model
from jasco.environment import resolve_dataset_path
from jasco.solvers.base import StandardSolver
from jasco.solvers.continuation import initial_state_from
from jasco.solvers.ema import ModuleDictEMA
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
        if start is not None:
            self.model.load_state_dict(start, strict=True)
        params = [p for p in self.model.parameters() if p.requires_grad]
        fused = cfg.optim.get("fused", "auto")
        fused = self.device.type == "cuda" if fused == "auto" else bool(fused)
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
        self.autocast_dtype = getattr(torch, cfg.autocast_dtype)
        if cfg.autocast and self.device.type == "cpu" and self.autocast_dtype == torch.float16:
            logger.warning("autocast_dtype=float16 is slow and unsupported on CPU; using bfloat16")
            self.autocast_dtype = torch.bfloat16
        if cfg.autocast and self.autocast_dtype == torch.float16:
            self.scaler = torch.amp.GradScaler(self.device.type)
        self.updates = 0

    def autocast(self) -> torch.autocast:
        """Mixed precision for the flow network (the codec always runs in fp32)."""
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=bool(self.cfg.autocast))

    def build_dataloaders(self) -> None:
        cfg = self.cfg
        world = flashy.distrib.world_size()
        if cfg.dataset.batch_size % world != 0:
            raise ValueError(f"dataset.batch_size={cfg.dataset.batch_size} (global) must be divisible by "
                             f"the world size {world}")
        self.batch_size = cfg.dataset.batch_size // world
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
            self.dataloaders[split] = flashy.distrib.loader(
                dataset, batch_size=self.batch_size, shuffle=False, num_workers=cfg.dataset.num_workers,
                collate_fn=dataset.collater, drop_last=split == "train")

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

    def run_step(self, batch: tuple[torch.Tensor, list[JascoInfo]], train: bool,
                 generator: torch.Generator | None = None) -> dict[str, float]:
        """Flow-matching loss on one batch; in training, also the optimizer update."""
        wav, infos = batch
        attributes = [info.to_condition_attributes() for info in infos]
        if train:
            attributes = self.model.apply_condition_dropout(attributes)
        z1 = self.latents_of(wav, infos)
        with self.autocast():
            condition_tensors = self.model.condition_tensors(attributes)
            z0, t, z_t = flow.sample_training_point(z1, generator=generator)
            v = self.model(z_t, t, condition_tensors=condition_tensors)
        loss = flow.flow_matching_loss(v, z0, z1, t, self.cfg.get("loss_func", "increasing"))
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"Loss is {loss.item()} at update {self.updates} (epoch {self.epoch}) on a batch of tracks "
                f"(path@seek): {batch_tracks(infos)}. Lower optim.lr, check the data (silent or clipped audio), "
                f"or disable fp16 autocast (autocast_dtype=bfloat16).")
        metrics = {"loss": loss.item()}
        if train:
            metrics.update(self.optimizer_step(loss))
        return metrics

    def optimizer_step(self, loss: torch.Tensor) -> dict[str, float]:
        """Backward, gradient sync and clipping, step, scheduler and EMA updates."""
        self.optimizer.zero_grad(set_to_none=True)
        params = [p for p in self.model.parameters() if p.requires_grad]
        # optim.eager_sync: all-reduce each gradient as soon as backward produces it, else after.
        eager = self.cfg.optim.eager_sync
        with flashy.distrib.eager_sync_gradients(params) if eager else nullcontext():
            (loss if self.scaler is None else self.scaler.scale(loss)).backward()
        if not eager:
            flashy.distrib.sync_gradients(params)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        metrics = {}
        if self.cfg.optim.max_norm:
            metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.max_norm))
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

    # ------------------------------------------------------------------ stages
    def _loop(self, split: str, train: bool, num_updates: int | None = None,
              generator: torch.Generator | None = None) -> dict[str, float]:
        loader = self.dataloaders[split]
        loader.dataset.set_epoch(self.epoch)
        total = num_updates or len(loader)
        progress = self.log_progress(split, cycle(loader, total), total=total,
                                     updates=max(1, total // max(1, self.cfg.logging.log_updates)))
        average = flashy.averager()
        metrics: dict[str, float] = {}
        begin = time.time()
        for batch in progress:
            step_metrics = self.run_step(batch, train, generator)
            step_metrics["samples_per_s"] = batch[0].shape[0] * flashy.distrib.world_size() / max(time.time() - begin, 1e-9)
            begin = time.time()
            metrics = average(step_metrics)
            progress.update(**metrics)
            if train:
                self.log_scalars("train_step", step_metrics, self.updates)
        return flashy.distrib.average_metrics(metrics, total)

    def train(self) -> dict[str, float]:
        self.model.train()
        return self._loop("train", True, self.cfg.optim.updates_per_epoch)

    def valid(self) -> dict[str, float]:
        self.model.eval()
        # Same noise and times every epoch, so valid losses are comparable across epochs.
        generator = torch.Generator(self.device).manual_seed(self.cfg.seed)
        return self._loop("valid", False, generator=generator)

    def evaluate(self) -> dict[str, float]:
        """Loss of the best state at fixed times t, unweighted: how well each part of the path is fit."""
        self.model.eval()
        loader = self.dataloaders.get("evaluate") or self.dataloaders["valid"]
        loader.dataset.set_epoch(0)
        times = [0.1, 0.3, 0.5, 0.7, 0.9]
        sums = {t: 0.0 for t in times}
        count = 0
        generator = torch.Generator(self.device).manual_seed(self.cfg.seed)
        for wav, infos in loader:
            z1 = self.latents_of(wav, infos)
            tensors = self.model.condition_tensors([info.to_condition_attributes() for info in infos])
            for t_value in times:
                z0 = torch.randn(z1.shape, generator=generator, device=self.device)
                t = torch.full((z1.shape[0], 1, 1), t_value, device=self.device)
                with self.autocast():
                    v = self.model(flow.interpolate(z0, z1, t), t, condition_tensors=tensors)
                sums[t_value] += flow.flow_matching_loss(v, z0, z1, t, "uniform").item() * z1.shape[0]
            count += z1.shape[0]
        metrics = {f"loss_t{t:.1f}": s / max(count, 1) for t, s in sums.items()}
        metrics["loss"] = sum(metrics.values()) / len(times)
        return flashy.distrib.average_metrics(metrics, count)

    def generate(self) -> dict[str, float]:
        """Sample from the conditions of the generate set; write wavs, condition JSON and pictures."""
        self.model.eval()
        loader = self.dataloaders.get("generate") or self.dataloaders["valid"]
        loader.dataset.set_epoch(0)
        lm = self.cfg.generate.lm
        generator = torch.Generator(self.device).manual_seed(self.cfg.seed)
        out_dir = self.folder / self.cfg.generate.path / str(self.epoch)
        wanted = self.cfg.dataset.generate.num_samples
        written = 0
        begin = time.time()
        for _, infos in loader:
            infos = infos[: wanted - written]
            attributes = [info.to_condition_attributes() for info in infos]
            # Lengths from the infos: the batch holds no audio when the dataset reads cached latents.
            n_samples = max(info.total_frames for info in infos)
            n_frames = math.ceil(n_samples / self.compression_model.hop_length)
            with self.autocast():
                latents = self.model.generate(attributes, max_gen_len=n_frames, cfg_coef_all=lm.cfg_coef_all,
                                              cfg_coef_txt=lm.cfg_coef_txt, solver=lm.solver,
                                              euler_steps=lm.euler_steps, ode_atol=lm.ode_atol,
                                              ode_rtol=lm.ode_rtol, generator=generator)
            audio = self.compression_model.decode(latents.float())
            if flashy.distrib.is_rank_zero():
                write_samples(out_dir, audio, self.compression_model.sample_rate, infos, written,
                              self.cfg.generate.audio, self._tensorboard, self.epoch,
                              frame_rate=self.compression_model.frame_rate,
                              chord_labels=None if self.vocabulary is None else self.vocabulary.labels)
            written += len(infos)
            if written >= wanted:
                break
        logger.info("Generated %d samples in %s", written, out_dir)
        return {"num_samples": written, "seconds_per_sample": (time.time() - begin) / max(written, 1)}


def cycle(loader: Any, total: int) -> Any:
    """Yield `total` batches, restarting the loader when it runs out."""
    count = 0
    while count < total:
        for batch in loader:
            yield batch
            count += 1
            if count >= total:
                return
