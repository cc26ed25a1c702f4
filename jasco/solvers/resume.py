"""What a resumed run needs besides weights and optimizer: random states, running metrics, data position.

- `rng_state` / `set_rng_state`: the global generators of torch (CPU, and every CUDA device when
  CUDA is available), numpy and Python's `random`, as plain tensors and numbers so checkpoints
  still load with `torch.load(weights_only=True)`. Flow-matching noise and times and condition
  dropout come from generators keyed by the update (`jasco.solvers.distributed.item_noise`,
  `JascoSolver.dropout_generator`); word dropout and `nn.Dropout` still draw from the global torch
  generator, so without its state a resumed run would drop other words and units.
- `Averager`: the plain running mean of flashy's `averager()`, with a state, so the metrics of an
  epoch resumed in the middle are those of the uninterrupted epoch.
- `batches_from`: the batches of a data loader from a given index of a pass, without loading the
  ones before it (a mid-epoch resume skips to the update it stopped at).
"""
from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

logger = logging.getLogger(__name__)

__all__ = ["Averager", "batches_from", "rng_state", "set_rng_state"]


# ---------------------------------------------------------------- random states
def rng_state() -> dict[str, Any]:
    """The global random states of this process: `torch`, `numpy`, `python`, and `cuda` when available."""
    keys, pos, has_gauss, cached_gaussian = np.random.get_state()[1:]
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned (CUDA states only when the same number of devices is visible)."""
    torch.set_rng_state(state["torch"].cpu())
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(int(x) for x in python_state["internal"].tolist()),
                     python_state["gauss_next"]))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
        else:
            logger.warning("The checkpoint holds the CUDA random states of %d device(s) but %d are visible: "
                           "CUDA random states not restored (the run continues, not bit-identically)",
                           len(cuda), torch.cuda.device_count())


# ---------------------------------------------------------------- running metrics
class Averager:
    """`flashy.averager()` (plain running mean of each metric, same arithmetic) with a resumable state."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def __call__(self, metrics: dict[str, Any], weight: float = 1.0) -> dict[str, float]:
        for key, value in metrics.items():
            self.totals[key] = self.totals.get(key, 0.0) + weight * float(value)
            self.weights[key] = self.weights.get(key, 0.0) + weight
        return self.means()

    def means(self) -> dict[str, float]:
        """The current mean of each metric (empty before the first call)."""
        return {key: total / self.weights[key] for key, total in self.totals.items()}

    def state_dict(self) -> dict[str, dict[str, float]]:
        return {"totals": dict(self.totals), "weights": dict(self.weights)}

    def load_state_dict(self, state: dict[str, dict[str, float]]) -> None:
        self.totals = {key: float(value) for key, value in state["totals"].items()}
        self.weights = {key: float(value) for key, value in state["weights"].items()}


# ---------------------------------------------------------------- data position
def batches_from(loader: Any, start: int) -> Iterator[Any]:
    """The batches `start`, `start + 1`, ... of one pass over `loader`, the first `start` not loaded.

    For a `DataLoader` with a batch sampler, the pass's index batches are listed (under a forked
    RNG: listing them draws nothing from the global generators) and a loader with the same dataset,
    collate function and workers loads from `start` on. That loader seeds its workers from its own
    generator, so the global torch generator is left as a checkpoint restored it (the pass that was
    interrupted drew from it before the checkpoint). It reproduces the pass exactly when the
    sampler is a function of the epoch (sequential, or `DistributedSampler` after `set_epoch`),
    which holds for jasco's loaders. Anything else is iterated and its first `start` batches dropped.
    """
    if start <= 0:
        yield from loader
        return
    batch_sampler = getattr(loader, "batch_sampler", None)
    if not isinstance(loader, DataLoader) or batch_sampler is None:
        yield from itertools.islice(iter(loader), start, None)
        return
    with torch.random.fork_rng(devices=[]):
        batches = list(batch_sampler)
    workers = loader.num_workers
    rest = DataLoader(loader.dataset, batch_sampler=batches[start:], num_workers=workers,
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, timeout=loader.timeout,
                      worker_init_fn=loader.worker_init_fn, multiprocessing_context=loader.multiprocessing_context,
                      generator=torch.Generator().manual_seed(0),
                      prefetch_factor=loader.prefetch_factor if workers else None)
    yield from rest
