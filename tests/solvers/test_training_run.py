"""End to end: `dora run solver=jasco/debug` in a subprocess, and resuming an interrupted run."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import soundfile as sf
import torch
from helpers_training import REPO_ROOT, ensure_example, experiment

CHECKPOINT_KEYS = {"history", "xp.cfg", "xp.sig", "best_state", "model", "optimizer",
                   "lr_scheduler", "ema"}


def test_dora_run_debug(tmp_path):
    ensure_example()
    env = {**os.environ, "JASCO_DORA_DIR": str(tmp_path), "DORA_PACKAGE": "jasco"}
    dora = [sys.executable, "-m", "dora", "run", "solver=jasco/debug"]
    result = subprocess.run(dora, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    folders = list((tmp_path / "xps").iterdir())
    assert len(folders) == 1
    folder = folders[0]
    state = torch.load(folder / "checkpoint.th", weights_only=True)
    assert CHECKPOINT_KEYS <= set(state)
    assert set(state["best_state"]) == {"model"} and set(state["ema"]) == {"state", "count"}
    assert "transformer_lm" in state["xp.cfg"] and state["xp.sig"] == folder.name
    history = json.loads((folder / "history.json").read_text())
    assert len(history) == 2 and all({"train", "valid"} <= set(epoch) for epoch in history)
    assert "generate" in history[-1] and "evaluate" in history[-1]
    wavs = sorted((folder / "samples" / "2").glob("*.wav"))
    assert len(wavs) == 2
    for wav in wavs:
        info = sf.info(wav)
        assert info.samplerate == 32000 and info.frames == 4 * 32000
        record = json.loads(wav.with_suffix(".json").read_text())
        assert record["description"] and record["chords"]
        assert wav.with_suffix(".png").stat().st_size > 0
    assert list((folder / "tensorboard").rglob("events.out.tfevents*"))
    assert str(folder / "checkpoint.th") in result.stdout
    assert "\x1b[" not in (folder / "solver.log.0").read_text()  # plain text; the terminal keeps colours
    assert "Hydra14MigrationWarning" not in result.stderr and "version_base" not in result.stderr
    assert not [p.name for p in folder.iterdir() if ".tmp" in p.name]  # no temp file left


def test_resume_after_interruption(tmp_path):
    ensure_example()
    from jasco.train import get_solver
    overrides = ["solver=jasco/debug", "generate.every=100", "evaluate.every=100"]
    with experiment(tmp_path, overrides) as xp:
        solver = get_solver(xp.cfg)
        solver.run_epoch()  # then the job "dies"
        optimizer_state = solver.optimizer.state_dict()
        ema_state = solver.ema.state_dict()
        first_epoch = list(solver.history)
    with experiment(tmp_path, overrides) as xp:
        solver = get_solver(xp.cfg)
        assert solver.restore()
        assert solver.epoch == 2 and solver.history == first_epoch
        restored = solver.optimizer.state_dict()
        assert restored["param_groups"][0]["lr"] == optimizer_state["param_groups"][0]["lr"]
        for key, value in optimizer_state["state"].items():
            for name in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(restored["state"][key][name], value[name])
        assert solver.ema.state_dict()["count"] == ema_state["count"]
        solver.run()
        assert len(solver.history) == 2
