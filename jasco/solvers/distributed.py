"""Data-parallel training on torch.distributed: process group, data shards, DDP or FSDP2 sharding, metric averaging.

Launchers (docs/SCALING.md): `dora run -d` and `torchrun` set `RANK`, `WORLD_SIZE`, `LOCAL_RANK`
(and `MASTER_ADDR`/`MASTER_PORT`); a SLURM job started by `dora grid`/`dora launch` has none of
them, and Dora reads the rank and world size from submitit's SLURM environment instead. `init`
starts the process group for all of them, with the backend of the device: nccl on CUDA, gloo on CPU.

Global batch of one update: `G = dataset.batch_size` items, the items `[u G, (u + 1) G)` of the
dataset for the u-th update of an epoch. They are cut into `A × W` consecutive micro-batches
("chunks", `A` accumulation steps, `W` processes), as equal as can be (sizes differ by at most 1):
chunk `c = a × W + r` is the micro-batch of rank `r` at accumulation step `a`. Whatever `A` and `W`,
an update sees the same items, and each item keeps its position `p` in `[0, G)`, which keys its
random draws (`item_noise`): one process with the whole batch and `W` processes with `A` steps each
compute the same loss and, up to float summation order, the same gradient.
"""
from __future__ import annotations

import atexit
import hashlib
import inspect
import logging
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from dora import distrib as dora_distrib
from dora import get_xp
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------ process group
def launch_rank() -> int:
    """This process's rank as the launcher set it (usable before `init`; 0 when not distributed)."""
    return dora_distrib.get_distrib_spec().rank


def backend_for(device: torch.device) -> str:
    """nccl for CUDA devices, gloo for the CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


def local_device(device: torch.device) -> torch.device:
    """The device of this process: `cuda` becomes `cuda:<LOCAL_RANK>` when several processes share a machine."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", dora_distrib.get_distrib_spec().local_rank)
    return device


def init(device: torch.device) -> torch.device:
    """Join the process group of this run (a no-op in a single process); return this process's device.

    The rank, world size and local rank come from the launcher's variables or SLURM (Dora's
    `get_distrib_spec`); `MASTER_ADDR` / `MASTER_PORT` from the launcher, else the first node of the
    SLURM job and a port drawn from the experiment's signature and job id (Dora's `set_distrib_env`),
    or Dora's rendezvous file with `dora.use_rendezvous=true`.
    """
    spec = dora_distrib.get_distrib_spec()
    device = local_device(device)
    if spec.world_size == 1 or dist.is_initialized():
        return device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    xp = get_xp()
    if xp.dora.use_rendezvous:
        init_method = f"file://{xp.rendezvous_file.absolute()}"
    else:
        dora_distrib.set_distrib_env()
        init_method = "env://"
    dist.init_process_group(backend_for(device), init_method=init_method, world_size=spec.world_size, rank=spec.rank)
    atexit.register(_destroy)
    logger.info("Distributed: rank %d of %d (local %d, %s, from %s)", spec.rank, spec.world_size,
                spec.local_rank, backend_for(device), spec.source)
    if xp.dora.use_rendezvous:
        dist.barrier()
        if spec.rank == 0:
            xp.rendezvous_file.unlink(missing_ok=True)
    return device


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shutdown() -> None:
    """End of a run that every rank reached: wait for all, then leave the process group.

    Tearing gloo down in `atexit` while a peer is still running can abort a process
    ("terminate called without an active exception"); the barrier lets every rank leave together.
    """
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank() -> int:
    """Rank of this process (0 when not distributed)."""
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def _collective_device() -> torch.device:
    """Where tensors of a collective must live: the current CUDA device with nccl, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ------------------------------------------------------------------ FSDP
def _ensure_process_group(device: torch.device) -> None:
    """FSDP needs a process group even in one process: a private one-rank group then."""
    if not dist.is_initialized():
        dist.init_process_group(backend_for(device), store=dist.HashStore(), rank=0, world_size=1)
        atexit.register(_destroy)


def shard(model: torch.nn.Module, blocks: list[torch.nn.Module], device: torch.device,
          param_dtype: torch.dtype = torch.float32, reduce_dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Shard `model` in place with FSDP2 (`fully_shard`): each of `blocks`, then the root (docs/SCALING.md).

    Trainable parameters become DTensors sharded over all processes (dim 0); frozen ones (the codec
    inside the drums conditioner, also used outside the forward) are left whole on every rank.
    `param_dtype` / `reduce_dtype`: the dtype of the gathered parameters in forward/backward and of
    the gradient reduce-scatter (the sharded master weights stay float32).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    _ensure_process_group(device)
    mesh = init_device_mesh(device.type, (world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    frozen = {p for p in model.parameters() if not p.requires_grad}
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy, ignored_params={p for p in block.parameters() if p in frozen})
    fully_shard(model, mesh=mesh, mp_policy=policy, ignored_params=frozen)
    return model


def full_tensors(state: dict[str, Any]) -> dict[str, Any]:
    """`state` with every DTensor gathered whole, on the CPU (collective: every process calls it)."""
    from torch.distributed.tensor import DTensor
    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().cpu() if isinstance(v, torch.Tensor) else v
            for k, v in state.items()}


def like(value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A whole tensor `value` laid out as `target` (this rank's shard when `target` is a DTensor; no communication)."""
    from torch.distributed.tensor import DTensor, distribute_tensor
    if isinstance(target, DTensor) and not isinstance(value, DTensor):
        return distribute_tensor(value.to(target.device, target.dtype), target.device_mesh, target.placements,
                                 src_data_rank=None)
    return value


