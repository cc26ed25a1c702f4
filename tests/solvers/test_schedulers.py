"""Tests for jasco/solvers/schedulers.py: closed-form lr values, resume, config builder, errors."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch.optim.lr_scheduler import ExponentialLR, StepLR

from jasco.solvers.schedulers import (
    CosineLRScheduler,
    InverseSquareRootLRScheduler,
    LinearWarmupLRScheduler,
    PolynomialDecayLRScheduler,
    build_lr_scheduler,
)

DEFAULT_CFG = Path(__file__).resolve().parents[2] / "config" / "solver" / "default.yaml"
LR = 2.0


def make_optimizer(lr: float = LR) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def lrs_at(scheduler, steps: list[int]) -> dict[int, float]:
    """Step the scheduler up to max(steps), recording the group lr at the requested steps."""
    optimizer = scheduler.optimizer
    seen = {}
    for step in range(max(steps) + 1):
        if step in steps:
            seen[step] = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
    return seen


def test_cosine_values():
    sched = CosineLRScheduler(make_optimizer(), total_steps=110, warmup_steps=10, lr_min_ratio=0.1)
    got = lrs_at(sched, [0, 5, 10, 60, 110, 150])
    assert got[0] == 0.0
    assert got[5] == pytest.approx(LR * 0.5)
    assert got[10] == pytest.approx(LR)
    assert got[60] == pytest.approx(LR * (0.1 + 0.9 * 0.5))  # half-way: cos(pi/2) = 0
    assert got[110] == pytest.approx(LR * 0.1)
    assert got[150] == pytest.approx(LR * 0.1)


def test_cosine_cycle_length_stretches_decay():
    sched = CosineLRScheduler(make_optimizer(), total_steps=20, warmup_steps=0, cycle_length=2.0)
    got = lrs_at(sched, [0, 10, 20, 30, 40, 45])
    assert got[0] == pytest.approx(LR)
    expected_10 = LR * 0.5 * (1 + math.cos(math.pi * 10 / 40))
    assert got[10] == pytest.approx(expected_10)
    assert got[20] == pytest.approx(LR * 0.5)
    assert got[40] == pytest.approx(0.0)
    assert got[45] == 0.0


def test_linear_warmup_values():
    sched = LinearWarmupLRScheduler(make_optimizer(), warmup_steps=4, warmup_init_lr=0.4)
    got = lrs_at(sched, [0, 1, 2, 4, 100])
    assert got[0] == pytest.approx(0.4)
    assert got[1] == pytest.approx(0.4 + (LR - 0.4) / 4)
    assert got[2] == pytest.approx((0.4 + LR) / 2)
    assert got[4] == pytest.approx(LR)
    assert got[100] == pytest.approx(LR)


def test_inverse_sqrt_values():
    sched = InverseSquareRootLRScheduler(make_optimizer(), warmup_steps=16)
    got = lrs_at(sched, [0, 8, 16, 64, 400])
    assert got[0] == 0.0
    assert got[8] == pytest.approx(LR / 2)
    assert got[16] == pytest.approx(LR)
    assert got[64] == pytest.approx(LR * 0.5)  # sqrt(16 / 64)
    assert got[400] == pytest.approx(LR * 0.2)  # sqrt(16 / 400)


def test_polynomial_decay_values():
    sched = PolynomialDecayLRScheduler(make_optimizer(), warmup_steps=10, total_steps=115, end_lr=0.2,
                                       zero_lr_warmup_steps=5, power=2.0)
    got = lrs_at(sched, [0, 4, 5, 10, 15, 65, 115, 130])
    assert got[0] == got[4] == 0.0
    assert got[5] == 0.0  # warmup starts from zero
    assert got[10] == pytest.approx(LR * 0.5)
    assert got[15] == pytest.approx(LR)
    assert got[65] == pytest.approx(0.2 + (LR - 0.2) * 0.5 ** 2)
    assert got[115] == pytest.approx(0.2)
    assert got[130] == pytest.approx(0.2)


def test_multiple_param_groups_scale_with_their_base_lr():
    optimizer = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1.0},
                                 {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.1}], lr=1.0)
    sched = LinearWarmupLRScheduler(optimizer, warmup_steps=2)
    optimizer.step()
    sched.step()
    assert sched.get_last_lr() == pytest.approx([0.5, 0.05])


@pytest.mark.parametrize("make", [
    lambda o: CosineLRScheduler(o, total_steps=30, warmup_steps=5, lr_min_ratio=0.2),
    lambda o: LinearWarmupLRScheduler(o, warmup_steps=7, warmup_init_lr=0.1),
    lambda o: InverseSquareRootLRScheduler(o, warmup_steps=5),
    lambda o: PolynomialDecayLRScheduler(o, warmup_steps=5, total_steps=30, zero_lr_warmup_steps=3),
])
def test_state_dict_round_trip_resumes_sequence(make):
    reference_opt = make_optimizer()
    reference = make(reference_opt)
    expected = []
    for _ in range(40):
        reference_opt.step()
        reference.step()
        expected.append(reference.get_last_lr()[0])

    first_opt = make_optimizer()
    first = make(first_opt)
    for _ in range(12):
        first_opt.step()
        first.step()
    saved = first.state_dict()

    resumed_opt = make_optimizer()
    resumed_opt.load_state_dict(first_opt.state_dict())
    resumed = make(resumed_opt)
    resumed.load_state_dict(saved)
    got = []
    for _ in range(28):
        resumed_opt.step()
        resumed.step()
        got.append(resumed.get_last_lr()[0])
    assert got == pytest.approx(expected[12:])


def load_schedule():
    return OmegaConf.load(DEFAULT_CFG).schedule


def test_build_default_config_is_published_cosine():
    schedule = load_schedule()
    optimizer = make_optimizer(1e-4)
    sched = build_lr_scheduler(optimizer, schedule, total_updates=500 * 2000)
    assert isinstance(sched, CosineLRScheduler)
    assert sched.warmup_steps == 4000
    assert sched.total_steps == 1_000_000
    assert sched.lr_min_ratio == 0.0 and sched.cycle_length == 1.0
    assert optimizer.param_groups[0]["lr"] == 0.0


@pytest.mark.parametrize("kind, overrides, expected_type", [
    ("linear_warmup", {"warmup": 10}, LinearWarmupLRScheduler),
    ("inverse_sqrt", {"warmup": 10}, InverseSquareRootLRScheduler),
    ("polynomial_decay", {"warmup": 10}, PolynomialDecayLRScheduler),
    ("step", {"step_size": 3, "gamma": 0.5}, StepLR),
    ("exponential", {"lr_decay": 0.9}, ExponentialLR),
])
def test_build_each_kind_from_default_sections(kind, overrides, expected_type):
    schedule = load_schedule()
    schedule.lr_scheduler = kind
    for key, value in overrides.items():
        schedule[kind][key] = value
    sched = build_lr_scheduler(make_optimizer(), schedule, total_updates=100)
    assert type(sched) is expected_type


def test_build_step_decays_by_gamma():
    sched = build_lr_scheduler(make_optimizer(), {"lr_scheduler": "step",
                                                  "step": {"step_size": 2, "gamma": 0.5}}, 10)
    assert lrs_at(sched, [0, 2, 4]) == pytest.approx({0: LR, 2: LR * 0.5, 4: LR * 0.25})


@pytest.mark.parametrize("kind", [None, "none", "null", "None"])
def test_build_none(kind):
    assert build_lr_scheduler(make_optimizer(), {"lr_scheduler": kind}, 10) is None


@pytest.mark.parametrize("kind, key", [
    ("linear_warmup", "warmup"),
    ("inverse_sqrt", "warmup"),
    ("polynomial_decay", "warmup"),
    ("step", "step_size"),
    ("exponential", "lr_decay"),
])
def test_build_missing_value_names_key(kind, key):
    schedule = load_schedule()
    schedule.lr_scheduler = kind
    with pytest.raises(ValueError, match=rf"schedule\.{kind}\.{key}"):
        build_lr_scheduler(make_optimizer(), schedule, total_updates=100)


def test_build_errors():
    with pytest.raises(ValueError, match="schedule.lr_scheduler='warmup_cosine' is unknown.*cosine"):
        build_lr_scheduler(make_optimizer(), {"lr_scheduler": "warmup_cosine"}, 10)
    with pytest.raises(ValueError, match=r"schedule\.cosine is missing"):
        build_lr_scheduler(make_optimizer(), {"lr_scheduler": "cosine"}, 10)
    with pytest.raises(ValueError, match=r"schedule\.lr_scheduler is missing"):
        build_lr_scheduler(make_optimizer(), {}, 10)
    # The default cosine warmup (4000) cannot fit in a 100-update run.
    with pytest.raises(ValueError, match=r"total_steps \(100\) must exceed warmup_steps \(4000\)"):
        build_lr_scheduler(make_optimizer(), load_schedule(), total_updates=100)


def test_constructor_errors():
    with pytest.raises(ValueError, match="warmup_steps must be >= 1"):
        InverseSquareRootLRScheduler(make_optimizer(), warmup_steps=0)
    with pytest.raises(ValueError, match="lr_min_ratio"):
        CosineLRScheduler(make_optimizer(), total_steps=10, warmup_steps=1, lr_min_ratio=1.5)
    with pytest.raises(ValueError, match="cycle_length"):
        CosineLRScheduler(make_optimizer(), total_steps=10, warmup_steps=1, cycle_length=0)
    with pytest.raises(ValueError, match="must exceed warmup_steps \\+ zero_lr_warmup_steps"):
        PolynomialDecayLRScheduler(make_optimizer(), warmup_steps=5, total_steps=8, zero_lr_warmup_steps=3)
