"""Build the codec, conditioners, fuser and FlowMatchingModel from a config.

Conditioners are declared the published way: `conditioners.NAME.model: KIND` plus
`conditioners.NAME.KIND: {kwargs}`; KIND is looked up in `CONDITIONER_REGISTRY`. The builders are
strict: a key they do not know is an error that names it and the known ones, so a typo in an
override cannot silently do nothing. A published `xp.cfg` also carries keys that do not concern
this model (`transformer_lm.n_q`, ...): `jasco.models.loaders.model_config` keeps only the keys
listed here (`TRANSFORMER_LM_KEYS`, `CONDITIONER_REGISTRY[kind].keys`, ...) before building.
"""
from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from jasco.controls.melody.salience import N_MELODY_BINS
from jasco.environment import resolve_device
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


def _argument_names(fn: Callable, supplied: tuple[str, ...] = ()) -> frozenset[str]:
    """Arguments of `fn` that a config section may set (`supplied` ones come from elsewhere)."""
    return frozenset(name for name in inspect.signature(fn).parameters if name not in ("self", *supplied))


def check_keys(section: Mapping[str, Any], known: Iterable[str], where: str) -> None:
    """Raise ValueError naming the keys of config section `where` that are not in `known`."""
    known = sorted(known)
    unknown = sorted(str(key) for key in section if key not in known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known keys: {known}")


# `transformer_lm` sets the FlowMatchingModel arguments; these come from other sections instead.
_SUPPLIED_FLOW_ARGS = ("condition_provider", "fuser", "cfg_dropout", "attribute_dropout",
                       "condition_dropout_per_sample")
TRANSFORMER_LM_KEYS = _argument_names(FlowMatchingModel.__init__, _SUPPLIED_FLOW_ARGS)
FUSER_KEYS = frozenset(FUSE_METHODS) | {"cross_attention_pos_emb", "cross_attention_pos_emb_scale"}
CLASSIFIER_FREE_GUIDANCE_KEYS = frozenset({"training_dropout"})


# ---------------------------------------------------------------- conditioners
def _t5(cfg: dict, dim: int, codec: nn.Module | None, frames: int) -> BaseConditioner:
    return T5Conditioner(output_dim=dim, **cfg)


def _hashed_text(cfg: dict, dim: int, codec: nn.Module | None, frames: int) -> BaseConditioner:
    return HashedTextConditioner(output_dim=dim, **cfg)


def _chords(cfg: dict, dim: int, codec: nn.Module | None, frames: int) -> BaseConditioner:
    return ChordsConditioner(cfg["out_dim"], card=cfg.get("card", 194), n_frames=frames)


def _melody(cfg: dict, dim: int, codec: nn.Module | None, frames: int) -> BaseConditioner:
    return MelodyConditioner(cfg["out_dim"], card=cfg.get("card", N_MELODY_BINS), n_frames=frames)


def _drums(cfg: dict, dim: int, codec: nn.Module | None, frames: int) -> BaseConditioner:
    if codec is None:
        raise ValueError("The drums conditioner needs the compression model (pass compression_model).")
    kwargs = {key: value for key, value in cfg.items() if key != "out_dim"}
    return DrumsConditioner(cfg["out_dim"], codec, **kwargs)


@dataclass(frozen=True)
class ConditionerKind:
    """One choice of `conditioners.NAME.model`: how to build it, and the keys of its section.

    Attributes:
        build: `build(section, model_dim, compression_model, n_frames)` → the conditioner.
        keys: the keys `conditioners.NAME.KIND` may hold.
    """

    build: Callable[[dict, int, nn.Module | None, int], BaseConditioner]
    keys: frozenset[str]


CONDITIONER_REGISTRY: dict[str, ConditionerKind] = {
    "t5": ConditionerKind(_t5, _argument_names(T5Conditioner, ("output_dim",))),
    "hashed_text": ConditionerKind(_hashed_text, _argument_names(HashedTextConditioner, ("output_dim",))),
    "chords_emb": ConditionerKind(_chords, frozenset({"out_dim", "card"})),
    "melody": ConditionerKind(_melody, frozenset({"out_dim", "card"})),
    "drum_latents": ConditionerKind(
        _drums, _argument_names(DrumsConditioner, ("output_dim", "compression_model")) | {"out_dim"}),
}


def get_condition_provider(cfg: DictConfig | dict, output_dim: int, compression_model: nn.Module | None = None,
                           n_frames: int = 500) -> ConditionProvider:
    """Conditioners from `cfg` = the `conditioners` section (`{name: {model: KIND, KIND: {...}}}`).

    A section may also hold the kwargs of other kinds (a config switching `model` keeps them);
    only the selected kind's are read, and they must all be arguments of that kind.
    """
    conditioners = {}
    for name, section in _to_dict(cfg).items():
        if not isinstance(section, dict) or "model" not in section:
            raise ValueError(f"conditioners.{name} must be a mapping with a `model` key "
                             f"(one of {sorted(CONDITIONER_REGISTRY)})")
        kind = section["model"]
        if kind not in CONDITIONER_REGISTRY:
            raise ValueError(f"conditioners.{name}.model={kind!r} is unknown; known: {sorted(CONDITIONER_REGISTRY)}")
        check_keys(section, {"model", *CONDITIONER_REGISTRY}, f"conditioners.{name}")
        kwargs = section.get(kind) or {}
        check_keys(kwargs, CONDITIONER_REGISTRY[kind].keys, f"conditioners.{name}.{kind}")
        conditioners[name] = CONDITIONER_REGISTRY[kind].build(kwargs, output_dim, compression_model, n_frames)
    return ConditionProvider(conditioners)


def get_condition_fuser(cfg: DictConfig | dict) -> ConditionFuser:
    """Fuser from the `fuser` section (lists of condition names per method)."""
    cfg = _to_dict(cfg)
    check_keys(cfg, FUSER_KEYS, "fuser")
    fuse2cond = {method: cfg[method] for method in FUSE_METHODS if method in cfg}
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
def _check_dropout_names(attribute_dropout: dict, provider: ConditionProvider) -> None:
    """Every `attribute_dropout.KIND.NAME` must name a conditioner of that kind."""
    for kind, probabilities in attribute_dropout.items():
        check_keys(probabilities or {}, provider.names(kind), f"attribute_dropout.{kind}")


def get_flow_matching_model(cfg: DictConfig | dict, compression_model: nn.Module | None) -> FlowMatchingModel:
    """The JASCO network from a full config (`transformer_lm`, `conditioners`, `fuser`, dropouts).

    Raises:
        ValueError: a section holds a key that this model does not know (named in the message).
    """
    cfg = _to_dict(cfg)
    lm = dict(cfg["transformer_lm"])
    check_keys(lm, TRANSFORMER_LM_KEYS, "transformer_lm")
    frame_rate = cfg.get("compression_model_framerate", 50)
    duration = cfg.get("dataset", {}).get("segment_duration") or 10
    n_frames = int(round(duration * frame_rate))
    provider = get_condition_provider(cfg.get("conditioners", {}), lm["dim"], compression_model, n_frames)
    fuser = get_condition_fuser(cfg.get("fuser", {}))
    guidance = cfg.get("classifier_free_guidance") or {}
    check_keys(guidance, CLASSIFIER_FREE_GUIDANCE_KEYS, "classifier_free_guidance")
    attribute_dropout = cfg.get("attribute_dropout") or {}
    _check_dropout_names(attribute_dropout, provider)
    return FlowMatchingModel(provider, fuser, cfg_dropout=guidance.get("training_dropout", 0.0),
                             attribute_dropout=attribute_dropout,
                             condition_dropout_per_sample=cfg.get("condition_dropout_per_sample", False), **lm)


def get_jasco_model(cfg: DictConfig | dict, compression_model: nn.Module | None = None,
                    device: str | torch.device | None = None) -> FlowMatchingModel:
    """Codec (from config unless given) + flow model, on `device` (default: `cfg.device`, see `resolve_device`)."""
    if compression_model is None:
        compression_model = get_compression_model(cfg)
    model = get_flow_matching_model(cfg, compression_model)
    device = device or resolve_device(_to_dict(cfg).get("device", "cpu"))
    return model.to(device)
