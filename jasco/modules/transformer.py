"""Pre-norm transformer with self- and cross-attention, as used by the JASCO flow network.

Shapes: `B` batch, `T` time steps, `S` cross-attention tokens, `D` model width, `H` heads.
Parameter names match the published checkpoints (`layers.N.self_attn.in_proj_weight`, ...).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def sin_embedding(positions: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal positional embedding `[..., dim]` with the cosine half first.

    Args:
        positions: positions `[...]` (any float or int tensor).
        dim: embedding width (even).
        max_period: the longest period.
    """
    assert dim % 2 == 0, "positional embedding width must be even"
    half = dim // 2
    j = torch.arange(half, device=positions.device, dtype=torch.float32)
    # Published layout: phase = p / max_period^(j / (half - 1)).
    phase = positions.float()[..., None] / (max_period ** (j / (half - 1)))
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)


# Largest score matrix `[B, H, T, S]` (elements) that `attention` materialises on CPU; above it,
# SDPA's fused kernels keep memory linear in T (256 MiB of fp32 scores per call).
MATH_ATTENTION_MAX_SCORES = 2**26


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0,
              causal: bool = False) -> torch.Tensor:
    """Scaled dot-product attention of `q [B, H, T, d]` on `k, v [B, H, S, d]` -> `[B, H, T, d]`.

    On CPU, while the scores fit `MATH_ATTENTION_MAX_SCORES`, it runs as two batched matmuls and a
    softmax: the same math as `F.scaled_dot_product_attention`, 2-3x faster than its fused CPU kernel
    for training (forward + backward) in fp32 and bf16 at JASCO's sizes (docs/PERFORMANCE.md). A bf16
    softmax accumulates in fp32 inside the kernel. Elsewhere (GPU) it is SDPA (flash / efficient).
    """
    b, h, t, _ = q.shape
    s = k.shape[-2]
    if q.device.type != "cpu" or b * h * t * s > MATH_ATTENTION_MAX_SCORES:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal)
    scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-2, -1))  # [B, H, T, S]
    if causal:
        future = torch.ones(t, s, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if dropout_p > 0:
        weights = F.dropout(weights, dropout_p)
    return torch.matmul(weights, v)


class MultiheadAttention(nn.Module):
    """Multi-head attention with one packed `in_proj_weight [3D, D]` (q, k, v rows), via `attention`.

    The published checkpoints store q, k and v projections stacked (rows `[:D]`, `[D:2D]`,
    `[2D:]`), each head-major; cross-attention applies the q rows to the query stream and the k/v
    rows to the memory stream.
    """

    def __init__(self, dim: int, num_heads: int, bias: bool = False, cross: bool = False,
                 causal: bool = False, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.dim, self.num_heads, self.cross, self.causal, self.dropout = dim, num_heads, cross, causal, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim)) if bias else None
        self.out_proj = nn.Linear(dim, dim, bias=bias)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        # [B, T, D] -> [B, H, T, D/H]
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.dim // self.num_heads).transpose(1, 2)

    def forward(self, query: torch.Tensor, memory: torch.Tensor | None = None) -> torch.Tensor:
        """Attend `query [B, T, D]` to itself or to `memory [B, S, D]` (cross); returns `[B, T, D]`."""
        w, b = self.in_proj_weight, self.in_proj_bias
        d = self.dim
        if self.cross:
            assert memory is not None, "cross-attention needs a memory"
            q = F.linear(query, w[:d], None if b is None else b[:d])
            kv = F.linear(memory, w[d:], None if b is None else b[d:])
            k, v = kv.chunk(2, dim=-1)
        else:
            q, k, v = F.linear(query, w, b).chunk(3, dim=-1)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        dropout = self.dropout if self.training else 0.0
        out = attention(q, k, v, dropout, causal=self.causal and not self.cross)
        out = out.transpose(1, 2).reshape(query.shape[0], query.shape[1], d)  # [B, T, D]
        return self.out_proj(out)


