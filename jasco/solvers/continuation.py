"""`continue_from`: start a run from a published/exported model or another experiment's best state.

With `finetune.new_controls` (docs/FINETUNING.md, "New controls and vocabularies"), the named
conditioners may differ from the starting model's or be absent from it: their weights are created
fresh, the input projection gains zero columns for a new temporal control (so the run starts with
the starting model's outputs), and every other weight must match (`load_initial_state`).
A training checkpoint of a LoRA run is merged (`merge_adapted_state`) before it is used.

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

from jasco.controls.chords.vocabulary import ChordVocabulary
from jasco.environment import dora_dir
from jasco.models.adapters import has_lora
from jasco.models.flow_matching import TEMPORAL_CONDITIONS
from jasco.models.loaders import (
    MODEL_FILE,
    ModelLoadError,
    best_state_of,
    load_jasco_model,
    merge_adapted_state,
    recorded_chord_vocabulary,
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
# Width key of each temporal control (conditioner name) in `transformer_lm`.
CONTROL_DIM_KEYS = {"chords": "transformer_lm.chords_dim", "self_wav": "transformer_lm.drums_dim",
                    "melody": "transformer_lm.melody_dim"}
CONDITIONER_PREFIX = "condition_provider.conditioners."
INPUT_PROJECTION = "emb.weight"


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
    source_cfg = _as_dict(state["xp.cfg"])
    if has_lora(best):  # a LoRA run: its adapters folded into the weights, published layout
        best = merge_adapted_state(best, source_cfg, path)
    return best, source_cfg


def _explained_by_new_controls(key: str, ours: Any, theirs: Any, controls: list[str]) -> bool:
    """True when an architecture difference only concerns the run's `finetune.new_controls`."""
    if key.startswith("conditioners."):
        return key.split(".")[1] in controls
    if key in CONTROL_DIM_KEYS.values():
        return any(CONTROL_DIM_KEYS.get(name) == key for name in controls)
    if key.startswith("fuser."):
        def others(value: Any) -> list:
            return sorted(v for v in value or [] if v not in controls)
        return others(ours) == others(theirs)
    return False


def _temporal_dims(cfg: dict) -> dict[str, int]:
    return {name: int(_select(cfg, CONTROL_DIM_KEYS[name]) or 0) for name in TEMPORAL_CONDITIONS}


def grow_input_projection(weight: torch.Tensor, flow_dim: int, source_dims: dict[str, int],
                          run_dims: dict[str, int]) -> torch.Tensor:
    """The input projection `emb.weight [D, F + controls]` for the run's temporal controls.

    Column blocks are `[latents, chords, drums, melody]` (the order of `TEMPORAL_CONDITIONS`, absent ones
    zero-wide). A block the starting model has, at the same width, is copied; a new one is zero, so the
    new control does not change the output until it is trained.

    Raises:
        ContinuationError: a control present in both with different widths.
    """
    def starts(dims: dict[str, int]) -> dict[str, int]:
        out, at = {}, flow_dim
        for name in TEMPORAL_CONDITIONS:
            out[name], at = at, at + dims[name]
        return out

    grown = weight.new_zeros(weight.shape[0], flow_dim + sum(run_dims.values()))
    grown[:, :flow_dim] = weight[:, :flow_dim]
    old, new = starts(source_dims), starts(run_dims)
    for name in TEMPORAL_CONDITIONS:
        if run_dims[name] and source_dims[name]:
            if run_dims[name] != source_dims[name]:
                raise ContinuationError(f"{CONTROL_DIM_KEYS[name]}: this run {run_dims[name]} / starting model "
                                        f"{source_dims[name]}: a control's width cannot change while fine-tuning")
            grown[:, new[name]:new[name] + run_dims[name]] = weight[:, old[name]:old[name] + source_dims[name]]
    return grown


