"""FlowMatchingModel: the JASCO network with multi-source guided sampling (docs/MODEL.md, "Network", "Guidance").

Shapes: `B` batch, `T` latent frames, `F` flow dim (128), `D` model width, `S` text tokens.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from jasco.data.attributes import ConditioningAttributes
from jasco.models import flow
from jasco.modules.conditioners import ConditionProvider, ConditionTensor
from jasco.modules.dropout import AttributeDropout, ClassifierFreeGuidanceDropout
from jasco.modules.fuser import ConditionFuser
from jasco.modules.transformer import Transformer, init_layer_, sin_embedding

# Temporal controls concatenated to the latents, in this order (docs/MODEL.md, "Network").
TEMPORAL_CONDITIONS = ("chords", "self_wav", "melody")


def timestep_sinusoid(t: torch.Tensor, dim: int = 128, max_period: float = 10000.0) -> torch.Tensor:
    """`t [B]` in [0, 1] → `[B, dim]`: sine half first, `freq_i = exp(-ln(P) i / (dim/2 - 1))`."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / (half - 1))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class TimestepEmbedding(nn.Module):
    """Sinusoid of width 128 → Linear(128→512) → swish → Linear(512→512)."""

    def __init__(self, in_dim: int = 128, hidden: int = 512):
        super().__init__()
        self.in_dim = in_dim
        self.dense = nn.ModuleList([nn.Linear(in_dim, hidden), nn.Linear(hidden, hidden)])

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """`t [B]` → `[B, 512]`."""
        x = self.dense[0](timestep_sinusoid(t, self.in_dim).to(self.dense[0].weight.dtype))
        return self.dense[1](x * torch.sigmoid(x))


def align_frames(x: torch.Tensor, length: int) -> torch.Tensor:
    """Crop or zero-pad `x [B, S, C]` at the end to `[B, length, C]`."""
    if x.shape[1] >= length:
        return x[:, :length]
    return F.pad(x, (0, 0, 0, length - x.shape[1]))


