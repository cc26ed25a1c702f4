"""Flow matching in one place: interpolation path, target, loss weighting, ODE solvers, guidance.

Training, inference and tests all import from here (docs/MODEL.md, "Flow matching", "Sampling", "Guidance").
Shapes: `B` batch, `T` latent frames, `F` flow dim.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from jasco.data.attributes import ConditioningAttributes

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (z [B, T, F], t [1]) -> v [B, T, F]
ProgressCallback = Callable[[int, int], None]  # (step, total)

SIGMA_MIN = 1e-5
LOSS_WEIGHTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "increasing": lambda t: 1 + t,
    "uniform": lambda t: torch.ones_like(t),
    "decreasing": lambda t: 2 - t,
}


def interpolate(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor, sigma_min: float = SIGMA_MIN) -> torch.Tensor:
    """Point of the conditional OT path at time `t [B, 1, 1]`: `(1 - (1 - σ) t) z0 + t z1`."""
    return (1 - (1 - sigma_min) * t) * z0 + t * z1


def target_velocity(z0: torch.Tensor, z1: torch.Tensor, sigma_min: float = SIGMA_MIN) -> torch.Tensor:
    """Velocity of that path: `z1 - (1 - σ) z0`."""
    return z1 - (1 - sigma_min) * z0


def flow_matching_loss(v_pred: torch.Tensor, z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor,
                       loss_func: str = "increasing", sigma_min: float = SIGMA_MIN) -> torch.Tensor:
    """Mean over all elements of `w(t) (v_pred - u)^2` (scalar)."""
    if loss_func not in LOSS_WEIGHTS:
        raise ValueError(f"Unknown loss_func {loss_func!r}; choose from {sorted(LOSS_WEIGHTS)}")
    u = target_velocity(z0, z1, sigma_min)
    return (LOSS_WEIGHTS[loss_func](t) * (v_pred.float() - u.float()) ** 2).mean()


def sample_training_point(z1: torch.Tensor, generator: torch.Generator | None = None,
                          sigma_min: float = SIGMA_MIN) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw `z0 ~ N(0, I)` and `t ~ U(0, 1) [B, 1, 1]`; return `(z0, t, z_t)`."""
    z0 = torch.randn(z1.shape, generator=generator, device=z1.device, dtype=z1.dtype)
    t = torch.rand(z1.shape[0], 1, 1, generator=generator, device=z1.device, dtype=z1.dtype)
    return z0, t, interpolate(z0, z1, t, sigma_min)


# ---------------------------------------------------------------- multi-source guidance
@dataclass
class GuidanceTerm:
    """One term of multi-source classifier-free guidance: which conditions it keeps, its weight."""

    name: str
    weight: float
    keep_text: bool
    keep_temporal: bool

    def apply(self, attributes: ConditioningAttributes) -> ConditioningAttributes:
        """A copy of `attributes` with what this term drops set to null."""
        attr = attributes.copy()
        if not self.keep_temporal:
            for kind in ("wav", "symbolic"):
                for name in list(getattr(attr, kind)):
                    attr.nullify(kind, name)
        if not self.keep_text:
            for name in list(attr.text):
                attr.nullify("text", name)
        return attr


def guidance_terms(cfg_coef_all: float, cfg_coef_txt: float) -> list[GuidanceTerm]:
    """ALL (weight `cfg_coef_all`), TEXT (`cfg_coef_txt`), NULL (`1 - all - txt`); |w| < 1e-6 dropped."""
    terms = [GuidanceTerm("all", cfg_coef_all, True, True),
             GuidanceTerm("text", cfg_coef_txt, True, False),
             GuidanceTerm("null", 1.0 - cfg_coef_all - cfg_coef_txt, False, False)]
    return [term for term in terms if abs(term.weight) >= 1e-6]


def combine_terms(v: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """`v [K*B, T, F]` (term-major chunks) → `Σ_k w_k v_k` `[B, T, F]`."""
    chunks = v.chunk(len(weights), dim=0)
    out = weights[0] * chunks[0]
    for w, chunk in zip(weights[1:], chunks[1:]):
        out = out + w * chunk
    return out


# ---------------------------------------------------------------- ODE solvers
# Every solver integrates dz/dt = v(z, t) from the noise z(0) = z0 [B, T, F] towards the data at t = 1.
# Fixed-step solvers take a time grid `times [N + 1]` (0 = t_0 < ... < t_N = 1, fp32) and make N steps;
# adaptive ones (torchdiffeq) take tolerances. `solve` is the one entry point: it keeps the ODE state,
# `t` and all solver arithmetic in fp32 and counts the function evaluations (NFE).
DEFAULT_SOLVER = "midpoint"
DEFAULT_STEPS = 8
DEFAULT_TIME_GRID = "uniform"
DEFAULT_SWAY_COEF = -1.0
DEFAULT_ODE_TOL = 1e-5  # dopri5 atol = rtol, the published default
SWAY_COEF_RANGE = (-1.0, 1.0 / (math.pi / 2 - 1))  # [low, high): the sway grid stays increasing


@dataclass
class OdeSolution:
    """The state at the end time `z [B, T, F]` (fp32) and the number of velocity evaluations."""

    z: torch.Tensor
    nfe: int


def uniform_grid(steps: int) -> torch.Tensor:
    """`[steps + 1]` evenly spaced times from 0 to 1."""
    return torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64).float()


