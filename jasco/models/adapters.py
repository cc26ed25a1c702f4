"""LoRA adapters on the JASCO network through `peft` (docs/FINETUNING.md, "LoRA").

The adapters are peft's own layers, injected in place (`peft.inject_adapter_in_model`), so the
network stays a `FlowMatchingModel`; its state_dict then names the wrapped weights
`<module>.base_layer.<weight>` and the adapters `<module>.lora_{A,B}.default.weight`. Targets are
module names (`nn.Linear`: `linear1`, `self_attn.out_proj`, a conditioner's `output_proj`) or
parameter names (the packed q/k/v `self_attn.in_proj_weight`, which is no module: peft's
`target_parameters`), each matched against the end of the full names.

An adapter folder (`save_adapter`) holds peft's files, `adapter_config.json` (with
`base_model_name_or_path`) and `adapter_model.safetensors` (keys `base_model.model.<name>`, as
`PeftModel.save_pretrained` writes them), and beside them `jasco_adapter.json` (the base model, the
run's config) and, when some weights were trained whole, `jasco_trained.safetensors` (published names).

`peft` is imported only here and only when used (`pip install jasco[finetune]`).
"""
from __future__ import annotations

import fnmatch
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from peft import LoraConfig

logger = logging.getLogger(__name__)

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
POINTER_FILE = "jasco_adapter.json"
TRAINED_FILE = "jasco_trained.safetensors"
# How PeftModel.save_pretrained prefixes the adapter weights of a wrapped model.
PEFT_PREFIX = "base_model.model."
WRAPPED = ".base_layer"
LORA_MARKERS = (".lora_A.", ".lora_B.")


class AdapterError(ValueError):
    """A LoRA setting or adapter folder that does not fit the model (the message names it)."""


def import_peft() -> Any:
    """The `peft` module, or an ImportError naming the extra to install."""
    try:
        import peft
        import peft.functional  # the API for models that are not PeftModel
    except ImportError as err:
        raise ImportError("LoRA fine-tuning needs peft: pip install 'jasco[finetune]' (or pip install peft), "
                          "or set finetune.lora.use=false") from err
    return peft


@dataclass(frozen=True)
class LoraSettings:
    """`finetune.lora` of a config: rank, alpha, dropout and target names."""

    rank: int
    alpha: float
    dropout: float
    target_modules: tuple[str, ...]

    @staticmethod
    def from_config(section: Any) -> LoraSettings:
        """From the `finetune.lora` section (a DictConfig or dict).

        Raises:
            AdapterError: rank < 1, alpha <= 0, dropout outside [0, 1) or no target.
        """
        rank, alpha, dropout = int(section["rank"]), float(section["alpha"]), float(section["dropout"])
        targets = tuple(str(t) for t in section["target_modules"] or ())
        if rank < 1:
            raise AdapterError(f"finetune.lora.rank={rank}: must be >= 1")
        if alpha <= 0:
            raise AdapterError(f"finetune.lora.alpha={alpha}: must be > 0")
        if not 0.0 <= dropout < 1.0:
            raise AdapterError(f"finetune.lora.dropout={dropout}: must be in [0, 1)")
        if not targets:
            raise AdapterError("finetune.lora.target_modules is empty: name the projections to adapt")
        return LoraSettings(rank, alpha, dropout, targets)


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def split_targets(model: nn.Module, targets: Sequence[str]) -> tuple[list[str], list[str]]:
    """`(module targets, parameter targets)`: each target names modules, else parameters, of `model`.

    Raises:
        AdapterError: a target matches neither a module nor a parameter (the message names it).
    """
    module_names = [name for name, _ in model.named_modules()]
    parameter_names = [name for name, _ in model.named_parameters()]
    modules, parameters = [], []
    for target in targets:
        if any(_matches(name, target) for name in module_names):
            modules.append(target)
        elif any(_matches(name, target) for name in parameter_names):
            parameters.append(target)
        else:
            raise AdapterError(f"finetune.lora.target_modules: {target!r} matches no module or parameter of the "
                               f"model (e.g. linear1, self_attn.out_proj, self_attn.in_proj_weight)")
    return modules, parameters


