"""Data parallelism changes nothing but the speed: 2 gloo processes, or accumulated micro-batches, train
the debug model as 1 process does with the same global batch (docs/SCALING.md).

Each run is `tests/solvers/distributed_worker.py` (under torchrun for 2 processes): 2 epochs of 3
updates, valid after each, no evaluate/generate. Item texts have one length and word dropout is
off: texts are padded to the longest of a micro-batch and padding is attended (the published
model), so otherwise splitting a batch would change the items' inputs, not only the float order.

Tolerances. Splitting the global batch changes only the order of float32 sums: per micro-batch,
then across micro-batches (accumulation) and across processes (gloo's all-reduce). That moves a
loss by ~1e-7 (measured 2.4e-7 over 6 updates). AdamW divides each gradient by the root of its
running square, so on parameters whose gradient is nearly zero these 1e-7 relative differences
become update differences of up to the learning rate (1e-3): measured 2e-5 after 6 updates, on a
few parameters (the mean difference is ~1e-9). A real fault (an item missing or seen twice,
gradients summed instead of averaged, a micro-batch weighed wrongly, dropout differing between
micro-batches) changes losses by more than 1e-3 from the first update and most parameters by ~lr;
a gradient scaled wrongly, which AdamW would hide, changes the gradient norms.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from helpers_training import REPO_ROOT, uniform_text_example

pytestmark = pytest.mark.slow

LOSS_ATOL = 1e-5    # per-update loss of the global batch
GRAD_NORM_RTOL = 1e-4  # per-update gradient norm (measured differences ~1e-6 relative)
PARAM_ATOL = 2e-4   # any parameter (model, EMA, best state)
PARAM_MEAN_ATOL = 1e-7  # mean over all parameters
WORKER = REPO_ROOT / "tests" / "solvers" / "distributed_worker.py"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return uniform_text_example(tmp_path_factory.mktemp("data"))


def run_config(data) -> list[str]:
    return ["solver=jasco/debug", "optim.epochs=2", "optim.updates_per_epoch=3", "generate.every=0",
            "evaluate.every=0", "logging.log_tensorboard=false", "dataset.train.merge_text_p=0",
            "conditioners.description.hashed_text.word_dropout=0",
            *(f"datasource.{split}={data / ('train' if split == 'train' else 'valid')}"
              for split in ("train", "valid", "evaluate", "generate"))]


def train(tmp_path, data, processes: int, *overrides: str) -> list[dict]:
    """Run the worker with `processes` processes; the states of every rank."""
    out = tmp_path / f"run{processes}_{'_'.join(overrides) or 'base'}".replace("=", "-")
    out.mkdir()
    args = [str(WORKER), str(out / "dora"), str(out), *run_config(data), *overrides]
    if processes > 1:
        args = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), *args]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "tests"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    states = [torch.load(out / f"rank{rank}.th", weights_only=False) for rank in range(processes)]
    assert [state["world"] for state in states] == [processes] * processes
    return states


def model_states(state: dict) -> dict[str, dict[str, torch.Tensor]]:
    return {"model": state["model"], "ema": state["ema"]["state"]["model"], "best": state["best_state"]["model"]}


def assert_same_training(state: dict, reference: dict) -> None:
    assert len(state["losses"]) == len(reference["losses"]) == 6
    torch.testing.assert_close(torch.tensor(state["losses"]), torch.tensor(reference["losses"]), atol=LOSS_ATOL, rtol=0)
    # AdamW ignores a gradient's scale: the norms show a micro-batch or process weighed wrongly.
    torch.testing.assert_close(torch.tensor(state["grad_norms"]), torch.tensor(reference["grad_norms"]),
                               rtol=GRAD_NORM_RTOL, atol=0)
    valid = [[epoch["valid"]["loss"] for epoch in s["history"]] for s in (state, reference)]
    torch.testing.assert_close(torch.tensor(valid[0]), torch.tensor(valid[1]), atol=LOSS_ATOL, rtol=0)
    for name, weights in model_states(state).items():
        expected = model_states(reference)[name]
        assert weights.keys() == expected.keys()
        diffs = [(weights[key].float() - expected[key].float()).abs() for key in weights]
        worst = max(float(d.max()) for d in diffs)
        mean = sum(float(d.sum()) for d in diffs) / sum(d.numel() for d in diffs)
        assert worst <= PARAM_ATOL and mean <= PARAM_MEAN_ATOL, (name, worst, mean)


def assert_ranks_identical(states: list[dict]) -> None:
    """DDP keeps the weights bitwise equal; EMA and best state follow (same metrics on every rank)."""
    first = model_states(states[0])
    for state in states[1:]:
        for name, weights in model_states(state).items():
            assert all(torch.equal(weights[key], first[name][key]) for key in weights), name
        assert state["losses"] == states[0]["losses"] and state["grad_norms"] == states[0]["grad_norms"]
        assert [e["valid"]["loss"] for e in state["history"]] == [e["valid"]["loss"] for e in states[0]["history"]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data):
    """One process, global batch 4 in one micro-batch."""
    return train(tmp_path_factory.mktemp("one"), data, 1)[0]


def test_two_processes_train_as_one(tmp_path, data, reference):
    states = train(tmp_path, data, 2)  # micro-batches of 2
    assert_ranks_identical(states)
    assert_same_training(states[0], reference)


def test_accumulated_micro_batches_train_as_one_batch(tmp_path, data, reference):
    (state,) = train(tmp_path, data, 1, "optim.accumulation_steps=2")  # 2 micro-batches of 2
    assert_same_training(state, reference)


def test_accumulation_with_ddp_trains_as_one_batch(tmp_path, data, reference):
    states = train(tmp_path, data, 2, "optim.accumulation_steps=2")  # 2 x 2 micro-batches of 1, no_sync on the first
    assert_ranks_identical(states)
    assert_same_training(states[0], reference)


def test_uneven_split_trains_as_one_batch(tmp_path, data):
    """5 items over 2 processes x 2 steps (micro-batches of 1, 1, 1, 2), as 336 splits over 5 GPUs."""
    (one,) = train(tmp_path, data, 1, "dataset.batch_size=5")
    states = train(tmp_path, data, 2, "dataset.batch_size=5", "optim.accumulation_steps=2")
    assert_ranks_identical(states)
    assert_same_training(states[0], one)


def test_activation_checkpointing_trains_as_without(tmp_path, data, reference):
    """`transformer_lm.checkpointing=torch` under the train step: with dropout on and 2 accumulated micro-batches,
    bitwise the same losses, gradient norms and weights as without (tests/modules/test_activation_checkpointing.py);
    with 2 processes (DDP, no_sync on the first micro-batch), the same training as one process."""
    overrides = ("optim.accumulation_steps=2", "transformer_lm.dropout=0.1")
    (plain,) = train(tmp_path, data, 1, *overrides)
    (checkpointed,) = train(tmp_path, data, 1, *overrides, "transformer_lm.checkpointing=torch")
    assert checkpointed["losses"] == plain["losses"] and checkpointed["grad_norms"] == plain["grad_norms"]
    for name, weights in model_states(checkpointed).items():
        assert all(torch.equal(weights[key], model_states(plain)[name][key]) for key in weights), name
    states = train(tmp_path, data, 2, "optim.accumulation_steps=2", "transformer_lm.checkpointing=torch")
    assert_ranks_identical(states)
    assert_same_training(states[0], reference)