def sway_grid(steps: int, coef: float = DEFAULT_SWAY_COEF) -> torch.Tensor:
    """`[steps + 1]` times `u + s (cos(π u / 2) - 1 + u)` of the uniform `u`; s < 0 puts more steps near t = 0."""
    low, high = SWAY_COEF_RANGE
    if not low <= coef < high:
        raise ValueError(f"sway_coef must be in [{low:g}, {high:.4f}) for an increasing time grid, got {coef}")
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    t = u + coef * (torch.cos(math.pi / 2 * u) - 1 + u)
    t[0], t[-1] = 0.0, 1.0  # exact endpoints (cos(π/2) is not exactly 0 in floating point)
    return t.float()


TIME_GRIDS = ("uniform", "sway")


def grid_times(kind: str, steps: int, sway_coef: float = DEFAULT_SWAY_COEF) -> torch.Tensor:
    """The `[steps + 1]` times of a fixed-step solver: `kind` is 'uniform' or 'sway'."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if kind == "uniform":
        return uniform_grid(steps)
    if kind == "sway":
        return sway_grid(steps, sway_coef)
    raise ValueError(f"Unknown time_grid {kind!r}; choose from {list(TIME_GRIDS)}")


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge-Kutta method: stage `i` evaluates the field at `t + c[i] h` and
    `z + h Σ_j a[i][j] k_j`; the step is `z + h Σ_i b[i] k_i` (one evaluation per stage)."""

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]


# The fixed-step samplers (docs/MODEL.md, "Sampling"): order 1, 2, 2 and 4.
TABLEAUS = {
    "euler": ButcherTableau(c=(0.0,), a=((),), b=(1.0,)),
    "midpoint": ButcherTableau(c=(0.0, 0.5), a=((), (0.5,)), b=(0.0, 1.0)),
    "heun": ButcherTableau(c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5)),
    "rk4": ButcherTableau(c=(0.0, 0.5, 0.5, 1.0), a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
                          b=(1 / 6, 1 / 3, 1 / 3, 1 / 6)),
}


def _combine(z: torch.Tensor, h: float, weights: tuple[float, ...], slopes: list[torch.Tensor]) -> torch.Tensor:
    """`z + h Σ w_j k_j` over the non-zero weights (`z` itself when there are none)."""
    for weight, slope in zip(weights, slopes):
        if weight:
            z = z + (h * weight) * slope
    return z


def runge_kutta_solve(tableau: ButcherTableau, velocity: VelocityFn, z0: torch.Tensor, times: torch.Tensor,
                      callback: ProgressCallback | None = None) -> torch.Tensor:
    """`len(times) - 1` steps of an explicit Runge-Kutta method over the time grid `times [N + 1]`."""
    z, steps = z0, len(times) - 1
    for i in range(steps):
        t, h = times[i:i + 1], float(times[i + 1] - times[i])
        slopes: list[torch.Tensor] = []
        for c, row in zip(tableau.c, tableau.a):
            slopes.append(velocity(_combine(z, h, row, slopes), t + c * h if c else t))
        z = _combine(z, h, tableau.b, slopes)
        if callback is not None:
            callback(i + 1, steps)
    return z


