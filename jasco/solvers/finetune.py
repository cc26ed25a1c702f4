"""Fine-tuning setup of a run's network: starting weights, new controls, LoRA adapters, what trains.

`prepare_model` is what `JascoSolver.build_model` calls once the network is built: it loads the
`continue_from` weights (the parameters of `finetune.new_controls` created fresh, the rest
strictly), adds the `finetune.lora` adapters, sets which parameters train and logs it. A resumed
run gets the same adapters, then its own checkpoint (which holds them) is loaded over them.
"""
from __future__ import annotations

import fnmatch
import logging

import torch
from omegaconf import DictConfig
from torch import nn

from jasco.models import adapters
from jasco.solvers.continuation import load_initial_state

logger = logging.getLogger(__name__)

CONDITIONER_PREFIX = "condition_provider.conditioners."
INPUT_PROJECTION = "emb.weight"


def new_controls(cfg: DictConfig) -> list[str]:
    """`finetune.new_controls`: conditioner names created fresh instead of loaded."""
    return [str(name) for name in cfg.finetune.new_controls or ()]


def fresh_parameters(model: nn.Module, controls: list[str]) -> set[str]:
    """Published names of the parameters a run with new `controls` creates: theirs, and the input projection
    when one of them is a temporal control (its columns grow)."""
    conditioners = model.condition_provider.conditioners
    unknown = [name for name in controls if name not in conditioners]
    if unknown:
        raise ValueError(f"finetune.new_controls={controls}: {unknown} is not a conditioner of this run "
                         f"(it has {sorted(conditioners)})")
    prefixes = tuple(f"{CONDITIONER_PREFIX}{name}." for name in controls)
    names = {adapters.published_name(n) for n, _ in model.named_parameters()}
    fresh = {name for name in names if name.startswith(prefixes)}
    if any(name in model.temporal_dims for name in controls):
        fresh.add(INPUT_PROJECTION)
    return fresh


def configure(model: nn.Module, cfg: DictConfig) -> tuple[list[str], set[str]]:
    """Add the LoRA adapters of `finetune.lora` (if used) and set `requires_grad`.

    Returns:
        `(names trained whole, fresh names)`.
    """
    section = cfg.finetune
    fresh = fresh_parameters(model, new_controls(cfg))
    frozen = adapters.frozen_parameters(model)
    settings = adapters.LoraSettings.from_config(section.lora)  # checked even when off: errors at start
    use_lora = bool(section.lora.use)
    if use_lora:
        adapters.add_lora(model, adapters.lora_config(model, settings))
    patterns = [str(p) for p in section.trainable or ()]
    whole = adapters.set_trainable(model, use_lora, patterns, frozen, fresh)
    return whole, fresh


def prepare_model(model: nn.Module, cfg: DictConfig, start: dict[str, torch.Tensor] | None) -> None:
    """Load the starting weights (if any), add adapters, choose what trains, and log it (see module doc)."""
    if start is not None:
        load_initial_state(model, start, new_controls(cfg))
    elif new_controls(cfg):
        logger.info("finetune.new_controls=%s without continue_from (or resuming): nothing to load",
                    new_controls(cfg))
    whole, fresh = configure(model, cfg)
    counts = adapters.count_parameters(model)
    if cfg.finetune.lora.use:
        lora = cfg.finetune.lora
        logger.info("Fine-tuning with LoRA (rank %d, alpha %g) on %s: %.3f M adapter parameters",
                    lora.rank, lora.alpha, list(lora.target_modules), counts["lora"] / 1e6)
    if fresh:
        logger.info("New controls %s: created fresh and trained: %s", new_controls(cfg), sorted(fresh))
    if cfg.finetune.lora.use or cfg.finetune.trainable:
        shown = whole if len(whole) <= 20 else whole[:20] + [f"... {len(whole) - 20} more"]
        logger.info("Trained whole: %.3f M parameters %s; frozen: %.3f M", counts["whole"] / 1e6, shown,
                    counts["frozen"] / 1e6)
    else:
        # Frozen even here: parameters the model holds but never trains (e.g. the drums conditioner's codec).
        logger.info("%s: %.3f M trained parameters, %.3f M frozen",
                    "Full fine-tuning" if start is not None else "Training every weight", counts["whole"] / 1e6,
                    counts["frozen"] / 1e6)


def whole_state(model: nn.Module, cfg: DictConfig) -> dict[str, torch.Tensor]:
    """What an adapter export carries besides the adapters, by published name: the weights of an adapted
    `model` that `finetune.trainable` names, and every tensor of the `finetune.new_controls` (the base
    model lacks them or has other ones) with the grown input projection."""
    controls = new_controls(cfg)
    fresh = fresh_parameters(model, controls)
    prefixes = tuple(f"{CONDITIONER_PREFIX}{name}." for name in controls)
    patterns = [str(p) for p in cfg.finetune.trainable or ()]
    out = {}
    for name, value in model.state_dict().items():
        plain = adapters.published_name(name)
        if adapters.is_lora_parameter(name):
            continue
        if plain in fresh or plain.startswith(prefixes) or any(fnmatch.fnmatchcase(plain, p) for p in patterns):
            out[plain] = value.detach()
    return out