def load_initial_state(model: torch.nn.Module, state: dict[str, torch.Tensor], controls: list[str]) -> None:
    """Load the starting weights: those of the `controls` conditioners stay as built (fresh), every other
    weight must be in `state` with the model's shape.

    Raises:
        ContinuationError: weights missing from `state`, unexpected in it, or of another shape (named).
    """
    prefixes = tuple(f"{CONDITIONER_PREFIX}{name}." for name in controls)
    expected = model.state_dict()
    loaded = {k: v for k, v in state.items() if not k.startswith(prefixes)}
    missing = sorted(k for k in expected if k not in loaded and not k.startswith(prefixes))
    unexpected = sorted(k for k in loaded if k not in expected)
    shapes = sorted(f"{k} {tuple(loaded[k].shape)} -> {tuple(v.shape)}" for k, v in expected.items()
                    if k in loaded and loaded[k].shape != v.shape)
    if missing or unexpected or shapes:
        raise ContinuationError(
            f"the continue_from weights do not fit this run's model: {len(missing)} missing (e.g. {missing[:4]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:4]}), {len(shapes)} of another shape "
            f"(e.g. {shapes[:4]}). Only the conditioners of finetune.new_controls={controls} may differ.")
    fresh = {k: v for k, v in expected.items() if k.startswith(prefixes)}
    model.load_state_dict({**loaded, **fresh}, strict=True)


def adopt_architecture(cfg: DictConfig, source_cfg: dict) -> None:
    """`continue_from_config=true`: copy the starting model's architecture keys into `cfg`."""
    with open_dict(cfg):
        for key in ARCHITECTURE_KEYS:
            value = _select(source_cfg, key)
            if value is not None:
                OmegaConf.update(cfg, key, value, merge=False)


def check_chord_vocabulary(cfg: DictConfig, source_cfg: dict[str, Any]) -> None:
    """The run's `chords_vocabulary` must index chords as the starting model was trained to (e.g. `published`
    for the published models): a different label order would silently condition it on the wrong chords.

    Raises:
        ContinuationError: the two vocabularies differ in size or order (names the key to set).
    """
    source = str(cfg.continue_from).removeprefix("//pretrained/")
    recorded = recorded_chord_vocabulary(source_cfg, source)
    spec = str(cfg.get("chords_vocabulary", "builtin"))
    if recorded is None:
        logger.warning("continue_from=%s records no chord vocabulary: chords_vocabulary=%s is assumed to be the one "
                       "it was trained with", cfg.continue_from, spec)
        return
    try:
        theirs = ChordVocabulary.from_spec(recorded).labels
    except (OSError, ValueError) as err:
        logger.warning("continue_from=%s was trained with chords_vocabulary=%s, which cannot be read here (%s): "
                       "chords_vocabulary=%s is assumed to match it", cfg.continue_from, recorded, err, spec)
        return
    if ChordVocabulary.from_spec(spec).labels != theirs:
        raise ContinuationError(
            f"continue_from={cfg.continue_from} was trained with the chord vocabulary {recorded!r} but this run has "
            f"chords_vocabulary={spec!r} (another label order): set chords_vocabulary={recorded}, or "
            f"finetune.new_controls=[chords] to train a new chord embedding.")


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
    controls = [str(name) for name in cfg.finetune.new_controls or ()]
    differences = {k: (a, b) for k, (a, b) in differences.items() if not _explained_by_new_controls(k, a, b, controls)}
    if differences:
        lines = "\n".join(f"  {k}: this run {a!r} / starting model {b!r}" for k, (a, b) in differences.items())
        raise ContinuationError(
            f"continue_from={cfg.continue_from} has a different architecture:\n{lines}\n"
            f"Override these keys to match, or pass continue_from_config=true to adopt the starting model's.")
    if "chords" in (cfg.get("conditioners") or {}) and "chords" not in controls:
        check_chord_vocabulary(cfg, source_cfg)
    source_dims, run_dims = _temporal_dims(source_cfg), _temporal_dims(_as_dict(cfg))
    if source_dims != run_dims and INPUT_PROJECTION in state:
        flow_dim = int(_select(_as_dict(cfg), "transformer_lm.flow_dim"))
        state = {**state, INPUT_PROJECTION: grow_input_projection(state[INPUT_PROJECTION], flow_dim,
                                                                  source_dims, run_dims)}
    logger.info("Starting from the weights of %s%s", cfg.continue_from,
                f" with the new controls {controls}" if controls else "")
    return state
