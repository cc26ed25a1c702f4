"""FLOPs of a FlowMatchingModel training step, counted from its shapes, and the GEMM peak on its own shapes.

    python benchmarks/gemm_peak.py                   # D 512, H 8, L 8, B 4, T 500; float32 and bfloat16

Model FLOPs count the matrix products only (the usual MFU convention; norms, activations, softmax
and the optimizer are not counted). A linear `[M, K] x [K, N]` costs `2 M K N` forward, as much
again for the weight gradient, and as much again for the input gradient unless its input needs no
gradient (the input projection `emb`, fed with latents and controls). Attention of `T` queries on
`S` keys costs `2 B T S D` for `q k^T` plus as much for `p v` forward, and twice that backward. With
`M = B T` frames, `h` the feed-forward scale and `S_x` cross-attention tokens, one training step is

    per layer:  3 x 2 M D (3D + D + D + D + 2 h D)      self qkv, self out, cross q, cross out, FF
              + 3 x 2 B S_x D (2D)                        cross k/v on the cross tokens
              + 3 x 4 B T (T + S_x) D                     self- and cross-attention products
    plus 3 x 2 M D F (output linear), 2 x 2 M (F + C) D (input projection, C control channels) and the
    time embedding (negligible)

which at D 512, h 4, L 8, B 4, T 500 is about 400 GFLOP (67 MFLOP per frame per forward pass).

The peak is measured on the GEMMs of that step (forward and both backward products of every
linear that carries >= 1% of the linear FLOPs), each timed with `F.linear` (MKL for fp32, oneDNN
for bf16) and with oneDNN directly (`torch.ops.mkldnn._linear_pointwise` on a `to_mkldnn()` weight,
and `torch._C._nn.mkldnn_linear` on `to_mkldnn()` tensors): the peak is the best rate seen on any
shape and path. `gemm_floor_seconds` is the time the step's linear GEMMs would take if each ran at
the best rate measured for its own shape.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F

# A GEMM shape carrying less than this share of the step's linear FLOPs is not timed for the peak.
MIN_FLOP_SHARE = 0.01


@dataclass(frozen=True)
class Gemm:
    """`count` products `[m, k] x [k, n]` in one training step."""
    name: str
    m: int
    k: int
    n: int
    count: int

    @property
    def flops(self) -> float:
        return 2.0 * self.m * self.k * self.n * self.count


@dataclass(frozen=True)
class StepShape:
    """The sizes of a FlowMatchingModel training step."""
    batch: int
    frames: int
    dim: int
    heads: int
    layers: int
    hidden_scale: int = 4
    cross_tokens: int = 10      # S_x: text tokens (+ any other cross condition)
    control_dim: int = 34       # C: chords 16 + drums 2 + melody 16 concatenated to the latents
    flow_dim: int = 128         # F


def linear_gemms(shape: StepShape) -> list[Gemm]:
    """Every linear of one training step as forward, weight-gradient and input-gradient GEMMs."""
    m, d, hd, layers = shape.batch * shape.frames, shape.dim, shape.hidden_scale * shape.dim, shape.layers
    m_x = shape.batch * shape.cross_tokens
    # (name, rows, in features, out features, count, input needs a gradient)
    linears = [("self qkv", m, d, 3 * d, layers, True), ("attn out (self, cross)", m, d, d, 2 * layers, True),
               ("cross q", m, d, d, layers, True), ("cross kv", m_x, d, 2 * d, layers, True),
               ("ff1", m, d, hd, layers, True), ("ff2", m, hd, d, layers, True),
               ("emb", m, shape.flow_dim + shape.control_dim, d, 1, False), ("out", m, d, shape.flow_dim, 1, True),
               ("time embedding", shape.batch, 128, 512, 1, False), ("time embedding", shape.batch, 512, 512, 1, True),
               ("time projection", shape.batch, 512, d, 1, True)]
    gemms = []
    for name, rows, k, n, count, input_grad in linears:
        gemms.append(Gemm(f"{name} fwd", rows, k, n, count))
        gemms.append(Gemm(f"{name} grad W", n, rows, k, count))    # dW [N, K] = dY^T [N, M] x X [M, K]
        if input_grad:
            gemms.append(Gemm(f"{name} grad X", rows, n, k, count))  # dX [M, K] = dY [M, N] x W [N, K]
    return gemms


def attention_flops(shape: StepShape) -> float:
    """FLOPs of the self- and cross-attention products of one training step (forward + backward)."""
    keys = shape.frames + shape.cross_tokens
    return 3 * 4.0 * shape.batch * shape.frames * keys * shape.dim * shape.layers


def step_flops(shape: StepShape) -> float:
    """Model FLOPs of one training step (forward + backward)."""
    return sum(g.flops for g in linear_gemms(shape)) + attention_flops(shape)


def forward_flops(shape: StepShape) -> float:
    """Model FLOPs of one forward pass."""
    linear = sum(g.flops for g in linear_gemms(shape) if g.name.endswith(" fwd"))
    return linear + attention_flops(shape) / 3


def peak_shapes(shape: StepShape) -> list[tuple[int, int, int]]:
    """Distinct `(m, k, n)` of the step's GEMMs that carry >= MIN_FLOP_SHARE of its linear FLOPs."""
    gemms = linear_gemms(shape)
    total = sum(g.flops for g in gemms)
    per_shape: dict[tuple[int, int, int], float] = {}
    for g in gemms:
        per_shape[(g.m, g.k, g.n)] = per_shape.get((g.m, g.k, g.n), 0.0) + g.flops
    return sorted(s for s, f in per_shape.items() if f >= MIN_FLOP_SHARE * total)


