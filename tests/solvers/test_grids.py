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