class TransformerLayer(nn.Module):
    """One pre-norm layer: self-attention, cross-attention, feed-forward, each residual."""

    def __init__(self, dim: int, num_heads: int, hidden_scale: int = 4, cross_attention: bool = True,
                 bias_ff: bool = False, bias_attn: bool = False, activation: str = "gelu",
                 causal: bool = False, dropout: float = 0.0, norm_first: bool = True):
        super().__init__()
        if not norm_first:
            raise ValueError("Only pre-norm layers (norm_first=true) are supported, as in JASCO.")
        self.self_attn = MultiheadAttention(dim, num_heads, bias=bias_attn, causal=causal, dropout=dropout)
        self.linear1 = nn.Linear(dim, hidden_scale * dim, bias=bias_ff)
        self.linear2 = nn.Linear(hidden_scale * dim, dim, bias=bias_ff)
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.cross_attention: MultiheadAttention | None = None
        if cross_attention:
            self.cross_attention = MultiheadAttention(dim, num_heads, bias=bias_attn, cross=True, dropout=dropout)
            self.norm_cross = nn.LayerNorm(dim, eps=1e-5)
        self.activation = _ACTIVATIONS[activation]
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cross_src: torch.Tensor | None = None) -> torch.Tensor:
        """`x [B, T, D]`, `cross_src [B, S, D]` -> `[B, T, D]`."""
        x = x + self.dropout(self.self_attn(self.norm1(x)))
        if self.cross_attention is not None:
            # Published behaviour: no key-padding mask, padding tokens are attended.
            x = x + self.dropout(self.cross_attention(self.norm_cross(x), cross_src))
        x = x + self.dropout(self.linear2(self.dropout(self.activation(self.linear1(self.norm2(x))))))
        return x


_ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu}


class Transformer(nn.Module):
    """A stack of TransformerLayer with optional U-Net skip connections (docs/MODEL.md, "Network")."""

    def __init__(self, dim: int, num_heads: int, num_layers: int, hidden_scale: int = 4,
                 cross_attention: bool = True, bias_ff: bool = False, bias_attn: bool = False,
                 activation: str = "gelu", causal: bool = False, dropout: float = 0.0,
                 norm_first: bool = True, skip_connections: bool = False, layer_dropout_p: float | None = None):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"Unknown activation {activation!r}; choose one of {sorted(_ACTIVATIONS)}")
        self.layers = nn.ModuleList([
            TransformerLayer(dim, num_heads, hidden_scale, cross_attention, bias_ff, bias_attn,
                             activation, causal, dropout, norm_first)
            for _ in range(num_layers)])
        self.skip_connections = skip_connections
        self.layer_dropout_p = layer_dropout_p or 0.0
        if skip_connections:
            self.skip_projections = nn.ModuleList(
                [nn.Linear(2 * dim, dim, bias=True) for _ in range(num_layers // 2)])
        self.checkpointing = False

    def forward(self, x: torch.Tensor, cross_src: torch.Tensor | None = None) -> torch.Tensor:
        """`x [B, T, D]`, `cross_src [B, S, D]` -> `[B, T, D]`."""
        half = len(self.layers) // 2
        stack: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            if self.skip_connections and i >= half:
                skip = stack.pop()
                if self.training and self.layer_dropout_p > 0 and torch.rand(()) < self.layer_dropout_p:
                    skip = torch.zeros_like(skip)
                x = self.skip_projections[i % half](torch.cat([x, skip], dim=-1))
            if self.checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, cross_src, use_reentrant=False)
            else:
                x = layer(x, cross_src)
            if self.skip_connections and i < half:
                stack.append(x)
        return x

    def compile_layers(self, **options) -> None:
        """Compile every layer's forward in place with `torch.compile(**options)`.

        In place (`nn.Module.compile`): parameter names, hence checkpoints, do not change. All layers
        run the same code, so they share one compiled graph per input signature and autocast state.
        """
        for layer in self.layers:
            layer.compile(**options)


def init_layer_(module: nn.Module, depth: int | None = None, zero_bias: bool = True) -> None:
    """Published 'gaussian' init: truncated normal with std 1/sqrt(fan_in), scaled down with depth.

    Args:
        module: the module whose Linear/Embedding children are re-initialised.
        depth: 1-based layer index inside the transformer (std divided by sqrt(2 * depth)), or None.
        zero_bias: set biases to zero.
    """
    for sub in module.modules():
        weight = None
        if isinstance(sub, nn.Linear):
            weight, fan_in = sub.weight, sub.weight.shape[1]
        elif isinstance(sub, MultiheadAttention):
            weight, fan_in = sub.in_proj_weight, sub.in_proj_weight.shape[1]
        elif isinstance(sub, nn.Embedding):
            weight, fan_in = sub.weight, sub.weight.shape[1]
        if weight is None:
            continue
        std = 1 / math.sqrt(fan_in)
        if depth is not None:
            std = std / math.sqrt(2 * depth)
        with torch.no_grad():
            nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-3 * std, b=3 * std)
        bias = getattr(sub, "bias", None) if not isinstance(sub, MultiheadAttention) else sub.in_proj_bias
        if zero_bias and bias is not None:
            nn.init.zeros_(bias)
