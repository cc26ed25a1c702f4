"""Sharded training (`fsdp.use=true`, FSDP2) trains the debug model as one plain process does, its
checkpoints resume at another world size, and its runs export (docs/SCALING.md, "Sharded training (FSDP)").

Runs (tests/solvers/distributed_worker.py, as in test_distributed_training.py, constant learning rate so
that runs of 2 and 3 epochs share their first updates):
- reference: 1 process, no FSDP, 3 epochs of 3 updates, global batch 4;
- FSDP: 2 gloo processes, 2 epochs, 2 accumulated micro-batches per process (gradient sync on the last
  only, `set_requires_gradient_sync`), gradient clipping over the shards;
- resumed: 1 process with FSDP resuming the FSDP run's checkpoint (written by 2 processes) for epoch 3.

Tolerances: those of test_distributed_training.py (the same float-summation-order argument: FSDP's
reduce-scatter sums the gradients in another order than one process; measured 1.2e-7 on losses and
2e-5 at most on a parameter after 6 updates, mean 4e-10).
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from test_distributed_training import (
    GRAD_NORM_RTOL,
    LOSS_ATOL,
    PARAM_ATOL,
    PARAM_MEAN_ATOL,
    assert_ranks_identical,
    model_states,
    train,
)

from jasco.export import export_checkpoint
from jasco.models.loaders import load_jasco_model
from jasco.solvers.jasco_solver import JascoSolver

CONSTANT_LR = "schedule.lr_scheduler=null"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from helpers_training import uniform_text_example
    return uniform_text_example(tmp_path_factory.mktemp("data"))


def assert_close_weights(state: dict, reference: dict) -> None:
    for name, weights in model_states(state).items():
        expected = model_states(reference)[name]
        assert weights.keys() == expected.keys(), name
        assert all(not hasattr(w, "device_mesh") for w in weights.values()), f"{name}: not whole tensors"
        diffs = [(weights[key].float() - expected[key].float()).abs() for key in weights]
        worst = max(float(d.max()) for d in diffs)
        mean = sum(float(d.sum()) for d in diffs) / sum(d.numel() for d in diffs)
        assert worst <= PARAM_ATOL and mean <= PARAM_MEAN_ATOL, (name, worst, mean)


def assert_same_updates(state: dict, reference: dict, first: int, count: int) -> None:
    """`state`'s updates are the reference's updates `first`..`first + count - 1` (losses, gradient norms)."""
    assert len(state["losses"]) == count
    expected = slice(first, first + count)
    torch.testing.assert_close(torch.tensor(state["losses"]), torch.tensor(reference["losses"][expected]),
                               atol=LOSS_ATOL, rtol=0)
    torch.testing.assert_close(torch.tensor(state["grad_norms"]), torch.tensor(reference["grad_norms"][expected]),
                               rtol=GRAD_NORM_RTOL, atol=0)


def valid_losses(state: dict) -> torch.Tensor:
    return torch.tensor([epoch["valid"]["loss"] for epoch in state["history"]])


@pytest.mark.slow
def test_fsdp_trains_as_one_process_resumes_at_another_world_size_and_exports(tmp_path, data, monkeypatch):
    (reference,) = train(tmp_path, data, 1, CONSTANT_LR, "optim.epochs=3")
    states = train(tmp_path, data, 2, CONSTANT_LR, "fsdp.use=true", "optim.accumulation_steps=2")
    assert_ranks_identical(states)
    assert_same_updates(states[0], reference, 0, 6)
    torch.testing.assert_close(valid_losses(states[0]), valid_losses(reference)[:2], atol=LOSS_ATOL, rtol=0)

    (checkpoint,) = (tmp_path / "run2_schedule.lr_scheduler-null_fsdp.use-true_optim.accumulation_steps-2").glob(
        "dora/xps/*/checkpoint.th")
    saved = torch.load(checkpoint, weights_only=True)
    # Whole tensors, name-keyed optimizer state (get_optimizer_state_dict), the best state under both keys.
    assert saved["model"].keys() == states[0]["model"].keys()
    assert all(torch.equal(saved["model"][k], states[0]["model"][k]) for k in saved["model"])
    assert set(saved["optimizer"]["state"]) <= set(saved["model"])
    assert saved["fsdp_best_state"]["model"].keys() == saved["best_state"]["model"].keys()
    assert all(torch.equal(v, states[0]["best_state"]["model"][k]) for k, v in saved["fsdp_best_state"]["model"].items())

    # Resume with 1 process (the checkpoint was written by 2) for epoch 3: the reference's last 3 updates.
    monkeypatch.setenv("RESUME_FROM", str(checkpoint))
    (resumed,) = train(tmp_path, data, 1, CONSTANT_LR, "fsdp.use=true", "optim.epochs=3")
    assert_same_updates(resumed, reference, 6, 3)
    torch.testing.assert_close(valid_losses(resumed), valid_losses(reference), atol=LOSS_ATOL, rtol=0)
    assert_close_weights(resumed, reference)

    # jasco-export reads the FSDP best state; the exported model loads.
    model = load_jasco_model(export_checkpoint(checkpoint, tmp_path / "export"))
    exported = model.state_dict()
    best = saved["fsdp_best_state"]["model"]
    assert exported.keys() == best.keys()
    assert all(torch.equal(exported[k], best[k].to(exported[k].dtype)) for k in best)


def test_fsdp_refuses_shards_with_different_batch_counts_and_adaptive_generation():
    """Every FSDP forward is a collective: processes running different numbers of batches would hang."""
    solver = SimpleNamespace(batch_size=2, cfg=OmegaConf.create({"generate": {"every": 1, "lm": {"solver": "euler"}}}))
    JascoSolver._check_fsdp_shards(solver, "valid", 8, 2)  # 4 + 4 items: 2 batches each
    with pytest.raises(ValueError, match=r"datasource.valid give the 2 processes 2 to 3 batches of 2"):
        JascoSolver._check_fsdp_shards(solver, "valid", 9, 2)  # 5 + 4 items
    solver.cfg.generate.lm.solver = "dopri5"
    with pytest.raises(ValueError, match="adaptive solver"):
        JascoSolver._check_fsdp_shards(solver, "valid", 8, 2)
    JascoSolver._check_fsdp_shards(solver, "valid", 8, 1)  # one process: no peer to wait for