# ------------------------------------------------------------------ DDP and collectives
def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`model` in DistributedDataParallel when distributed, else `model` itself.

    Gradients are averaged by DDP's bucketed all-reduce, overlapped with backward. Buffers are not
    re-broadcast at each forward: the model's buffers are constants (codec conv geometry), equal
    on every rank, and DDP makes them so once when wrapping.
    """
    if world_size() == 1:
        return model
    kwargs: dict[str, Any] = {"device_ids": [device.index] if device.type == "cuda" else None}
    if "forward_sync_buffers" in inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters:
        kwargs["forward_sync_buffers"] = False  # torch >= 2.13; DDP still syncs them once, when wrapping
    else:
        kwargs["broadcast_buffers"] = False
    return torch.nn.parallel.DistributedDataParallel(model, **kwargs)


def average_metrics(metrics: dict[str, float], weight: float) -> dict[str, float]:
    """Average `metrics` over the processes, each weighted by `weight` (e.g. its item count).

    Every process gets the same values, so decisions taken on them (the best state) agree. All
    processes must pass the same keys.
    """
    if world_size() == 1:
        return dict(metrics)
    keys = sorted(metrics)
    values = torch.tensor([float(metrics[k]) * weight for k in keys] + [float(weight)], dtype=torch.float64,
                          device=_collective_device())
    dist.all_reduce(values)
    total = values[-1].clamp_min(1e-12)
    return dict(zip(keys, (values[:-1] / total).tolist()))


def gather_to_rank_zero(obj: Any) -> list[Any] | None:
    """Every process's `obj` (picklable), in rank order, on rank 0; None on the others."""
    if world_size() == 1:
        return [obj]
    gathered: list[Any] | None = [None] * world_size() if rank() == 0 else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


# ------------------------------------------------------------------ data shards
def chunk_bounds(global_batch: int, accumulation: int, world: int, step: int, rank_: int) -> tuple[int, int]:
    """Positions `[start, end)` in the update's global batch of the micro-batch of `rank_` at accumulation `step`."""
    chunks = accumulation * world
    chunk = step * world + rank_
    return chunk * global_batch // chunks, (chunk + 1) * global_batch // chunks


