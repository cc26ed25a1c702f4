"""`continue_from`: start a run from a published/exported model or another experiment's best state.

Sources (`ACCEPTED_SOURCES`): `//pretrained/<repo id or local dir>` (a published or exported model,
e.g. `facebook/jasco-chords-drums-400M`), `//sig/<SIG>` (another experiment), a `checkpoint.th`,
an experiment folder (holding `checkpoint.th`), an export folder (holding `state_dict.bin`, what
`jasco-export` writes; the same as `//pretrained/DIR`) or a `state_dict.bin` file.
A run that already has its own `checkpoint.th` resumes it instead (continue_from is ignored).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

from jasco.environment import dora_dir
from jasco.models.loaders import (
    MODEL_FILE,
    ModelLoadError,
    best_state_of,
    load_jasco_model,
)
from jasco.solvers.checkpoint import (
    CHECKPOINT_NAME,
    SIG_PREFIX,
    load_checkpoint,
    resolve_checkpoint,
)

logger = logging.getLogger(__name__)

PRETRAINED_PREFIX = "//pretrained/"
ACCEPTED_SOURCES = (f"{PRETRAINED_PREFIX}NAME_OR_DIR (a Hugging Face repo id or an exported folder), "
                    f"{SIG_PREFIX}SIG (another experiment), a {CHECKPOINT_NAME} file, an experiment folder (holding "
                    f"{CHECKPOINT_NAME}), an export folder (holding {MODEL_FILE}, written by jasco-export) or a "
                    f"{MODEL_FILE} file")

# Config keys that change the network's parameters: they must agree with the starting model.
ARCHITECTURE_KEYS = ("transformer_lm.dim", "transformer_lm.num_heads", "transformer_lm.num_layers",
                     "transformer_lm.hidden_scale", "transformer_lm.flow_dim", "transformer_lm.chords_dim",
                     "transformer_lm.drums_dim", "transformer_lm.melody_dim", "transformer_lm.norm_first",
                     "transformer_lm.bias_ff", "transformer_lm.bias_attn", "transformer_lm.bias_proj",
                     "transformer_lm.activation", "transformer_lm.positional_embedding",
                     "transformer_lm.skip_connections", "conditioners", "fuser")


class ContinuationError(ValueError):
    """The starting model cannot be loaded into this run's model."""


def _as_dict(cfg: Any) -> dict:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    if isinstance(cfg, str):
        return yaml.safe_load(cfg)
    return dict(cfg)


def _select(cfg: dict, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(_flatten(sub, f"{prefix}.{key}"))
        return out
    return {prefix: value}


def _active_conditioners(cfg: dict) -> dict:
    """Only the selected section of each conditioner (`model: t5` → its `t5` kwargs) matters."""
    out = {}
    for name, section in (cfg.get("conditioners") or {}).items():
        if isinstance(section, dict) and "model" in section:
            kind = section["model"]
            kwargs = {k: v for k, v in (section.get(kind) or {}).items()
                      if k in ("card", "out_dim", "name", "num_buckets", "dim")}
            out[name] = {"model": kind, **kwargs}
    return out


def _architecture(cfg: dict) -> dict[str, Any]:
    arch: dict[str, Any] = {}
    for key in ARCHITECTURE_KEYS:
        value = _active_conditioners(cfg) if key == "conditioners" else _select(cfg, key)
        if key == "fuser" and isinstance(value, dict):
            value = {k: sorted(v) for k, v in value.items() if isinstance(v, list) and v}
        if key.startswith("transformer_lm.") and value is None:
            value = 0 if key.endswith("_dim") else value
        arch.update(_flatten(value, key))
    return arch


def architecture_differences(run_cfg: Any, source_cfg: Any) -> dict[str, tuple[Any, Any]]:
    """`{key: (this run's value, starting model's value)}` for architecture keys that differ."""
    ours, theirs = _architecture(_as_dict(run_cfg)), _architecture(_as_dict(source_cfg))
    return {k: (ours.get(k), theirs.get(k)) for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)}


