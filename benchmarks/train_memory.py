"""Peak memory and time of one training update against micro-batch, activation checkpointing and accumulation.

    .venv/bin/python benchmarks/train_memory.py                  # base scale (D 512, L 8), 5 s segments, CPU
    .venv/bin/python benchmarks/train_memory.py --frames 500 --steps 3

Each configuration runs in a fresh process (`--child`), so that one's peak does not hide the next
one's: the chords+drums+melody model of `benchmarks/model_step.py`, AdamW, and `2 + --steps`
updates of `global` items in `accumulation` micro-batches (conditions embedded inside the forward,
loss weighted per micro-batch, clipping, AdamW step: what `JascoSolver.train_update` does on one
process). The second update runs under `torch.profiler` with `profile_memory` and its memory
timeline gives the live tensor bytes by category (torch's CPU allocator is not seen by
tracemalloc): `activations` is the peak of the live tensors other than weights, gradients and
AdamW's moments (activations saved for backward, temporaries, inputs: what the micro-batch,
checkpointing and accumulation change), `tensors` the peak of all live tensors. `RSS` is the peak resident set size
of the whole process (`ru_maxrss`: Python, libraries, allocator caches too). Time is the median
of the `--steps` updates after the profiled one. CPU only.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from model_step import (  # the sibling benchmark's model (its folder is sys.path[0])
    attributes,
    build_model,
)

CONFIGS = [  # (global batch, accumulation steps, checkpointing)
    (1, 1, False), (2, 1, False), (4, 1, False),
    (1, 1, True), (2, 1, True), (4, 1, True),
    (2, 2, False), (4, 2, False), (4, 2, True),
]


def child(args: argparse.Namespace) -> dict[str, float]:
    from jasco.models import flow
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = build_model(args.dim, args.heads, args.layers, args.frames, device).train()
    model.transformer.checkpointing = args.checkpointing
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    micro = args.global_batch // args.accumulation
    attrs = attributes(micro, args.frames)
    z1 = torch.randn(micro, args.frames, 128, device=device)

    def update() -> None:
        optimizer.zero_grad(set_to_none=True)
        for _ in range(args.accumulation):
            z0, t, z_t = flow.sample_training_point(z1)
            loss = flow.flow_matching_loss(model(z_t, t, conditions=attrs), z0, z1, t)
            (loss / args.accumulation).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    update()  # allocates gradients and AdamW's moments
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # export_memory_timeline: deprecated for CUDA snapshots
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True,
                                    record_shapes=True, with_stack=True) as prof:
            update()
        prof.export_memory_timeline(f"{tmp}/timeline.json", device="cpu")
        _, sizes = json.loads(Path(f"{tmp}/timeline.json").read_text())
    # Columns: 0, then one per category in torch.profiler._memory_profiler's order. The profiler leaves most
    # CPU activations uncategorised: count everything but weights, gradients and optimizer state.
    memory_profiler = torch.profiler._memory_profiler
    categories = list(memory_profiler._CATEGORY_TO_INDEX)
    state = [1 + categories.index(getattr(memory_profiler.Category, name))
             for name in ("PARAMETER", "GRADIENT", "OPTIMIZER_STATE")]
    times = []
    for _ in range(args.steps):
        begin = time.perf_counter()
        update()
        times.append(time.perf_counter() - begin)
    n_params = sum(p.numel() for p in params)
    return {"params_m": n_params / 1e6, "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "tensors_mib": max(sum(row) for row in sizes) / 2**20,
            "activations_mib": max(sum(row) - sum(row[i] for i in state) for row in sizes) / 2**20, "ms": statistics.median(times) * 1000}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--frames", type=int, default=250, help="segment frames (50 per second)")
    parser.add_argument("--steps", type=int, default=2, help="timed updates after the two untimed")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", nargs=3, type=int, metavar=("GLOBAL", "ACCUMULATION", "CHECKPOINTING"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.global_batch, args.accumulation, checkpointing = args.child
        args.checkpointing = bool(checkpointing)
        print(json.dumps(child(args)))
        return
    common = ["--dim", str(args.dim), "--heads", str(args.heads), "--layers", str(args.layers), "--frames",
              str(args.frames), "--steps", str(args.steps), "--threads", str(args.threads)]
    rows = []
    for global_batch, accumulation, checkpointing in CONFIGS:
        done = subprocess.run([sys.executable, __file__, *common, "--child", str(global_batch), str(accumulation),
                               str(int(checkpointing))], capture_output=True, text=True, check=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append((global_batch, accumulation, checkpointing, result))
        print(f"# done: global {global_batch}, accumulation {accumulation}, checkpointing {checkpointing}",
              file=sys.stderr, flush=True)
    first = rows[0][3]
    print(f"D={args.dim} H={args.heads} L={args.layers} ({first['params_m']:.2f} M trainable), T={args.frames} frames, "
          f"CPU, {args.threads} thread(s), torch {torch.__version__}")
    print("| global batch | accumulation | micro-batch | checkpointing | activations (MiB) | vs B1 "
          "| tensors (MiB) | RSS (MiB) | ms/update | ms/item | time vs no ckpt |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for global_batch, accumulation, checkpointing, r in rows:
        same_off = next(x for g, a, c, x in rows if g == global_batch and a == accumulation and not c)
        print(f"| {global_batch} | {accumulation} | {global_batch // accumulation} | {'on' if checkpointing else 'off'} "
              f"| {r['activations_mib']:.0f} | {r['activations_mib'] / first['activations_mib']:.2f}x "
              f"| {r['tensors_mib']:.0f} | {r['rss_mib']:.0f} | {r['ms']:.0f} | {r['ms'] / global_batch:.0f} "
              f"| {r['ms'] / same_off['ms']:.2f}x |")


if __name__ == "__main__":
    main()