def check_global_batch(global_batch: int, accumulation: int, world: int) -> None:
    """Raise ValueError when the global batch cannot give every micro-batch at least one item."""
    if accumulation < 1:
        raise ValueError(f"optim.accumulation_steps={accumulation}: must be >= 1")
    if global_batch < accumulation * world:
        raise ValueError(f"dataset.batch_size={global_batch} (global) is smaller than optim.accumulation_steps "
                         f"({accumulation}) x processes ({world}): every micro-batch needs at least one item")


class UpdateBatchSampler(Sampler[list[int]]):
    """Micro-batches of one process for `num_updates` updates of global batch `global_batch`.

    Update `u` (counted from the start of the epoch) covers the dataset items `[u G, (u + 1) G)`,
    wrapping around the largest multiple of `G` the dataset holds; this process yields its chunk of
    each accumulation step (module docstring). The batches are a function of the update index
    alone, the same every epoch (the dataset draws each item from `(epoch, index)`, see
    `AudioDataset.make_generator`), so an epoch interrupted after `k` updates resumes at batch
    `k × accumulation` (`resume.batches_from`) with the items the uninterrupted run would have seen.
    """

    def __init__(self, dataset_size: int, global_batch: int, accumulation: int, num_updates: int,
                 rank_: int = 0, world: int = 1):
        check_global_batch(global_batch, accumulation, world)
        if dataset_size < global_batch:
            raise ValueError(f"the training set has {dataset_size} items, fewer than one global batch "
                             f"(dataset.batch_size={global_batch}): raise dataset.train.num_samples")
        self.dataset_size, self.global_batch, self.accumulation = dataset_size, global_batch, accumulation
        self.num_updates, self.rank, self.world = num_updates, rank_, world

    def positions(self, step: int) -> range:
        """Positions in the update's global batch of this process's micro-batch at accumulation `step`."""
        return range(*chunk_bounds(self.global_batch, self.accumulation, self.world, step, self.rank))

    def __iter__(self) -> Iterator[list[int]]:
        updates_per_pass = self.dataset_size // self.global_batch
        for update in range(self.num_updates):
            first = (update % updates_per_pass) * self.global_batch
            for step in range(self.accumulation):
                yield [first + p for p in self.positions(step)]

    def __len__(self) -> int:
        return self.num_updates * self.accumulation


class ShardSampler(Sampler[int]):
    """Items `rank, rank + W, rank + 2W, ...` of a dataset of `size` items: disjoint shards, no repeats.

    For the stages without backward (valid, evaluate, generate): every item is seen exactly once
    over all processes, shards differ by at most one item, and local item `i` is dataset item
    `global_index(i)`.
    """

    def __init__(self, size: int, rank_: int = 0, world: int = 1):
        self.size, self.rank, self.world = size, rank_, world

    def global_index(self, local: int) -> int:
        """Dataset index of this shard's `local`-th item."""
        return self.rank + local * self.world

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world))


# ------------------------------------------------------------------ per-item randomness
def item_seed(*keys: int | str) -> int:
    """A 63-bit seed from `keys` (the same on every machine and Python, unlike `hash` of strings)."""
    digest = hashlib.blake2b(repr(keys).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def item_noise(keys: list[tuple[int | str, ...]], shape: tuple[int, ...], device: torch.device,
               dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Flow-matching draws of a batch, one generator per item: `z0 [B, *shape] ~ N(0, I)`, `t [B, 1, 1] ~ U(0, 1)`.

    Item `i`'s draws depend on `keys[i]` alone (e.g. seed, update, position in the global batch),
    not on which process or micro-batch holds the item.
    """
    generator = torch.Generator(device)
    z0 = torch.empty(len(keys), *shape, device=device, dtype=dtype)
    t = torch.empty(len(keys), 1, 1, device=device, dtype=dtype)
    for i, key in enumerate(keys):
        generator.manual_seed(item_seed(*key))
        z0[i] = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        t[i] = torch.rand(1, generator=generator, device=device, dtype=dtype)
    return z0, t
