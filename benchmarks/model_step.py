"""Benchmark one FlowMatchingModel step: forward, training step, and one guided sampling step.

    python benchmarks/model_step.py                       # D 512, H 8, L 8, B 4, T 500, CPU
    python benchmarks/model_step.py --device cuda --dtypes float32 bfloat16 float16

Prints a table in ms and samples/s with peak memory, one row per (measure, dtype), and the
speed-up of each dtype against float32 measured in the same run. Peak memory is
`torch.cuda.max_memory_allocated` on GPU, the process's peak resident set size on CPU (which
only grows, so later rows include earlier ones).
"""
from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections.abc import Callable

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


def timed(fn: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> float:
    """Median seconds of `fn` over `repeats` runs after `warmup` runs."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.dim, args.heads, args.layers, args.frames, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda" or None)
    attrs = attributes(args.batch, args.frames)
    with torch.no_grad():
        tensors = model.condition_tensors(attrs)
        terms = flow.guidance_terms(3.0, 1.0)
        cfg_tensors = model.condition_tensors([term.apply(a) for term in terms for a in attrs])
    z1 = torch.randn(args.batch, args.frames, 128, device=device)
    weights = [term.weight for term in terms]

    rows = []
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

        def forward() -> None:
            with torch.no_grad(), autocast:
                model(z1, torch.rand(args.batch, device=device), condition_tensors=tensors)

        def train_step() -> None:
            model.train()
            with autocast:
                z0, t, z_t = flow.sample_training_point(z1)
                loss = flow.flow_matching_loss(model(z_t, t, condition_tensors=tensors), z0, z1, t)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            model.eval()

        def sampling_step() -> None:
            with torch.no_grad(), autocast:
                v = model(z1.repeat(len(terms), 1, 1), torch.full((1,), 0.5, device=device), condition_tensors=cfg_tensors)
                flow.combine_terms(v, weights)

        for name, fn in (("forward", forward), ("train step (fwd+bwd+AdamW)", train_step),
                         (f"CFG sampling step ({len(terms)} terms)", sampling_step)):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds = timed(fn, device, args.warmup, args.repeats)
            rows.append((name, dtype_name, seconds, peak_memory_mib(device)))

    baseline = {name: s for name, d, s, _ in rows if d == "float32"}
    print(f"FlowMatchingModel D={args.dim} H={args.heads} L={args.layers} B={args.batch} T={args.frames} "
          f"on {device} ({torch.get_num_threads()} threads), torch {torch.__version__}, "
          f"{sum(p.numel() for p in params) / 1e6:.1f} M trainable parameters")
    print(f"| measure | dtype | ms | samples/s | vs float32 | peak memory (MiB) |")
    print("|---|---|---|---|---|---|")
    for name, dtype_name, seconds, memory in rows:
        ratio = baseline.get(name, seconds) / seconds
        print(f"| {name} | {dtype_name} | {seconds * 1000:.1f} | {args.batch / seconds:.2f} | {ratio:.2f}x | {memory:.0f} |")


if __name__ == "__main__":
    main()
