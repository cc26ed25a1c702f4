"""Gradient synchronisation in data-parallel training: DDP against flashy's eager and after-backward all-reduce.

    python benchmarks/ddp_sync.py                         # 2 gloo processes, debug and base scales
    python benchmarks/ddp_sync.py --scales base --batch 2 --frames 200 --steps 8

Two processes (torch.multiprocessing, gloo on localhost, one CPU thread each) train the same
chords+drums+melody FlowMatchingModel on random latents. Every training update (forward,
backward, gradient synchronisation, clipping, AdamW) is timed in four modes, interleaved update
by update (their order rotating) so that a slow moment of the machine hits every mode alike:

- `ddp`: `torch.nn.parallel.DistributedDataParallel` as the solver wraps the model
  (`jasco.solvers.distributed.wrap`: 25 MB buckets all-reduced while backward still runs);
- `eager`: `flashy.distrib.eager_sync_gradients` (one asynchronous all-reduce per parameter,
  started by a hook as soon as backward produces its gradient);
- `after`: `flashy.distrib.sync_gradients` (one all-reduce per parameter after backward);
- `none`: no synchronisation at all (each process trains alone): the compute-only floor.

Rank 0 prints one row per (scale, mode): the median ms per update, its ratio to `ddp` and the
synchronisation overhead over `none`. docs/SCALING.md records a run.
"""
from __future__ import annotations

import argparse
import copy
import os
import socket
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_step import attributes, build_model  # the sibling benchmark's model

SCALES = {"debug": (64, 4, 2), "base": (512, 8, 8)}  # (dim, heads, layers): model/lm/model_scale xsmall, base
MODES = ("ddp", "eager", "after", "none")


def free_port() -> int:
    """A TCP port free on localhost right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def update(mode: str, net: torch.nn.Module, params: list[torch.Tensor], optimizer: torch.optim.Optimizer,
           attrs: list, z1: torch.Tensor) -> None:
    """One training update of `net` (`[B, T, F]` latents `z1`), gradients synchronised as `mode` says."""
    import flashy

    from jasco.models import flow
    optimizer.zero_grad(set_to_none=True)
    z0, t, z_t = flow.sample_training_point(z1)
    with flashy.distrib.eager_sync_gradients(params) if mode == "eager" else nullcontext():
        loss = flow.flow_matching_loss(net(z_t, t, conditions=attrs), z0, z1, t)
        loss.backward()
    if mode == "after":
        flashy.distrib.sync_gradients(params)
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()


def worker(rank: int, world: int, port: int, args: argparse.Namespace, queue: mp.SimpleQueue) -> None:
    """One process: every scale, every mode, `warmup + steps` updates each; rank 0 reports."""
    from jasco.solvers import distributed
    torch.set_num_threads(args.threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    device = torch.device("cpu")
    results = []
    for scale in args.scales:
        dim, heads, layers = SCALES[scale]
        torch.manual_seed(0)
        model = build_model(dim, heads, layers, args.frames, device)
        # DDP hooks every parameter of the module it wraps: the other modes train a copy of their own.
        ddp_model = copy.deepcopy(model)
        ddp = distributed.wrap(ddp_model, device)  # DDP as the solver builds it
        params = [p for p in model.parameters() if p.requires_grad]
        ddp_params = [p for p in ddp_model.parameters() if p.requires_grad]
        optimizers = {"ddp": torch.optim.AdamW(ddp_params, lr=1e-4), "other": torch.optim.AdamW(params, lr=1e-4)}
        torch.manual_seed(1 + rank)  # each rank its own data
        attrs = attributes(args.batch, args.frames)
        z1 = torch.randn(args.batch, args.frames, 128)

        times: dict[str, list[float]] = {mode: [] for mode in MODES}
        for step in range(args.warmup + args.steps):
            for mode in MODES[step % len(MODES):] + MODES[:step % len(MODES)]:  # each mode in every slot in turn
                dist.barrier()  # every mode starts with both processes ready
                begin = time.perf_counter()
                if mode == "ddp":
                    update(mode, ddp, ddp_params, optimizers["ddp"], attrs, z1)
                else:
                    update(mode, model, params, optimizers["other"], attrs, z1)
                elapsed = torch.tensor([time.perf_counter() - begin])
                dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # an update lasts as long as its slowest process
                if step >= args.warmup:
                    times[mode].append(float(elapsed))
        results.append((scale, sum(p.numel() for p in params), {m: statistics.median(v) for m, v in times.items()}))
    if rank == 0:
        queue.put(results)
    dist.barrier()
    dist.destroy_process_group()


def table(results: list[tuple[str, int, dict[str, float]]]) -> str:
    """Markdown table: ms per update, ratio to DDP, overhead over no synchronisation."""
    lines = ["| scale | params (M) | mode | ms/update | vs ddp | sync overhead (ms) |", "|---|---|---|---|---|---|"]
    for scale, count, medians in results:
        for mode in MODES:
            ms = medians[mode] * 1000
            lines.append(f"| {scale} | {count / 1e6:.2f} | {mode} | {ms:.1f} | {medians[mode] / medians['ddp']:.2f}x | "
                         f"{ms - medians['none'] * 1000:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", nargs="+", default=list(SCALES), choices=list(SCALES))
    parser.add_argument("--batch", type=int, default=2, help="items per process per update")
    parser.add_argument("--frames", type=int, default=200, help="latent frames per item (50 per second)")
    parser.add_argument("--steps", type=int, default=8, help="timed updates per mode")
    parser.add_argument("--warmup", type=int, default=2, help="untimed updates per mode first")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    parser.add_argument("--world", type=int, default=2, help="processes")
    args = parser.parse_args(argv)
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(worker, args=(args.world, free_port(), args, queue), nprocs=args.world, join=True)
    results = queue.get()
    print(f"{args.world} gloo processes x {args.threads} thread(s), torch {torch.__version__}: batch {args.batch} "
          f"per process, {args.frames} frames, {args.warmup} warmup + {args.steps} timed updates per mode (median)")
    print(table(results))


if __name__ == "__main__":
    main()