def _load_export(source: str) -> tuple[dict[str, torch.Tensor], dict]:
    """State_dict and config of a published / exported model (the model is built to match its keys)."""
    model = load_jasco_model(source, device="cpu")
    return model.state_dict(), _as_dict(model.cfg)


def load_source(source: str) -> tuple[dict[str, torch.Tensor], dict]:
    """The model state_dict and config of a `continue_from` source (one of `ACCEPTED_SOURCES`).

    Raises:
        ContinuationError: the source is none of the accepted forms (the message lists them), or
            a checkpoint without a best state.
        FileNotFoundError: `//sig/SIG` names an experiment without a checkpoint.
    """
    if source.startswith(PRETRAINED_PREFIX):
        name = source[len(PRETRAINED_PREFIX):]
        if not name.strip("/"):
            raise ContinuationError(f"continue_from={source} names no model. Accepted sources: {ACCEPTED_SOURCES}.")
        return _load_export(name)
    if source.startswith(SIG_PREFIX):
        path = resolve_checkpoint(source, dora_dir())
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            if (path / CHECKPOINT_NAME).is_file():
                path = path / CHECKPOINT_NAME
            elif (path / MODEL_FILE).is_file():
                return _load_export(str(path))
            else:
                raise ContinuationError(
                    f"continue_from={source}: the folder {path} holds neither {CHECKPOINT_NAME} (an experiment "
                    f"folder) nor {MODEL_FILE} (an export folder). Accepted sources: {ACCEPTED_SOURCES}.")
        elif not path.is_file():
            hint = (f" For a Hugging Face repo id write continue_from={PRETRAINED_PREFIX}{source}."
                    if source.count("/") == 1 and not source.startswith((".", "~")) else "")
            raise ContinuationError(f"continue_from={source}: {path} does not exist.{hint} "
                                    f"Accepted sources: {ACCEPTED_SOURCES}.")
        elif path.name == MODEL_FILE:
            return _load_export(str(path))
    state = load_checkpoint(path)
    if state.get("exported") is True:  # an export under another file name
        return _load_export(str(path))
    try:
        best = best_state_of(state, path)
    except ModelLoadError as err:
        raise ContinuationError(f"continue_from={source}: {err}") from err
    if "xp.cfg" not in state:
        raise ContinuationError(f"continue_from={source}: {path} has no 'xp.cfg', so it is not a JASCO checkpoint. "
                                f"Accepted sources: {ACCEPTED_SOURCES}.")
    return best, _as_dict(state["xp.cfg"])


def adopt_architecture(cfg: DictConfig, source_cfg: dict) -> None:
    """`continue_from_config=true`: copy the starting model's architecture keys into `cfg`."""
    with open_dict(cfg):
        for key in ARCHITECTURE_KEYS:
            value = _select(source_cfg, key)
            if value is not None:
                OmegaConf.update(cfg, key, value, merge=False)


def initial_state_from(cfg: DictConfig, folder: Path) -> dict[str, torch.Tensor] | None:
    """Weights to start from, or None (no continue_from, or the run resumes its own checkpoint).

    With `continue_from_config=true` the architecture keys of `cfg` are updated in place, so call
    this BEFORE building the model.
    """
    if not cfg.get("continue_from") or (folder / "checkpoint.th").exists():
        return None
    state, source_cfg = load_source(str(cfg.continue_from))
    if cfg.get("continue_from_config", False):
        adopt_architecture(cfg, source_cfg)
    differences = architecture_differences(cfg, source_cfg)
    if differences:
        lines = "\n".join(f"  {k}: this run {a!r} / starting model {b!r}" for k, (a, b) in differences.items())
        raise ContinuationError(
            f"continue_from={cfg.continue_from} has a different architecture:\n{lines}\n"
            f"Override these keys to match, or pass continue_from_config=true to adopt the starting model's.")
    logger.info("Starting from the weights of %s", cfg.continue_from)
    return state