class FlowMatchingModel(nn.Module):
    """Predicts the velocity field `v(z_t, t | conditions)` over codec latents."""

    def __init__(self, condition_provider: ConditionProvider, fuser: ConditionFuser, dim: int = 1024,
                 num_heads: int = 16, num_layers: int = 24, hidden_scale: int = 4, flow_dim: int = 128,
                 chords_dim: int = 0, drums_dim: int = 0, melody_dim: int = 0, norm_first: bool = True,
                 bias_ff: bool = False, bias_attn: bool = False, bias_proj: bool = False,
                 activation: str = "gelu", positional_embedding: str = "sin", causal: bool = False,
                 skip_connections: bool = False, layer_dropout_p: float | None = None, dropout: float = 0.0,
                 weight_init: str | None = "gaussian", depthwise_init: str | None = "current",
                 zero_bias_init: bool = True, cfg_dropout: float = 0.0,
                 attribute_dropout: dict[str, dict[str, float]] | None = None,
                 condition_dropout_per_sample: bool = False, checkpointing: str = "none"):
        super().__init__()
        if positional_embedding != "sin":
            raise ValueError(f"positional_embedding={positional_embedding!r}: only 'sin' is supported")
        self.condition_provider = condition_provider
        self.fuser = fuser
        self.dim, self.flow_dim = dim, flow_dim
        dims = {"chords": chords_dim, "self_wav": drums_dim, "melody": melody_dim}
        self.temporal_dims = {name: d for name, d in dims.items() if d > 0}
        for name, d in self.temporal_dims.items():
            conditioner = condition_provider.conditioners[name] if name in condition_provider.conditioners else None
            if conditioner is None or conditioner.output_dim != d:
                raise ValueError(f"transformer_lm.{ {'self_wav': 'drums'}.get(name, name)}_dim={d} needs a "
                                 f"conditioner {name!r} with out_dim {d}; check the conditioners config")
        self.cfg_dropout = ClassifierFreeGuidanceDropout(cfg_dropout, per_sample=condition_dropout_per_sample)
        self.att_dropout = AttributeDropout(attribute_dropout or {}, per_sample=condition_dropout_per_sample)
        self.emb = nn.Linear(flow_dim + sum(self.temporal_dims.values()), dim, bias=False)
        self.temb = TimestepEmbedding()
        self.temb_proj = nn.Linear(512, dim)
        self.transformer = Transformer(dim, num_heads, num_layers, hidden_scale, cross_attention=True,
                                       bias_ff=bias_ff, bias_attn=bias_attn, activation=activation,
                                       causal=causal, dropout=dropout, norm_first=norm_first,
                                       skip_connections=skip_connections, layer_dropout_p=layer_dropout_p)
        self.transformer.checkpointing = checkpointing != "none"
        self.out_norm = nn.LayerNorm(dim, eps=1e-5) if norm_first else None
        self.linear = nn.Linear(dim, flow_dim, bias=bias_proj)
        if weight_init is not None:
            self._init_weights(depthwise_init, zero_bias_init)

    def _init_weights(self, depthwise_init: str | None, zero_bias: bool) -> None:
        init_layer_(self.emb, zero_bias=zero_bias)
        for i, layer in enumerate(self.transformer.layers):
            init_layer_(layer, depth=i + 1 if depthwise_init == "current" else None, zero_bias=zero_bias)
        init_layer_(self.linear, zero_bias=zero_bias)

    # ------------------------------------------------------------------ conditions
    def apply_condition_dropout(self, attributes: list[ConditioningAttributes],
                                generator: torch.Generator | None = None) -> list[ConditioningAttributes]:
        """Training-time CFG dropout then attribute dropout (no-ops in eval mode), drawn from
        `generator` when given (else each dropout's own generator, or torch's global one)."""
        return self.att_dropout(self.cfg_dropout(attributes, generator), generator)

    def condition_tensors(self, attributes: list[ConditioningAttributes]) -> dict[str, ConditionTensor]:
        """Tokenize and embed the conditions of a batch."""
        return self.condition_provider.condition_tensors(attributes)

    # ------------------------------------------------------------------ network
    def forward(self, latents: torch.Tensor, t: torch.Tensor | float,
                conditions: list[ConditioningAttributes] | None = None,
                condition_tensors: dict[str, ConditionTensor] | None = None) -> torch.Tensor:
        """Velocity `[B, T, F]` for latents `[B, T, F]` at times `t` (`[B]`, `[B, 1, 1]` or scalar)."""
        if condition_tensors is None:
            if conditions is None:
                raise ValueError("forward needs `conditions` or precomputed `condition_tensors`")
            condition_tensors = self.condition_tensors(conditions)
        b, length, _ = latents.shape
        known = set(self.condition_provider.conditioners)
        condition_tensors = {k: v for k, v in condition_tensors.items() if k in known}
        parts = [latents]
        for name in TEMPORAL_CONDITIONS:
            if name in self.temporal_dims:
                parts.append(align_frames(condition_tensors[name][0].to(latents.dtype), length))
        h = self.emb(torch.cat(parts, dim=-1))  # [B, T, D]
        h, cross_src = self.fuser(h, condition_tensors)

        t = torch.as_tensor(t, device=latents.device).reshape(-1)
        if t.numel() == 1:
            t = t.expand(b)
        temb = self.temb_proj(self.temb(t))  # [B, D]
        # Published behaviour: the time embedding is added to every cross-attention token.
        cross_src = temb[:, None] if cross_src is None else cross_src + temb[:, None].to(cross_src.dtype)

        positions = torch.arange(h.shape[1], device=h.device)
        h = h + sin_embedding(positions, self.dim)[None].to(h.dtype)
        h = self.transformer(h, cross_src)
        if self.out_norm is not None:
            h = self.out_norm(h)
        v = self.linear(h)
        return v[:, -length:]  # prepended conditions are dropped along TIME

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(self, conditions: list[ConditioningAttributes], max_gen_len: int = 500,
                 cfg_coef_all: float = 3.0, cfg_coef_txt: float = 1.0, solver: str = flow.DEFAULT_SOLVER,
                 steps: int | None = None, time_grid: str = flow.DEFAULT_TIME_GRID,
                 sway_coef: float = flow.DEFAULT_SWAY_COEF, ode_atol: float = flow.DEFAULT_ODE_TOL,
                 ode_rtol: float = flow.DEFAULT_ODE_TOL, initial_noise: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, callback: flow.ProgressCallback | None = None,
                 euler_steps: int | None = None, return_nfe: bool = False) -> torch.Tensor | tuple[torch.Tensor, int]:
        """Sample normalised latents `[B, T, F]` (fp32) with multi-source classifier-free guidance.

        Args:
            conditions: one ConditioningAttributes per sample.
            max_gen_len: T, frames to generate (ignored when `initial_noise` is given).
            cfg_coef_all, cfg_coef_txt: guidance weights of the ALL and TEXT terms.
            solver: a name of `flow.ODE_SOLVERS`: fixed-step 'euler', 'midpoint', 'heun', 'rk4'
                (`steps` steps on the `time_grid` 'uniform' or 'sway' with `sway_coef`), or
                adaptive 'dopri5', 'bosh3' (`ode_atol`, `ode_rtol`). docs/MODEL.md, "Sampling".
            steps: steps of a fixed-step solver (default `flow.DEFAULT_STEPS`).
            initial_noise: `z_0 [B, T, F]`, for reproducible results.
            generator: RNG for `z_0` when `initial_noise` is None.
            callback: called as `callback(step, total)`.
            euler_steps: the published name of `steps`, accepted for compatibility.
            return_nfe: also return the number of guided velocity evaluations.

        Under autocast the network runs in the autocast dtype; the ODE state, `t` and the solver
        (adaptive error control included) stay fp32 (`flow.solve`).
        """
        if steps is not None and euler_steps is not None and steps != euler_steps:
            raise ValueError(f"steps={steps} and euler_steps={euler_steps} disagree; give only steps")
        steps = steps if steps is not None else euler_steps if euler_steps is not None else flow.DEFAULT_STEPS
        flow.check_solver(solver)
        device = next(self.parameters()).device
        b = len(conditions)
        terms = flow.guidance_terms(cfg_coef_all, cfg_coef_txt)
        weights = [term.weight for term in terms]
        # Conditions of every term are computed once per generation, in the network's precision.
        attributes = [term.apply(attr) for term in terms for attr in conditions]
        with flow.network_autocast(solver, device.type):
            condition_tensors = self.condition_tensors(attributes)
        if initial_noise is None:
            initial_noise = torch.randn(b, max_gen_len, self.flow_dim, generator=generator,
                                        device=generator.device if generator is not None else device)
        z0 = initial_noise.to(device)
        if z0.shape[0] != b:
            raise ValueError(f"initial_noise has batch {z0.shape[0]} but {b} conditions were given")

        def velocity(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            v = self(z.repeat(len(terms), 1, 1), t, condition_tensors=condition_tensors)
            return flow.combine_terms(v.float(), weights)

        solution = flow.solve(velocity, z0, solver, steps, time_grid, sway_coef, ode_atol, ode_rtol, callback)
        return (solution.z, solution.nfe) if return_nfe else solution.z

    def extra_repr(self) -> str:
        return f"temporal={self.temporal_dims}"


