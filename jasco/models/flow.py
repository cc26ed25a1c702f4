"""Flow matching in one place: interpolation path, target, loss weighting, ODE solvers, guidance.

Training, inference and tests all import from here (docs/MODEL.md, "Flow matching", "Sampling", "Guidance").
Shapes: `B` batch, `T` latent frames, `F` flow dim.
"""
from __future__ import annotations

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
def euler_solve(velocity: VelocityFn, z0: torch.Tensor, steps: int,
                callback: ProgressCallback | None = None) -> torch.Tensor:
    """Fixed-step Euler from t=0 to t=1 in `steps` steps."""
    if steps < 1:
        raise ValueError(f"euler steps must be >= 1, got {steps}")
    z, dt = z0, 1.0 / steps
    t = torch.zeros(1, device=z0.device, dtype=z0.dtype)
    for step in range(steps):
        z = z + dt * velocity(z, t)
        t = t + dt
        if callback is not None:
            callback(step + 1, steps)
    return z


def dopri5_solve(velocity: VelocityFn, z0: torch.Tensor, atol: float = 1e-5, rtol: float = 1e-5,
                 t_end: float = 1.0 - SIGMA_MIN, callback: ProgressCallback | None = None) -> torch.Tensor:
    """Adaptive Dormand-Prince (torchdiffeq) from t=0 to `t_end`."""
    from torchdiffeq import odeint

    evaluations = [0]

    def func(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        evaluations[0] += 1
        if callback is not None:
            # The number of evaluations is not known in advance: report progress in time.
            callback(int(round(float(t) * 1000)), 1000)
        return velocity(z, t.reshape(1).to(z.dtype))

    times = torch.tensor([0.0, t_end], device=z0.device, dtype=z0.dtype)
    return odeint(func, z0, times, atol=atol, rtol=rtol, method="dopri5")[-1]


ODE_SOLVERS = {"euler": euler_solve, "dopri5": dopri5_solve}
