"""Exponential moving average of the trainable weights of a dict of modules.

Only floating-point parameters that require grad and floating-point buffers are averaged: frozen
parameters (the codec inside the drums conditioner) never change, so averaging them would only
double their memory. The EMA keeps the dtype of each tensor and lives on `device` (None: the
tensor's own device). Under FSDP the averages are sharded like the parameters (DTensors);
on the parameters' device (`device` is not used for them); `full_state_dict` gathers them whole for
checkpoints, and `load_state_dict` takes whole tensors.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from jasco.solvers.distributed import full_tensors, like

__all__ = ["ModuleDictEMA"]


def _tracked(module: nn.Module) -> dict[str, torch.Tensor]:
    """Live tensors that the EMA follows, by their state_dict name."""
    tensors = {name: p for name, p in module.named_parameters()
               if p.requires_grad and p.is_floating_point()}
    tensors.update({name: b for name, b in module.named_buffers() if b.is_floating_point()})
    return tensors


class ModuleDictEMA:
    """Exponential moving average of the trainable parameters and float buffers of a `ModuleDict`.

    Each `step()` moves every average towards the live value with weight `w`:
    `ema = ema * (1 - w) + value * w`.
    - `unbias=False`: `w = 1 - decay` (plain EMA, started from the weights at construction).
    - `unbias=True` (published audiocraft recipe): a running count `c = c * decay + 1` (c = 0 at
      construction) and `w = 1 / c`. The first step copies the live weights (w = 1) and `w` tends
      to `1 - decay` as `c -> 1 / (1 - decay)`, so the average is not biased towards the
      initialisation during the first ~1 / (1 - decay) steps.
    """

    def __init__(self, module_dict: nn.ModuleDict, decay: float = 0.99, unbias: bool = True,
                 device: str | torch.device | None = None) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay} (optim.ema.decay)")
        self.module_dict = module_dict
        self.decay = float(decay)
        self.unbias = unbias
        self.device: torch.device | None = torch.device(device) if device is not None else None
        self.count = 0.0
        self.state: dict[str, dict[str, torch.Tensor]] = {}
        for name, module in module_dict.items():
            # FSDP's sharded parameters (DTensors) keep their averages beside them, whatever `device`.
            self.state[name] = {key: value.detach().clone() if hasattr(value, "device_mesh")
                                else value.detach().to(self.device or value.device, copy=True)
                                for key, value in _tracked(module).items()}

    @torch.no_grad()
    def step(self) -> None:
        """Fold the current live weights into the averages."""
        if self.unbias:
            self.count = self.count * self.decay + 1
            weight = 1.0 / self.count
        else:
            weight = 1.0 - self.decay
        for name, module in self.module_dict.items():
            live = _tracked(module)
            for key, average in self.state[name].items():
                # lerp keeps the average exactly equal to a constant input (no rounding drift).
                average.lerp_(live[key].detach().to(average.device, average.dtype), weight)

    def state_dict(self) -> dict[str, Any]:
        """`{'state': {module_name: {tensor_name: tensor}}, 'count': float}` (tensors not copied)."""
        return {"state": self.state, "count": self.count}

    def full_state_dict(self) -> dict[str, Any]:
        """`state_dict()` with whole tensors on the CPU (FSDP: gathered; collective, every process calls it)."""
        return {"state": {name: full_tensors(averages) for name, averages in self.state.items()}, "count": self.count}

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore averages saved by `state_dict()`; names and shapes must match exactly."""
        if "state" not in state or "count" not in state:
            raise ValueError(f"EMA state must have keys 'state' and 'count', got {sorted(state)}: "
                             "was it saved by ModuleDictEMA.state_dict()?")
        saved = state["state"]
        if set(saved) != set(self.state):
            raise ValueError(f"EMA state holds modules {sorted(saved)} but this EMA tracks "
                             f"{sorted(self.state)}: the checkpoint was made for another model layout")
        for name, averages in self.state.items():
            missing = sorted(set(averages) - set(saved[name]))
            unexpected = sorted(set(saved[name]) - set(averages))
            if missing or unexpected:
                raise ValueError(f"EMA state of module {name!r} does not match the model: missing "
                                 f"{missing[:5]}, unexpected {unexpected[:5]} (of {len(missing)} / "
                                 f"{len(unexpected)}): the checkpoint was made for another model")
            for key, average in averages.items():
                value = saved[name][key]
                if value.shape != average.shape:
                    raise ValueError(f"EMA tensor {name}.{key} has shape {tuple(value.shape)} in the "
                                     f"checkpoint but {tuple(average.shape)} in the model")
                average.copy_(like(value, average))  # a whole tensor becomes this rank's shard under FSDP
        self.count = float(state["count"])

    @torch.no_grad()
    def copy_to(self, module_dict: nn.ModuleDict) -> None:
        """Copy the averages into the matching tensors of `module_dict` (same layout as tracked)."""
        for name, averages in self.state.items():
            if name not in module_dict:
                raise KeyError(f"copy_to: module {name!r} tracked by the EMA is not in the target "
                               f"ModuleDict (has {sorted(module_dict.keys())})")
            live = _tracked(module_dict[name])
            for key, average in averages.items():
                if key not in live:
                    raise KeyError(f"copy_to: tensor {name}.{key} tracked by the EMA is not a trainable "
                                   "float parameter or buffer of the target module")
                live[key].copy_(average)

    @contextmanager
    def swap(self) -> Iterator[None]:
        """Run the block with the EMA weights in the live modules, then restore the live weights."""
        with torch.no_grad():
            backup = {name: {key: value.detach().clone() for key, value in _tracked(module).items()
                             if key in self.state[name]}
                      for name, module in self.module_dict.items()}
            self.copy_to(self.module_dict)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, module in self.module_dict.items():
                    live = _tracked(module)
                    for key, value in backup[name].items():
                        live[key].copy_(value)