def lora_config(model: nn.Module, settings: LoraSettings, base_model: str | None = None) -> LoraConfig:
    """peft's LoraConfig for `settings` on `model` (module and parameter targets told apart)."""
    peft = import_peft()
    modules, parameters = split_targets(model, settings.target_modules)
    if parameters and settings.dropout:
        raise AdapterError(f"finetune.lora.dropout={settings.dropout} with parameter targets {parameters}: peft "
                           f"adapts a bare parameter without dropout; set finetune.lora.dropout=0 or adapt modules only")
    return peft.LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                           target_modules=modules, target_parameters=parameters or None,
                           base_model_name_or_path=base_model)


def add_lora(model: nn.Module, config: LoraConfig) -> nn.Module:
    """Inject `config`'s adapters into `model` in place (B = 0: the outputs do not change); returns it."""
    peft = import_peft()
    return peft.inject_adapter_in_model(config, model)


def has_lora(state: Iterable[str]) -> bool:
    """True when a state_dict's names hold LoRA adapters."""
    return any(marker in key for key in state for marker in LORA_MARKERS)


def is_lora_parameter(name: str) -> bool:
    """True for the name of an adapter weight."""
    return any(marker in name for marker in LORA_MARKERS)


def published_name(name: str) -> str:
    """The name a parameter of an adapted model has in the plain model (`.base_layer` dropped)."""
    return name.replace(WRAPPED, "")


def frozen_parameters(model: nn.Module) -> set[str]:
    """Published names of the parameters the model itself keeps frozen (the codec, a T5 encoder)."""
    return {published_name(name) for name, p in model.named_parameters() if not p.requires_grad}


