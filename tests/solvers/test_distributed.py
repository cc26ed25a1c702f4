"""Data-parallel building blocks in one process: shards of the global batch, eval shards, per-item noise."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from jasco.solvers import distributed
from jasco.solvers.distributed import ShardSampler, UpdateBatchSampler, chunk_bounds
from jasco.solvers.resume import batches_from

# (global batch, accumulation steps, processes): even and uneven splits, the published 336 on 5 and 8 devices.
SPLITS = [(4, 1, 1), (4, 1, 2), (4, 2, 2), (5, 2, 2), (6, 1, 4), (336, 1, 5), (336, 2, 8), (336, 8, 1)]


def updates_of(dataset_size: int, global_batch: int, accumulation: int, world: int, num_updates: int
               ) -> list[list[list[int]]]:
    """For each update, the micro-batches of every process, in (accumulation step, rank) order."""
    per_rank = [list(UpdateBatchSampler(dataset_size, global_batch, accumulation, num_updates, rank, world))
                for rank in range(world)]
    return [[per_rank[rank][u * accumulation + step] for step in range(accumulation) for rank in range(world)]
            for u in range(num_updates)]


@pytest.mark.parametrize("global_batch,accumulation,world", SPLITS)
def test_processes_share_exactly_the_global_batch_of_one_process(global_batch, accumulation, world):
    size = 3 * global_batch + 1  # not a multiple: the last items are never used, the updates wrap around
    one = updates_of(size, global_batch, 1, 1, 5)
    for update, chunks in enumerate(updates_of(size, global_batch, accumulation, world, 5)):
        items = [i for chunk in chunks for i in chunk]
        assert len(items) == len(set(items)) == global_batch  # disjoint, nothing missing
        assert items == one[update][0]  # in order: chunk c = step x world + rank holds positions [c G/(AW), ...)
        assert items == [(update % 3) * global_batch + p for p in range(global_batch)]
        sizes = [len(chunk) for chunk in chunks]
        assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


@pytest.mark.parametrize("global_batch,accumulation,world", SPLITS)
def test_positions_name_the_items_of_each_micro_batch(global_batch, accumulation, world):
    for rank in range(world):
        sampler = UpdateBatchSampler(2 * global_batch, global_batch, accumulation, 2, rank, world)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 2 * accumulation
        for update in range(2):
            for step in range(accumulation):
                positions = sampler.positions(step)
                assert batches[update * accumulation + step] == [update * global_batch + p for p in positions]
                assert (positions.start, positions.stop) == chunk_bounds(global_batch, accumulation, world, step, rank)


def test_published_batch_fits_one_to_eight_devices():
    """336 on W devices with micro-batches of at most 48 (the table of docs/SCALING.md)."""
    for world, accumulation, micro in [(1, 7, 48), (2, 4, 42), (3, 3, 38), (4, 2, 42), (5, 2, 34), (6, 2, 28),
                                       (7, 1, 48), (8, 1, 42)]:
        sizes = [len(range(*chunk_bounds(336, accumulation, world, step, rank)))
                 for step in range(accumulation) for rank in range(world)]
        assert sum(sizes) == 336 and max(sizes) == micro and max(sizes) - min(sizes) <= 1


def test_sampler_is_the_same_every_epoch_and_resumes_mid_epoch():
    dataset = list(range(40))
    sampler = UpdateBatchSampler(len(dataset), 6, 2, 5, rank_=1, world=2)
    loader = DataLoader(dataset, batch_sampler=sampler)
    full = [batch.tolist() for batch in loader]
    assert full == [batch.tolist() for batch in loader]  # nothing random: the dataset keys items by epoch
    resumed = [batch.tolist() for batch in batches_from(loader, 3 * sampler.accumulation)]  # after 3 updates
    assert resumed == full[3 * sampler.accumulation:]


def test_global_batch_too_small_is_refused():
    with pytest.raises(ValueError, match="at least one item"):
        UpdateBatchSampler(100, 3, 2, 1, 0, 2)
    with pytest.raises(ValueError, match="accumulation_steps=0"):
        distributed.check_global_batch(4, 0, 1)
    with pytest.raises(ValueError, match="num_samples"):
        UpdateBatchSampler(3, 4, 1, 1)


def test_eval_shards_cover_the_set_once():
    for size, world in [(8, 2), (10, 4), (3, 5)]:
        shards = [ShardSampler(size, rank, world) for rank in range(world)]
        items = sorted(i for shard in shards for i in shard)
        assert items == list(range(size))
        for shard in shards:
            assert [shard.global_index(i) for i in range(len(shard))] == list(shard)


def test_item_noise_depends_on_the_item_only():
    keys = [(0, "train", 3, p) for p in range(5)]
    z0, t = distributed.item_noise(keys, (7, 2), torch.device("cpu"))
    assert z0.shape == (5, 7, 2) and t.shape == (5, 1, 1) and bool(((t >= 0) & (t < 1)).all())
    z0_part, t_part = distributed.item_noise(keys[3:], (7, 2), torch.device("cpu"))
    assert torch.equal(z0_part, z0[3:]) and torch.equal(t_part, t[3:])
    other, _ = distributed.item_noise([(0, "train", 4, 3)], (7, 2), torch.device("cpu"))  # next update
    assert not torch.equal(other[0], z0[3])


def test_single_process_helpers_are_identities():
    assert distributed.world_size() == 1 and distributed.rank() == 0
    assert distributed.average_metrics({"loss": 2.0}, 3) == {"loss": 2.0}
    assert distributed.gather_to_rank_zero("x") == ["x"]
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap(model, torch.device("cpu")) is model
    assert distributed.backend_for(torch.device("cpu")) == "gloo"
    assert distributed.backend_for(torch.device("cuda", 0)) == "nccl"
    assert distributed.local_device(torch.device("cpu")) == torch.device("cpu")
