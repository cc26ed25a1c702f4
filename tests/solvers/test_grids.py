"""`dora grid` finds our grids and lists their experiments (no launch)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from helpers_training import REPO_ROOT


@pytest.mark.parametrize("grid,count", [("debug", 2), ("chords_drums", 3)])
def test_grid_dry_run(tmp_path, grid, count):
    env = {**os.environ, "JASCO_DORA_DIR": str(tmp_path), "DORA_PACKAGE": "jasco", "JASCO_DSET": "audio/example"}
    result = subprocess.run([sys.executable, "-m", "dora", "grid", grid, "--dry_run", "--init"],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    signatures = set(re.findall(r"\b[0-9a-f]{8}\b", result.stdout))
    assert len(signatures) == count


def test_team_file_sets_account_qos_constraint_exclude_and_setup(monkeypatch):
    from jasco import environment
    from jasco.train import main

    team = {"partitions": {"global": "gpu", "team": None},
            "slurm": {"account": "music-lab", "qos": "high", "constraint": "volta32gb", "exclude": "node7",
                      "setup": ["module load cuda/12.4"], "gpus_per_node": "auto"}}
    monkeypatch.setattr(environment, "team_config", lambda: team)
    slurm = main.get_slurm_config()
    assert (slurm.partition, slurm.account, slurm.qos, slurm.constraint, slurm.exclude) == (
        "gpu", "music-lab", "high", "volta32gb", "node7")
    assert slurm.setup[0] == "module load cuda/12.4"
    team["slurm"] = {"setup": "module load cuda"}
    with pytest.raises(ValueError, match="slurm.setup must be a list of shell lines"):
        main.get_slurm_config()
    team["slurm"] = {"account": None, "setup": []}  # unset: Dora's defaults stay
    assert main.get_slurm_config().account is None
