"""Build the codec, conditioners, fuser and FlowMatchingModel from a (published-layout) config.

Conditioners are declared the published way: `conditioners.NAME.model: KIND` plus
`conditioners.NAME.KIND: {kwargs}`; KIND is looked up in `CONDITIONER_REGISTRY`. Keys a builder
does not use are ignored, so a published `xp.cfg` builds our model.
"""
from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from jasco.controls.melody.salience import N_MELODY_BINS
from jasco.models.codec import PUBLISHED_LATENT_MEAN, PUBLISHED_LATENT_STD, EncodecCompressionModel
from jasco.models.flow_matching import FlowMatchingModel
from jasco.modules.conditioners import (
    BaseConditioner,
    ChordsConditioner,
    ConditionProvider,
    DrumsConditioner,
    HashedTextConditioner,
    MelodyConditioner,
    T5Conditioner,
)
from jasco.modules.fuser import FUSE_METHODS, ConditionFuser

logger = logging.getLogger(__name__)


def _to_dict(cfg: Any) -> dict:
    if cfg is None:
        return {}
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


def _call_with_known(fn: Callable, kwargs: dict, where: str) -> Any:
    """Call `fn` with the kwargs it accepts; log (not fail on) the others, published configs have extras."""
    params = inspect.signature(fn).parameters
    known = {k: v for k, v in kwargs.items() if k in params}
    ignored = sorted(set(kwargs) - set(known))
    if ignored:
        logger.debug("%s: ignoring config keys %s", where, ignored)
    return fn(**known)


# ---------------------------------------------------------------- conditioners
def _t5(cfg: dict, dim: int, codec: nn.Module | None, frames: int) -> BaseConditioner:
    return _call_with_known(T5Conditioner, {**cfg, "output_dim": dim}, "t5")


def _hashed_text(cfg: dict, dim: int, codec: nn.Module | None, frames: int) -> BaseConditioner:
    return _call_with_known(HashedTextConditioner, {**cfg, "output_dim": dim}, "hashed_text")


def _chords(cfg: dict, dim: int, codec: nn.Module | None, frames: int) -> BaseConditioner:
    return ChordsConditioner(cfg["out_dim"], card=cfg.get("card", 194), n_frames=frames)


def _melody(cfg: dict, dim: int, codec: nn.Module | None, frames: int) -> BaseConditioner:
    return MelodyConditioner(cfg["out_dim"], card=cfg.get("card", N_MELODY_BINS), n_frames=frames)


def _drums(cfg: dict, dim: int, codec: nn.Module | None, frames: int) -> BaseConditioner:
    if codec is None:
        raise ValueError("The drums conditioner needs the compression model (pass compression_model).")
    return _call_with_known(DrumsConditioner, {**cfg, "output_dim": cfg["out_dim"], "compression_model": codec},
                            "drum_latents")


ConditionerFactory = Callable[[dict, int, "nn.Module | None", int], BaseConditioner]
CONDITIONER_REGISTRY: dict[str, ConditionerFactory] = {
    "t5": _t5,
    "hashed_text": _hashed_text,
    "chords_emb": _chords,
    "melody": _melody,
    "drum_latents": _drums,
}


def get_condition_provider(cfg: DictConfig | dict, output_dim: int, compression_model: nn.Module | None = None,
                           n_frames: int = 500) -> ConditionProvider:
    """Conditioners from `cfg` = the `conditioners` section (`{name: {model: KIND, KIND: {...}}}`)."""
    conditioners = {}
    for name, section in _to_dict(cfg).items():
        if not isinstance(section, dict) or "model" not in section:
            continue  # e.g. `args` sections of older configs
        kind = section["model"]
        if kind not in CONDITIONER_REGISTRY:
            raise ValueError(f"conditioners.{name}.model={kind!r} is unknown; known: {sorted(CONDITIONER_REGISTRY)}")
        conditioners[name] = CONDITIONER_REGISTRY[kind](section.get(kind) or {}, output_dim, compression_model, n_frames)
    return ConditionProvider(conditioners)


def get_condition_fuser(cfg: DictConfig | dict) -> ConditionFuser:
    """Fuser from the `fuser` section (lists of condition names per method)."""
    cfg = _to_dict(cfg)
    fuse2cond = {k: v for k, v in cfg.items() if k in FUSE_METHODS}
    return ConditionFuser(fuse2cond, cross_attention_pos_emb=cfg.get("cross_attention_pos_emb", False),
                          cross_attention_pos_emb_scale=cfg.get("cross_attention_pos_emb_scale", 1.0))


# ---------------------------------------------------------------- codec
def get_compression_model(cfg: DictConfig | dict) -> EncodecCompressionModel:
    """The frozen codec named by `compression_model_checkpoint` (`codec_source_name` lists the forms)."""
    cfg = _to_dict(cfg)
    return EncodecCompressionModel.from_source(
        cfg.get("compression_model_checkpoint"),
        latent_mean=cfg.get("compression_model_latent_mean", PUBLISHED_LATENT_MEAN),
        latent_std=cfg.get("compression_model_latent_std", PUBLISHED_LATENT_STD))


# ---------------------------------------------------------------- flow model
def get_flow_matching_model(cfg: DictConfig | dict, compression_model: nn.Module | None) -> FlowMatchingModel:
    """The JASCO network from a full config (`transformer_lm`, `conditioners`, `fuser`, dropouts)."""
    cfg = _to_dict(cfg)
    lm = dict(cfg["transformer_lm"])
    frame_rate = cfg.get("compression_model_framerate", 50)
    duration = cfg.get("dataset", {}).get("segment_duration") or 10
    n_frames = int(round(duration * frame_rate))
    provider = get_condition_provider(cfg.get("conditioners", {}), lm["dim"], compression_model, n_frames)
    fuser = get_condition_fuser(cfg.get("fuser", {}))
    cfg_section = cfg.get("classifier_free_guidance", {})
    lm.update(cfg_dropout=cfg_section.get("training_dropout", 0.0),
              cfg_coef=cfg_section.get("inference_coef", 3.0),
              attribute_dropout=cfg.get("attribute_dropout", {}),
              condition_dropout_per_sample=cfg.get("condition_dropout_per_sample", False))
    # `two_step_cfg`, `emb_lr`, `n_q`, `card`, `memory_efficient`, ... do not concern this model.
    return _build_flow(provider, fuser, lm)


def _build_flow(provider: ConditionProvider, fuser: ConditionFuser, lm: dict) -> FlowMatchingModel:
    params = inspect.signature(FlowMatchingModel.__init__).parameters
    known = {k: v for k, v in lm.items() if k in params and k not in ("condition_provider", "fuser")}
    ignored = sorted(set(lm) - set(known))
    if ignored:
        logger.debug("transformer_lm: ignoring keys %s", ignored)
    return FlowMatchingModel(provider, fuser, **known)


def get_jasco_model(cfg: DictConfig | dict, compression_model: nn.Module | None = None,
                    device: str | torch.device | None = None) -> FlowMatchingModel:
    """Codec (from config unless given) + flow model, on `device` (default `cfg.device`)."""
    if compression_model is None:
        compression_model = get_compression_model(cfg)
    model = get_flow_matching_model(cfg, compression_model)
    device = device or _to_dict(cfg).get("device", "cpu")
    return model.to(device)