def _torchdiffeq_solve(method: str, velocity: VelocityFn, z0: torch.Tensor, atol: float = DEFAULT_ODE_TOL,
                       rtol: float = DEFAULT_ODE_TOL, t_end: float = 1.0 - SIGMA_MIN,
                       callback: ProgressCallback | None = None) -> torch.Tensor:
    """An adaptive torchdiffeq method from t=0 to `t_end`; progress in thousandths of `t`."""
    from torchdiffeq import odeint

    def func(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if callback is not None:
            # The number of evaluations is not known in advance: report progress in time.
            callback(round(float(t) * 1000), 1000)
        return velocity(z, t.reshape(1).to(z.dtype))

    times = torch.tensor([0.0, t_end], device=z0.device, dtype=z0.dtype)
    return odeint(func, z0, times, atol=atol, rtol=rtol, method=method)[-1]


def dopri5_solve(velocity: VelocityFn, z0: torch.Tensor, atol: float = DEFAULT_ODE_TOL, rtol: float = DEFAULT_ODE_TOL,
                 t_end: float = 1.0 - SIGMA_MIN, callback: ProgressCallback | None = None) -> torch.Tensor:
    """Adaptive Dormand-Prince 5(4), 6 NFE per accepted or rejected step (+2 to start)."""
    return _torchdiffeq_solve("dopri5", velocity, z0, atol, rtol, t_end, callback)


def bosh3_solve(velocity: VelocityFn, z0: torch.Tensor, atol: float = DEFAULT_ODE_TOL, rtol: float = DEFAULT_ODE_TOL,
                t_end: float = 1.0 - SIGMA_MIN, callback: ProgressCallback | None = None) -> torch.Tensor:
    """Adaptive Bogacki-Shampine 3(2), 3 NFE per step: cheaper than dopri5 at loose tolerances."""
    return _torchdiffeq_solve("bosh3", velocity, z0, atol, rtol, t_end, callback)


FIXED_STEP_SOLVERS: dict[str, Callable[..., torch.Tensor]] = {
    name: functools.partial(runge_kutta_solve, tableau) for name, tableau in TABLEAUS.items()}
EVALUATIONS_PER_STEP = {name: len(tableau.b) for name, tableau in TABLEAUS.items()}
ADAPTIVE_SOLVERS: dict[str, Callable[..., torch.Tensor]] = {"dopri5": dopri5_solve, "bosh3": bosh3_solve}
ODE_SOLVERS: dict[str, Callable[..., torch.Tensor]] = {**FIXED_STEP_SOLVERS, **ADAPTIVE_SOLVERS}


def check_solver(solver: str) -> None:
    """Raise ValueError naming the choices when `solver` is not in `ODE_SOLVERS`."""
    if solver not in ODE_SOLVERS:
        raise ValueError(f"Unknown solver {solver!r}; choose from {list(ODE_SOLVERS)}")


def check_sampler(solver: str, steps: int, time_grid: str, sway_coef: float, atol: float, rtol: float
                  ) -> torch.Tensor:
    """Check every sampler option, whatever the solver (ValueError naming the option); the fixed-step time grid."""
    check_solver(solver)
    grid = grid_times(time_grid, steps, sway_coef)
    for name, tol in (("ode_atol", atol), ("ode_rtol", rtol)):
        if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {tol!r}")
    return grid


def network_autocast(solver: str, device_type: str) -> torch.autocast:
    """The autocast the network runs under with `solver`: the caller's for fixed-step solvers, off for adaptive ones."""
    return torch.autocast(device_type, dtype=torch.get_autocast_dtype(device_type),
                          enabled=torch.is_autocast_enabled(device_type) and solver in FIXED_STEP_SOLVERS)


def solve(velocity: VelocityFn, z0: torch.Tensor, solver: str = DEFAULT_SOLVER, steps: int = DEFAULT_STEPS,
          time_grid: str = DEFAULT_TIME_GRID, sway_coef: float = DEFAULT_SWAY_COEF,
          atol: float = DEFAULT_ODE_TOL, rtol: float = DEFAULT_ODE_TOL,
          callback: ProgressCallback | None = None) -> OdeSolution:
    """Integrate `velocity` from `z0 [B, T, F]` with `solver`; the state `[B, T, F]` at t = 1 and the NFE.

    Fixed-step solvers use `steps` steps on `grid_times(time_grid, steps, sway_coef)`; adaptive
    ones `atol`/`rtol` (each group validates and ignores the other's options).

    Precision: the state, `t` and every solver operation are fp32 with autocast disabled. A
    fixed-step solver calls `velocity` under the caller's autocast (e.g. bf16), output cast to fp32.
    An adaptive solver calls it in fp32: bf16 rounding makes the field noisy at ~1e-3 of its size, far
    above a 1e-5 tolerance, and the error control then shrinks the steps without end (~400 NFE).
    """
    grid = check_sampler(solver, steps, time_grid, sway_coef, atol, rtol)
    device_type = z0.device.type
    network = network_autocast(solver, device_type)  # built before the solver turns autocast off
    nfe = [0]

    def fp32_velocity(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        nfe[0] += 1
        with network:
            v = velocity(z, t)
        return v.float()

    with torch.autocast(device_type, enabled=False):
        z0 = z0.float()
        if solver in FIXED_STEP_SOLVERS:
            z = FIXED_STEP_SOLVERS[solver](fp32_velocity, z0, grid.to(z0.device), callback)
        else:
            z = ADAPTIVE_SOLVERS[solver](fp32_velocity, z0, atol, rtol, callback=callback)
    return OdeSolution(z, nfe[0])