def _paths(x: torch.Tensor, w: torch.Tensor) -> dict[str, Callable[[], object]]:
    """The GEMM paths timed for `x [M, K] x w [N, K]^T`."""
    paths: dict[str, Callable[[], object]] = {"F.linear": lambda: F.linear(x, w)}
    if x.device.type == "cpu" and torch.backends.mkldnn.is_available():
        w_mkldnn, x_mkldnn = w.to_mkldnn(), x.to_mkldnn()
        paths["oneDNN linear_pointwise"] = lambda: torch.ops.mkldnn._linear_pointwise(
            x, w_mkldnn, None, "none", [], "")
        paths["oneDNN mkldnn_linear"] = lambda: torch._C._nn.mkldnn_linear(x_mkldnn, w_mkldnn, None)
    return paths


def time_gemm_rates(shapes: list[tuple[int, int, int]], dtype: torch.dtype, device: torch.device,
                    repeats: int = 3) -> dict[tuple[int, int, int, str], float]:
    """Best GFLOP/s of each `(m, k, n, path)` over `repeats` calls (after one warm-up call)."""
    rates = {}
    for m, k, n in shapes:
        x = torch.randn(m, k, device=device).to(dtype)
        w = torch.randn(n, k, device=device).to(dtype)
        for path, fn in _paths(x, w).items():
            fn()
            best = float("inf")
            for _ in range(repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                begin = time.perf_counter()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                best = min(best, time.perf_counter() - begin)
            rates[(m, k, n, path)] = 2.0 * m * k * n / best / 1e9
    return rates


def merge_best(into: dict[tuple[int, int, int, str], float], rates: dict[tuple[int, int, int, str], float]) -> None:
    """Keep in `into` the best rate of each `(m, k, n, path)` seen so far."""
    for key, rate in rates.items():
        into[key] = max(into.get(key, 0.0), rate)


def peak(rates: dict[tuple[int, int, int, str], float]) -> tuple[float, str]:
    """The best GFLOP/s of `rates` and where it was reached (`path m x k x n`)."""
    (m, k, n, path), rate = max(rates.items(), key=lambda item: item[1])
    return rate, f"{path} {m}x{k}x{n}"


def path_peaks(rates: dict[tuple[int, int, int, str], float]) -> dict[str, float]:
    """The best GFLOP/s of each path over all shapes."""
    best: dict[str, float] = {}
    for (_m, _k, _n, path), rate in rates.items():
        best[path] = max(best.get(path, 0.0), rate)
    return best


def gemm_floor_seconds(shape: StepShape, rates: dict[tuple[int, int, int, str], float]) -> float:
    """Seconds of the step's linear GEMMs at the best measured rate of each shape (timed shapes only)."""
    best: dict[tuple[int, int, int], float] = {}
    for (m, k, n, _path), rate in rates.items():
        best[(m, k, n)] = max(best.get((m, k, n), 0.0), rate)
    return sum(g.flops / (best[(g.m, g.k, g.n)] * 1e9) for g in linear_gemms(shape) if (g.m, g.k, g.n) in best)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all shapes and dtypes, interleaved")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shape = StepShape(args.batch, args.frames, args.dim, args.heads, args.layers)
    shapes = peak_shapes(shape)
    rates: dict[str, dict[tuple[int, int, int, str], float]] = {name: {} for name in args.dtypes}
    for _ in range(args.rounds):
        for name in args.dtypes:
            merge_best(rates[name], time_gemm_rates(shapes, getattr(torch, name), device))
    print(f"training step {shape}: {step_flops(shape) / 1e9:.1f} GFLOP "
          f"({attention_flops(shape) / 1e9:.1f} in attention), {torch.get_num_threads()} threads, {device}")
    paths = sorted({key[3] for key in next(iter(rates.values()))})
    print("| dtype | m x k x n | " + " | ".join(f"{p} GFLOP/s" for p in paths) + " |")
    print("|---|---|" + "---|" * len(paths))
    for name in args.dtypes:
        for m, k, n in shapes:
            cells = " | ".join(f"{rates[name].get((m, k, n, p), float('nan')):.0f}" for p in paths)
            print(f"| {name} | {m}x{k}x{n} | {cells} |")
    for name in args.dtypes:
        best, where = peak(rates[name])
        print(f"{name}: peak {best:.0f} GFLOP/s ({where}); linear GEMM floor "
              f"{gemm_floor_seconds(shape, rates[name]) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
