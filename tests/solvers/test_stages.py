"""Solver stages and safety nets: show, execute_only, epoch checkpoint copies, non-finite loss."""
from __future__ import annotations

import pytest
import torch
from helpers_training import ensure_example, experiment

RUN = ["solver=jasco/debug", "optim.epochs=3", "optim.updates_per_epoch=2", "checkpoint.save_every=1",
       "checkpoint.keep_last=2", "generate.every=0", "evaluate.every=0"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    ensure_example()
    from jasco.train import get_solver
    dora_dir = tmp_path_factory.mktemp("dora")
    with experiment(dora_dir, RUN) as xp:
        solver = get_solver(xp.cfg)
        solver.run()
        return dora_dir, solver.folder


def test_keep_last_deletes_old_epoch_copies(finished):
    _, folder = finished
    assert sorted(p.name for p in folder.glob("checkpoint_*.th")) == ["checkpoint_2.th", "checkpoint_3.th"]
    state = torch.load(folder / "checkpoint_3.th", weights_only=True)
    assert len(state["history"]) == 3


def test_execute_only_generate_uses_the_same_experiment(finished, caplog):
    dora_dir, folder = finished
    from jasco.train import get_solver
    with experiment(dora_dir, RUN + ["execute_only=generate"]) as xp:
        assert xp.folder == folder  # execute_only does not change the signature
        solver = get_solver(xp.cfg)
        with caplog.at_level("INFO"):
            solver.run()
    # The checkpoint was saved after epoch 3: samples and logs name epoch 3, not 4.
    assert len(list((folder / "samples" / "3").glob("*.wav"))) == 2 and not (folder / "samples" / "4").exists()
    assert "Generate Summary | Epoch 3" in caplog.text and "Epoch 4" not in caplog.text
    assert solver.epoch == 4  # outside the stage, the next epoch to train again
    assert len(torch.load(folder / "checkpoint.th", weights_only=True)["history"]) == 3  # nothing saved


def test_show_describes_model_and_data(finished):
    dora_dir, _ = finished
    from jasco.train import describe, get_solver
    with experiment(dora_dir, RUN + ["show=true"]) as xp:
        text = describe(get_solver(xp.cfg))
    assert "trainable parameters" in text and "conditioner melody" in text and "data train: JascoDataset" in text


def test_non_finite_loss_is_a_clear_error(finished):
    dora_dir, _ = finished
    from jasco.train import get_solver
    with experiment(dora_dir, RUN + ["optim.lr=1e-2"]) as xp:
        solver = get_solver(xp.cfg)
        with torch.no_grad():
            solver.model.linear.weight.fill_(float("nan"))
        batch = next(iter(solver.dataloaders["train"]))
        # The message names the batch's tracks and seek times, so bad data can be found.
        first = batch[1][0]
        with pytest.raises(FloatingPointError, match="Lower optim.lr") as caught:
            solver.run_step(batch, train=True)
        assert f"{first.meta.path}@{first.seek_time:.2f}s" in str(caught.value)
        assert all(info.meta.path in str(caught.value) for info in batch[1])


@pytest.mark.parametrize(("override", "message"), [
    ("generate.lm.solver=rk5", r"^generate\.lm: Unknown solver 'rk5'; choose from \['euler', 'midpoint'"),
    ("generate.lm.steps=0", r"^generate\.lm: steps must be an integer >= 1, got 0$"),
    ("generate.lm.time_grid=log", r"^generate\.lm: Unknown time_grid 'log'"),
])
def test_bad_sampler_settings_stop_the_run_at_start(override, message, tmp_path):
    ensure_example()
    from jasco.train import get_solver
    with experiment(tmp_path, RUN + [override]) as xp, pytest.raises(ValueError, match=message):
        get_solver(xp.cfg)  # builds the model and the loaders: no epoch is trained before the error
