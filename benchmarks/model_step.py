"""Benchmark one FlowMatchingModel step against the GEMM peak: forward, training step, guided sampling step.

    python benchmarks/model_step.py                       # D 512, H 8, L 8, B 4, T 500, CPU
    python benchmarks/model_step.py --compile             # also the torch.compile'd layers
    python benchmarks/model_step.py --device cuda --dtypes float32 bfloat16 float16

Every variant (dtype x eager/compiled) and measure takes one turn per round, and each round also
re-measures the GEMM peak of every dtype on the model's own GEMM shapes (`gemm_peak.py`), so load
from other jobs hits all of them alike; ratios compare numbers of the same run. A row reports the
median and the best (min) of its rounds; model FLOPs (counted from the shapes, formula in
`gemm_peak.py`) over the best time give the achieved GFLOP/s, and `vs peak` divides that by the
best GEMM rate of the same dtype (the best of `F.linear` and oneDNN on any of the model's shapes).
The loss of one training batch is compared across dtypes (same weights, noise and times) before
any update. Peak memory is `torch.cuda.max_memory_allocated` per row on GPU; on CPU it is the
process's peak resident set size, printed once.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import gemm_peak  # the sibling benchmark (its folder is sys.path[0])
import torch

from jasco.data.attributes import ConditioningAttributes, WavCondition
from jasco.models import flow
from jasco.models.codec import EncodecCompressionModel
from jasco.models.flow_matching import FlowMatchingModel
from jasco.modules.conditioners import (
    ChordsConditioner,
    ConditionProvider,
    DrumsConditioner,
    HashedTextConditioner,
    MelodyConditioner,
)
from jasco.modules.fuser import ConditionFuser


def build_model(dim: int, heads: int, layers: int, frames: int, device: torch.device) -> FlowMatchingModel:
    """A chords+drums+melody model of the given size with the debug codec and hashed text."""
    codec = EncodecCompressionModel.debug()
    provider = ConditionProvider({
        "description": HashedTextConditioner(dim), "chords": ChordsConditioner(16, n_frames=frames),
        "self_wav": DrumsConditioner(2, codec, segment_duration=frames / 50), "melody": MelodyConditioner(16, n_frames=frames)})
    fuser = ConditionFuser({"cross": ["description"], "ignore": ["chords", "self_wav", "melody"]})
    model = FlowMatchingModel(provider, fuser, dim=dim, num_heads=heads, num_layers=layers,
                              chords_dim=16, drums_dim=2, melody_dim=16)
    return model.to(device)


def attributes(batch: int, frames: int) -> list[ConditioningAttributes]:
    """Random conditions for a batch."""
    return [ConditioningAttributes(
        text={"description": "an energetic rock song with distorted guitars and loud drums"},
        wav={"self_wav": WavCondition(torch.randn(1, frames * 640) * 0.1, 32000)},
        symbolic={"chords": torch.randint(0, 194, (frames,)),
                  "melody": torch.nn.functional.one_hot(torch.randint(0, 53, (frames,)), 53).T.float()})
        for _ in range(batch)]


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed_once(fn: Callable[[], None], device: torch.device) -> float:
    """Seconds of one call of `fn` (synchronised on GPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    begin = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - begin


@dataclass
class Variant:
    """One model (eager or compiled) with its optimizer, run under one autocast dtype."""
    label: str
    dtype_name: str
    model: FlowMatchingModel
    optimizer: torch.optim.Optimizer

    def autocast(self, device: torch.device) -> torch.autocast:
        dtype = getattr(torch, self.dtype_name)
        return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def measures(variant: Variant, device: torch.device, batch: int, z1: torch.Tensor,
             tensors: dict, cfg_tensors: dict, weights: list[float]) -> dict[str, Callable[[], None]]:
    """The timed calls of one variant: forward, training step, guided sampling step."""
    model, optimizer = variant.model, variant.optimizer
    params = [p for p in model.parameters() if p.requires_grad]

    def forward() -> None:
        with torch.no_grad(), variant.autocast(device):
            model(z1, torch.rand(batch, device=device), condition_tensors=tensors)

    def train_step() -> None:
        model.train()
        with variant.autocast(device):
            z0, t, z_t = flow.sample_training_point(z1)
            loss = flow.flow_matching_loss(model(z_t, t, condition_tensors=tensors), z0, z1, t)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        model.eval()

    def sampling_step() -> None:
        with torch.no_grad(), variant.autocast(device):
            v = model(z1.repeat(len(weights), 1, 1), torch.full((1,), 0.5, device=device),
                      condition_tensors=cfg_tensors)
            flow.combine_terms(v.float(), weights)

    return {"forward": forward, "train step (fwd+bwd+AdamW)": train_step,
            f"CFG sampling step ({len(weights)} terms)": sampling_step}


def batch_loss(variant: Variant, device: torch.device, z1: torch.Tensor, tensors: dict) -> float:
    """The training loss of a fixed batch (seeded noise and times), no update."""
    variant.model.train()
    generator = torch.Generator(device=device).manual_seed(1234)
    with torch.no_grad(), variant.autocast(device):
        z0, t, z_t = flow.sample_training_point(z1, generator=generator)
        loss = flow.flow_matching_loss(variant.model(z_t, t, condition_tensors=tensors), z0, z1, t)
    variant.model.eval()
    return float(loss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--compile", action="store_true", help="also time the torch.compile'd layers")
    parser.add_argument("--adamw", choices=["fused", "foreach"], default="fused",
                        help="AdamW implementation (fused: one pass per tensor, CPU and GPU)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.dim, args.heads, args.layers, args.frames, device)
    attrs = attributes(args.batch, args.frames)
    with torch.no_grad():
        tensors = model.condition_tensors(attrs)
        terms = flow.guidance_terms(3.0, 1.0)
        cfg_tensors = model.condition_tensors([term.apply(a) for term in terms for a in attrs])
    z1 = torch.randn(args.batch, args.frames, 128, device=device)
    weights = [term.weight for term in terms]
    fused = args.adamw == "fused" or None

    models = {"eager": model}
    if args.compile:
        models["compiled"] = copy.deepcopy(model)
        models["compiled"].transformer.compile_layers()
    variants = []
    for label, m in models.items():
        params = [p for p in m.parameters() if p.requires_grad]
        for dtype_name in args.dtypes:
            # One optimizer per variant: each variant's steps see only its own optimizer state.
            variants.append(Variant(label, dtype_name, m, torch.optim.AdamW(params, lr=1e-4, fused=fused)))
    losses = {(v.label, v.dtype_name): batch_loss(v, device, z1, tensors) for v in variants}
    calls = {(v.label, v.dtype_name): measures(v, device, args.batch, z1, tensors, cfg_tensors, weights)
             for v in variants}

    shape = gemm_peak.StepShape(args.batch, args.frames, args.dim, args.heads, args.layers,
                                cross_tokens=tensors["description"][0].shape[1])
    cfg_shape = dataclasses.replace(shape, batch=args.batch * len(terms))
    flops = {"train": gemm_peak.step_flops(shape), "forward": gemm_peak.forward_flops(shape),
             "sampling": gemm_peak.forward_flops(cfg_shape)}
    peak_shapes = gemm_peak.peak_shapes(shape)
    rates: dict[str, dict] = {name: {} for name in args.dtypes}
    times: dict[tuple[str, str, str], list[float]] = {}
    memory: dict[tuple[str, str, str], float] = {}
    for round_index in range(args.warmup + args.repeats):
        for key, fns in calls.items():
            for name, fn in fns.items():
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                seconds = timed_once(fn, device)
                if round_index >= args.warmup:
                    times.setdefault((*key, name), []).append(seconds)
                    memory[(*key, name)] = max(memory.get((*key, name), 0.0), peak_memory_mib(device))
        for dtype_name in args.dtypes:
            gemm_peak.merge_best(rates[dtype_name], gemm_peak.time_gemm_rates(
                peak_shapes, getattr(torch, dtype_name), device, repeats=2))

    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"FlowMatchingModel D={args.dim} H={args.heads} L={args.layers} B={args.batch} T={args.frames} "
          f"on {device} ({torch.get_num_threads()} threads), torch {torch.__version__}, "
          f"{n_params / 1e6:.1f} M trainable parameters, {args.adamw} AdamW; {args.repeats} interleaved rounds "
          f"after {args.warmup}")
    print(f"model FLOPs (gemm_peak.py): train step {flops['train'] / 1e9:.1f} G, forward {flops['forward'] / 1e9:.1f} G, "
          f"CFG sampling step {flops['sampling'] / 1e9:.1f} G")
    peaks = {name: gemm_peak.peak(rates[name]) for name in args.dtypes}
    for name, (rate, where) in peaks.items():
        per_path = ", ".join(f"{path} {best:.0f}" for path, best in gemm_peak.path_peaks(rates[name]).items())
        print(f"GEMM peak {name}: {rate:.0f} GFLOP/s ({where}; best per path: {per_path}); the step's linear GEMMs "
              f"at the best rate of each shape: {gemm_peak.gemm_floor_seconds(shape, rates[name]) * 1e3:.0f} ms")
    reference = {k[1]: v for k, v in losses.items() if k == ("eager", "float32")}.get("float32")
    print("loss of one fixed batch: " + ", ".join(
        f"{label} {dtype_name} {loss:.6f}" + (f" ({(loss - reference) / reference:+.3%} vs eager float32)"
                                              if reference else "")
        for (label, dtype_name), loss in losses.items()))
    memory_col = " peak memory (MiB) |" if device.type == "cuda" else ""
    print(f"| measure | model | dtype | median ms | best ms | samples/s | vs eager float32 | GFLOP/s | vs peak |{memory_col}")
    print("|---|---|---|---|---|---|---|---|---|" + ("---|" if memory_col else ""))
    flop_key = {0: "forward", 1: "train", 2: "sampling"}
    names = list(next(iter(calls.values())))
    for index, name in enumerate(names):
        base = times.get(("eager", "float32", name))
        for label, dtype_name in calls:
            row = times[(label, dtype_name, name)]
            median, best = statistics.median(row), min(row)
            ratio = f"{statistics.median(base) / median:.2f}x" if base else "-"
            achieved = flops[flop_key[index]] / best / 1e9
            cells = (f"| {name} | {label} | {dtype_name} | {median * 1e3:.1f} | {best * 1e3:.1f} | "
                     f"{args.batch / median:.2f} | {ratio} | {achieved:.0f} | {achieved / peaks[dtype_name][0]:.0%} |")
            if memory_col:
                cells += f" {memory[(label, dtype_name, name)]:.0f} |"
            print(cells)
    if not memory_col:
        print(f"process peak resident memory: {peak_memory_mib(device):.0f} MiB")


if __name__ == "__main__":
    main()
