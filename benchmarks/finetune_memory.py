"""Peak memory and step time of one fine-tuning update: full fine-tuning vs LoRA, activation checkpointing off/on.

    .venv/bin/python benchmarks/finetune_memory.py                          # base scale (D 512, L 8), CPU
    python benchmarks/finetune_memory.py --device cuda --scale 400M --batch 8 --frames 500   # a GPU
    python benchmarks/finetune_memory.py --device cuda --scale 1B --batch 4 --frames 500

Random weights in the published layout (the chords+drums+melody network of `benchmarks/model_step.py`
at the preset's width and depth): memory does not depend on the values. Each variant runs in a
fresh process (`--child`), so one's peak does not hide the next's: the model, LoRA through
`jasco.models.adapters` (the default targets of `finetune.lora`, rank `--rank`) or every weight
trainable, AdamW over the trainable parameters only, then `2 + --steps` updates of `--batch` items
(flow-matching loss, backward, clipping, step: what `JascoSolver.train_update` does). `peak` is,
on CUDA, `torch.cuda.max_memory_allocated` (bf16 autocast, as the finetune recipe), on CPU the
peak resident set size of the process (`ru_maxrss`, fp32; it includes Python and the libraries,
`model` is the RSS once the model is built, so `peak - model` is what training adds: gradients,
AdamW's moments, activations). Time is the median of the `--steps` timed updates.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from model_step import (  # the sibling benchmark's model (its folder is sys.path[0])
    attributes,
    build_model,
    peak_memory_mib,
)

SCALES = {"base": (512, 8, 8), "400M": (1024, 16, 24), "1B": (1536, 24, 48)}  # dim, heads, layers
VARIANTS = [("full", False), ("lora", False), ("full", True), ("lora", True)]  # interleaved: full/LoRA per setting
DEFAULT_TARGETS = ["self_attn.in_proj_weight", "self_attn.out_proj", "cross_attention.in_proj_weight",
                   "cross_attention.out_proj", "linear1", "linear2"]


def current_memory_mib(device: torch.device) -> float:
    """Memory held now: allocated tensors on CUDA, the resident set on CPU (Linux)."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(args: argparse.Namespace) -> dict[str, float]:
    from jasco.models import adapters, flow
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    dim, heads, layers = SCALES[args.scale]
    model = build_model(dim, heads, layers, args.frames, device).train()
    model.transformer.checkpointing = args.checkpointing
    if args.kind == "lora":
        frozen = adapters.frozen_parameters(model)
        settings = adapters.LoraSettings(args.rank, 2.0 * args.rank, 0.0, tuple(DEFAULT_TARGETS))
        adapters.add_lora(model, adapters.lora_config(model, settings))
        adapters.set_trainable(model, True, [], frozen)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda" or None)
    model_mib = current_memory_mib(device)
    attrs = attributes(args.batch, args.frames)
    z1 = torch.randn(args.batch, args.frames, 128, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def update() -> None:
        optimizer.zero_grad(set_to_none=True)
        z0, t, z_t = flow.sample_training_point(z1)
        with autocast:
            v = model(z_t, t, conditions=attrs)
        flow.flow_matching_loss(v.float(), z0, z1, t).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(2):  # allocates gradients and AdamW's moments
        update()
    times = []
    for _ in range(args.steps):
        sync()
        begin = time.perf_counter()
        update()
        sync()
        times.append(time.perf_counter() - begin)
    return {"trained_m": sum(p.numel() for p in params) / 1e6,
            "total_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "model_mib": model_mib, "peak_mib": peak_memory_mib(device), "ms": statistics.median(times) * 1000}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--scale", choices=sorted(SCALES), default="base")
    parser.add_argument("--batch", type=int, default=2, help="micro-batch items")
    parser.add_argument("--frames", type=int, default=250, help="segment frames (50 per second)")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (finetune.lora.rank)")
    parser.add_argument("--steps", type=int, default=3, help="timed updates after the two untimed")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", nargs=2, metavar=("KIND", "CHECKPOINTING"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no GPU is visible")
    if args.child:
        args.kind, args.checkpointing = args.child[0], bool(int(args.child[1]))
        print(json.dumps(child(args)))
        return
    common = ["--device", args.device, "--scale", args.scale, "--batch", str(args.batch), "--frames",
              str(args.frames), "--rank", str(args.rank), "--steps", str(args.steps), "--threads", str(args.threads)]
    rows = []
    for kind, checkpointing in VARIANTS:
        done = subprocess.run([sys.executable, __file__, *common, "--child", kind, str(int(checkpointing))],
                              capture_output=True, text=True, check=True)
        rows.append((kind, checkpointing, json.loads(done.stdout.strip().splitlines()[-1])))
        print(f"# done: {kind}, checkpointing {checkpointing}", file=sys.stderr, flush=True)
    dim, heads, layers = SCALES[args.scale]
    what = "peak allocated, bf16 autocast" if args.device.startswith("cuda") else "peak RSS, fp32"
    print(f"{args.scale}: D={dim} H={heads} L={layers} ({rows[0][2]['total_m']:.1f} M parameters), micro-batch "
          f"{args.batch}, T={args.frames} frames, LoRA rank {args.rank}, {args.device} ({what}), "
          f"{args.threads} thread(s), torch {torch.__version__}")
    print("| fine-tuning | checkpointing | trained (M) | model (MiB) | peak (MiB) | peak - model (MiB) "
          "| vs full, same ckpt | ms/update |")
    print("|---|---|---|---|---|---|---|---|")
    for kind, checkpointing, r in rows:
        full = next(x for k, c, x in rows if k == "full" and c == checkpointing)
        added, full_added = r["peak_mib"] - r["model_mib"], full["peak_mib"] - full["model_mib"]
        print(f"| {kind} | {'on' if checkpointing else 'off'} | {r['trained_m']:.2f} | {r['model_mib']:.0f} "
              f"| {r['peak_mib']:.0f} | {added:.0f} | {added / full_added:.2f}x | {r['ms']:.0f} |")


if __name__ == "__main__":
    main()