def set_trainable(model: nn.Module, lora: bool, patterns: Sequence[str], frozen: set[str],
                  fresh: Iterable[str] = ()) -> list[str]:
    """Set `requires_grad`: adapters (with `lora`), parameters matching `patterns` and the `fresh` ones.

    Without `lora` and without patterns every parameter not in `frozen` trains (full fine-tuning).
    Patterns are `fnmatch` patterns of published parameter names (`emb.weight`,
    `condition_provider.conditioners.chords.*`). `frozen` (`frozen_parameters`, taken before the
    adapters were added: peft freezes everything else) never trains.

    Returns:
        The names of the trained parameters that are not adapters.

    Raises:
        AdapterError: a pattern matches no parameter.
    """
    names = {name: published_name(name) for name, _ in model.named_parameters()}
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(plain, pattern) for plain in names.values()):
            raise AdapterError(f"finetune.trainable: {pattern!r} matches no parameter of the model "
                               f"(fnmatch patterns of names such as condition_provider.conditioners.chords.emb.weight)")
    fresh = set(fresh)
    whole = []
    for name, param in model.named_parameters():
        plain = names[name]
        if is_lora_parameter(name):
            param.requires_grad_(lora)
            continue
        if plain in frozen:
            param.requires_grad_(False)
            continue
        trained = (not lora and not patterns) or plain in fresh or any(fnmatch.fnmatchcase(plain, p) for p in patterns)
        param.requires_grad_(trained)
        if trained:
            whole.append(name)
    return whole


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight (peft's `merge`) and put the plain layers back; returns `model`.

    The state_dict is then in the published layout.
    """
    peft = import_peft()
    layer_type = peft.tuners.tuners_utils.BaseTunerLayer
    # Innermost first: a wrapped attention module may hold a wrapped out_proj.
    for name, module in reversed(list(model.named_modules())):
        if isinstance(module, layer_type):
            module.merge(safe_merge=True)
            *path, leaf = name.split(".")
            parent = model.get_submodule(".".join(path))
            setattr(parent, leaf, module.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    return model


def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights of `model` by peft's names (`<module>.lora_A.weight`, adapter name dropped)."""
    peft = import_peft()
    # save_embedding_layers=False: no look-up of the base model's config on the hub.
    return peft.functional.get_peft_model_state_dict(model, save_embedding_layers=False)


def load_lora_state(model: nn.Module, state: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """Load adapter weights (peft's names) into an adapted `model`; every adapter must be given.

    Raises:
        AdapterError: adapters of the model missing from `state`, or weights it has no adapter for.
    """
    peft = import_peft()
    expected = set(lora_state(model))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise AdapterError(f"the adapter weights in {source} do not fit the adapted model: {len(missing)} missing "
                           f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    peft.functional.set_peft_model_state_dict(model, state)


def save_adapter(model: nn.Module, out_dir: str | os.PathLike, base_model: str, cfg_yaml: str,
                 trained: dict[str, torch.Tensor], version: str) -> Path:
    """Write an adapter folder (see the module docstring) for an adapted `model`.

    Args:
        model: the adapted network (its `peft_config['default']` is saved).
        out_dir: the folder (created).
        base_model: what the adapters apply to: a hub repo id, an export folder or a checkpoint.
        cfg_yaml: the run's config (it describes the network: new controls, vocabulary).
        trained: weights trained whole, by published name (written when not empty).
        version: the jasco version.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = model.peft_config["default"]
    config.base_model_name_or_path = base_model
    config.save_pretrained(str(out))
    weights = {PEFT_PREFIX + k: v.detach().cpu().contiguous() for k, v in lora_state(model).items()}
    save_file(weights, str(out / ADAPTER_WEIGHTS_FILE), metadata={"format": "pt"})
    if trained:
        save_file({k: v.detach().cpu().contiguous() for k, v in trained.items()}, str(out / TRAINED_FILE),
                  metadata={"format": "pt"})
    pointer = {"base_model": base_model, "xp.cfg": cfg_yaml, "trained": sorted(trained), "version": version}
    (out / POINTER_FILE).write_text(json.dumps(pointer, indent=2) + "\n")
    return out


@dataclass
class AdapterFolder:
    """What an adapter folder holds: the base it applies to, the run's config and the weights."""

    path: Path
    base_model: str
    cfg_yaml: str
    config: LoraConfig
    lora: dict[str, torch.Tensor]
    trained: dict[str, torch.Tensor]


def read_adapter(folder: str | os.PathLike) -> AdapterFolder:
    """Read an adapter folder written by `save_adapter`.

    Raises:
        AdapterError: a file is missing or malformed (named).
    """
    from safetensors.torch import load_file

    peft = import_peft()
    path = Path(folder).expanduser()
    for name in (ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, POINTER_FILE):
        if not (path / name).is_file():
            raise AdapterError(f"adapter folder {path} has no {name}: export one with jasco-export --adapter")
    try:
        pointer = json.loads((path / POINTER_FILE).read_text())
        base, cfg_yaml = pointer["base_model"], pointer["xp.cfg"]
    except (ValueError, KeyError, TypeError) as err:
        raise AdapterError(f"{path / POINTER_FILE} is not a jasco adapter pointer "
                           f"(needs base_model and xp.cfg): {err!r}") from err
    config = peft.LoraConfig.from_pretrained(str(path))
    raw = load_file(str(path / ADAPTER_WEIGHTS_FILE))
    lora = {k.removeprefix(PEFT_PREFIX): v for k, v in raw.items()}
    trained = load_file(str(path / TRAINED_FILE)) if (path / TRAINED_FILE).is_file() else {}
    return AdapterFolder(path, str(base), str(cfg_yaml), config, lora, trained)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """`{'lora', 'whole', 'frozen'}` parameter counts of a model after `set_trainable`."""
    counts = {"lora": 0, "whole": 0, "frozen": 0}
    for name, param in model.named_parameters():
        kind = "frozen" if not param.requires_grad else "lora" if is_lora_parameter(name) else "whole"
        counts[kind] += param.numel()
    return counts
