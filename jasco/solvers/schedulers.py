"""Learning-rate schedules of the training recipes, and a builder from the `schedule` config section.

Every scheduler is a `torch.optim.lr_scheduler.LRScheduler` whose learning rate is a closed-form
function of the update count `s` (`last_epoch`, 0 at construction, +1 per `step()`), so that
`state_dict()` / `load_state_dict()` resume exactly the same sequence. `lr` below is the base
learning rate of a parameter group (its `initial_lr`).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ExponentialLR, LRScheduler, StepLR

__all__ = [
    "CosineLRScheduler",
    "LinearWarmupLRScheduler",
    "InverseSquareRootLRScheduler",
    "PolynomialDecayLRScheduler",
    "build_lr_scheduler",
]


class _ClosedFormScheduler(LRScheduler):
    """Base class: the lr of each group is `_lr_at(step, base_lr)`."""

    def _lr_at(self, step: int, base_lr: float) -> float:
        raise NotImplementedError

    def get_lr(self) -> list[float]:
        """Learning rate of each parameter group at the current step."""
        return [self._lr_at(self.last_epoch, base_lr) for base_lr in self.base_lrs]


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _warmup(step: int, warmup_steps: int, init_lr: float, lr: float) -> float:
    """Linear ramp from `init_lr` (step 0) towards `lr` (reached at step `warmup_steps`)."""
    return init_lr + (lr - init_lr) * step / warmup_steps


class CosineLRScheduler(_ClosedFormScheduler):
    """Linear warmup, then one cosine decay to `lr_min_ratio * lr`, then constant.

    With `W = warmup_steps`, `D = cycle_length * (total_steps - W)`, `m = lr_min_ratio`:
    - `s < W`: `lr * s / W`
    - `W <= s < W + D`: `lr * (m + (1 - m) * (1 + cos(pi * (s - W) / D)) / 2)`
    - `s >= W + D`: `m * lr`
    """

    def __init__(self, optimizer: Optimizer, total_steps: int, warmup_steps: int,
                 lr_min_ratio: float = 0.0, cycle_length: float = 1.0) -> None:
        _check(warmup_steps >= 0, f"warmup_steps must be >= 0, got {warmup_steps}")
        _check(total_steps > warmup_steps,
               f"total_steps ({total_steps}) must exceed warmup_steps ({warmup_steps}): "
               "raise the number of updates or lower the warmup")
        _check(0.0 <= lr_min_ratio <= 1.0, f"lr_min_ratio must be in [0, 1], got {lr_min_ratio}")
        _check(cycle_length > 0, f"cycle_length must be > 0, got {cycle_length}")
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.lr_min_ratio = float(lr_min_ratio)
        self.cycle_length = float(cycle_length)
        super().__init__(optimizer)

    def _lr_at(self, step: int, base_lr: float) -> float:
        if step < self.warmup_steps:
            return _warmup(step, self.warmup_steps, 0.0, base_lr)
        decay_steps = self.cycle_length * (self.total_steps - self.warmup_steps)
        progress = (step - self.warmup_steps) / decay_steps
        if progress >= 1.0:
            return self.lr_min_ratio * base_lr
        ratio = self.lr_min_ratio + (1 - self.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return ratio * base_lr


class LinearWarmupLRScheduler(_ClosedFormScheduler):
    """Linear warmup from `warmup_init_lr`, then constant.

    - `s < W`: `warmup_init_lr + (lr - warmup_init_lr) * s / W`
    - `s >= W`: `lr`
    """

    def __init__(self, optimizer: Optimizer, warmup_steps: int, warmup_init_lr: float = 0.0) -> None:
        _check(warmup_steps >= 0, f"warmup_steps must be >= 0, got {warmup_steps}")
        _check(warmup_init_lr >= 0, f"warmup_init_lr must be >= 0, got {warmup_init_lr}")
        self.warmup_steps = int(warmup_steps)
        self.warmup_init_lr = float(warmup_init_lr)
        super().__init__(optimizer)

    def _lr_at(self, step: int, base_lr: float) -> float:
        if step < self.warmup_steps:
            return _warmup(step, self.warmup_steps, self.warmup_init_lr, base_lr)
        return base_lr


class InverseSquareRootLRScheduler(LinearWarmupLRScheduler):
    """Linear warmup from `warmup_init_lr`, then decay proportional to `1 / sqrt(s)`.

    - `s < W`: `warmup_init_lr + (lr - warmup_init_lr) * s / W`
    - `s >= W`: `lr * sqrt(W / s)` (continuous at `s = W`)

    `W` must be >= 1: the decay is anchored at the end of the warmup.
    """

    def __init__(self, optimizer: Optimizer, warmup_steps: int, warmup_init_lr: float = 0.0) -> None:
        _check(warmup_steps >= 1, f"warmup_steps must be >= 1 for the inverse square root schedule "
                                  f"(the decay is lr * sqrt(warmup / step)), got {warmup_steps}")
        super().__init__(optimizer, warmup_steps, warmup_init_lr)

    def _lr_at(self, step: int, base_lr: float) -> float:
        if step < self.warmup_steps:
            return super()._lr_at(step, base_lr)
        return base_lr * math.sqrt(self.warmup_steps / step)


class PolynomialDecayLRScheduler(_ClosedFormScheduler):
    """Zero lr, then linear warmup, then polynomial decay to `end_lr` at `total_steps`, constant after.

    With `Z = zero_lr_warmup_steps`, `W = warmup_steps`, `S = total_steps`, `p = power`:
    - `s < Z`: `0`
    - `Z <= s < Z + W`: `lr * (s - Z) / W`
    - `Z + W <= s < S`: `end_lr + (lr - end_lr) * (1 - (s - Z - W) / (S - Z - W)) ** p`
    - `s >= S`: `end_lr`
    """

    def __init__(self, optimizer: Optimizer, warmup_steps: int, total_steps: int, end_lr: float = 0.0,
                 zero_lr_warmup_steps: int = 0, power: float = 1.0) -> None:
        _check(warmup_steps >= 0, f"warmup_steps must be >= 0, got {warmup_steps}")
        _check(zero_lr_warmup_steps >= 0, f"zero_lr_warmup_steps must be >= 0, got {zero_lr_warmup_steps}")
        _check(total_steps > warmup_steps + zero_lr_warmup_steps,
               f"total_steps ({total_steps}) must exceed warmup_steps + zero_lr_warmup_steps "
               f"({warmup_steps} + {zero_lr_warmup_steps}): raise the number of updates or lower the warmup")
        _check(end_lr >= 0, f"end_lr must be >= 0, got {end_lr}")
        _check(power > 0, f"power must be > 0, got {power}")
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.end_lr = float(end_lr)
        self.zero_lr_warmup_steps = int(zero_lr_warmup_steps)
        self.power = float(power)
        super().__init__(optimizer)

    def _lr_at(self, step: int, base_lr: float) -> float:
        decay_start = self.zero_lr_warmup_steps + self.warmup_steps
        if step < self.zero_lr_warmup_steps:
            return 0.0
        if step < decay_start:
            return _warmup(step - self.zero_lr_warmup_steps, self.warmup_steps, 0.0, base_lr)
        if step >= self.total_steps:
            return self.end_lr
        remaining = 1 - (step - decay_start) / (self.total_steps - decay_start)
        return self.end_lr + (base_lr - self.end_lr) * remaining ** self.power


# ---------------------------------------------------------------------------------------------
# Builder from config.

def _required(section: Mapping[str, Any], kind: str, key: str) -> Any:
    value = section.get(key)
    if value is None:
        raise ValueError(f"schedule.{kind}.{key} is missing or null but lr_scheduler={kind!r} needs it: "
                         f"set schedule.{kind}.{key} in the solver config (or choose another lr_scheduler)")
    return value


def _build_cosine(opt: Optimizer, sec: Mapping[str, Any], total: int) -> LRScheduler:
    return CosineLRScheduler(opt, total_steps=total, warmup_steps=int(_required(sec, "cosine", "warmup")),
                             lr_min_ratio=float(_required(sec, "cosine", "lr_min_ratio")),
                             cycle_length=float(_required(sec, "cosine", "cycle_length")))


def _build_linear_warmup(opt: Optimizer, sec: Mapping[str, Any], total: int) -> LRScheduler:
    return LinearWarmupLRScheduler(opt, warmup_steps=int(_required(sec, "linear_warmup", "warmup")),
                                   warmup_init_lr=float(_required(sec, "linear_warmup", "warmup_init_lr")))


def _build_inverse_sqrt(opt: Optimizer, sec: Mapping[str, Any], total: int) -> LRScheduler:
    return InverseSquareRootLRScheduler(opt, warmup_steps=int(_required(sec, "inverse_sqrt", "warmup")),
                                        warmup_init_lr=float(_required(sec, "inverse_sqrt", "warmup_init_lr")))


def _build_polynomial_decay(opt: Optimizer, sec: Mapping[str, Any], total: int) -> LRScheduler:
    kind = "polynomial_decay"
    return PolynomialDecayLRScheduler(
        opt, warmup_steps=int(_required(sec, kind, "warmup")), total_steps=total,
        end_lr=float(_required(sec, kind, "end_lr")),
        zero_lr_warmup_steps=int(_required(sec, kind, "zero_lr_warmup_steps")),
        power=float(_required(sec, kind, "power")))


def _build_step(opt: Optimizer, sec: Mapping[str, Any], total: int) -> LRScheduler:
    return StepLR(opt, step_size=int(_required(sec, "step", "step_size")),
                  gamma=float(_required(sec, "step", "gamma")))


def _build_exponential(opt: Optimizer, sec: Mapping[str, Any], total: int) -> LRScheduler:
    return ExponentialLR(opt, gamma=float(_required(sec, "exponential", "lr_decay")))


_Builder = Callable[[Optimizer, Mapping[str, Any], int], LRScheduler]
LR_SCHEDULERS: dict[str, _Builder] = {
    "cosine": _build_cosine,
    "linear_warmup": _build_linear_warmup,
    "inverse_sqrt": _build_inverse_sqrt,
    "polynomial_decay": _build_polynomial_decay,
    "step": _build_step,
    "exponential": _build_exponential,
}
_NO_SCHEDULER = (None, "none", "null", "")


def build_lr_scheduler(optimizer: Optimizer, schedule_cfg: Mapping[str, Any] | DictConfig,
                       total_updates: int) -> LRScheduler | None:
    """Build the scheduler named by `schedule_cfg.lr_scheduler` from its section (None: no scheduler).

    Args:
        optimizer: the optimizer whose groups' lr is scheduled.
        schedule_cfg: the `schedule` section of the solver config (`lr_scheduler` plus one section
            per kind, e.g. `cosine: {warmup, lr_min_ratio, cycle_length}`).
        total_updates: total number of optimizer updates of the run (epochs * updates_per_epoch);
            the horizon of the cosine and polynomial decays.
    """
    if isinstance(schedule_cfg, DictConfig):
        schedule_cfg = OmegaConf.to_container(schedule_cfg, resolve=True)  # type: ignore[assignment]
    if "lr_scheduler" not in schedule_cfg:
        raise ValueError("schedule.lr_scheduler is missing: set it to one of "
                         f"{sorted(LR_SCHEDULERS)} or null")
    kind = schedule_cfg["lr_scheduler"]
    if isinstance(kind, str):
        kind = kind.strip().lower()
    if kind in _NO_SCHEDULER:
        return None
    if kind not in LR_SCHEDULERS:
        raise ValueError(f"schedule.lr_scheduler={kind!r} is unknown: choose one of "
                         f"{sorted(LR_SCHEDULERS)} or null")
    section = schedule_cfg.get(kind)
    if not isinstance(section, Mapping):
        raise ValueError(f"schedule.{kind} is missing (or not a mapping) but lr_scheduler={kind!r} needs it: "
                         f"add a schedule.{kind} section to the solver config")
    return LR_SCHEDULERS[kind](optimizer, section, int(total_updates))
