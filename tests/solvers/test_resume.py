"""What a resumed run restores besides weights: random states, running metrics, the data position."""
from __future__ import annotations

import io
import random

import flashy
import numpy as np
import torch
from torch.utils.data import DataLoader

from jasco.solvers.resume import Averager, batches_from, rng_state, set_rng_state


def draws() -> tuple[list[float], list[float], list[float]]:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_rng_state_round_trips_through_a_safe_checkpoint():
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.randn()  # a cached gaussian in numpy's state
    buffer = io.BytesIO()
    torch.save({"rng": [rng_state()]}, buffer)
    expected = draws()
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    buffer.seek(0)
    set_rng_state(torch.load(buffer, weights_only=True)["rng"][0])  # plain tensors and numbers only
    assert draws() == expected


def test_averager_matches_flashy_and_resumes_exactly():
    values = [{"loss": 3.1, "lr": 1e-3}, {"loss": 2.7, "lr": 9e-4}, {"loss": 2.2, "lr": 8e-4},
              {"loss": 1.9, "lr": 7e-4}]
    reference = flashy.averager()
    expected = [reference(v) for v in values][-1]
    first = Averager()
    for v in values[:2]:
        first(v)
    resumed = Averager()
    resumed.load_state_dict(first.state_dict())
    for v in values[2:]:
        out = resumed(v)
    assert out == expected  # the same floats, not just close
    assert Averager().means() == {}


class Items(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.loaded: list[int] = []

    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int) -> int:
        self.loaded.append(index)
        return index


def test_batches_from_skips_without_loading_and_leaves_the_global_generator_alone():
    dataset = Items()
    loader = DataLoader(dataset, batch_size=3, drop_last=True)
    full = [batch.tolist() for batch in loader]
    dataset.loaded.clear()
    torch.manual_seed(0)
    state = torch.get_rng_state()
    rest = [batch.tolist() for batch in batches_from(loader, 2)]
    assert rest == full[2:] == [[6, 7, 8]]
    assert dataset.loaded == [6, 7, 8]  # batches 0 and 1 were not loaded
    assert torch.equal(torch.get_rng_state(), state)  # iterating a DataLoader draws a seed; this one does not
    assert [b.tolist() for b in batches_from(loader, 0)] == full
    generic = (x for x in range(5))  # not a DataLoader: iterated and dropped
    assert list(batches_from(generic, 3)) == [3, 4]
    assert next(batches_from(loader, 1)).tolist() == [3, 4, 5]
