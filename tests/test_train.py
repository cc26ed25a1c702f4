"""jasco.train, the Dora entry point: a plain-text solver.log, and no Hydra migration warnings."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings

from helpers_training import REPO_ROOT, ensure_example, experiment

RUN = ["solver=jasco/debug", "optim.epochs=1", "optim.updates_per_epoch=3", "generate.every=0", "evaluate.every=0"]


def test_solver_log_is_plain_text_while_the_terminal_keeps_colours(tmp_path):
    ensure_example()
    from jasco.train import PlainFormatter, get_solver, setup_logging

    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    try:
        with experiment(tmp_path, RUN) as xp:
            xp.folder.mkdir(parents=True, exist_ok=True)  # what `dora run` does first (init_xp)
            setup_logging("INFO", with_file_log=True)
            terminal = [h for h in root.handlers if not isinstance(h, logging.FileHandler)]
            assert terminal and not any(isinstance(h.formatter, PlainFormatter) for h in terminal)
            get_solver(xp.cfg).run()  # a tiny solver: one epoch of 3 updates, then valid
            for handler in root.handlers:
                handler.flush()
            logs = list(xp.folder.glob("solver.log*"))
    finally:
        for handler in root.handlers:
            if handler not in saved[1]:
                handler.close()
        root.handlers[:] = saved[1]
        root.setLevel(saved[0])
    assert len(logs) == 1
    text = logs[0].read_text()
    assert "Train Summary" in text and "Valid Summary" in text  # flashy writes these in bold
    assert "\x1b[" not in text


def test_get_xp_emits_no_hydra_migration_warning(tmp_path):
    from jasco.train import main
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        before = list(warnings.filters)
        xp = main.get_xp(["solver=jasco/debug"])
        assert warnings.filters == before  # the filter lives only inside get_xp
    assert xp.cfg.solver == "jasco"
    assert not [w for w in caught if "version_base" in str(w.message) or "working directory" in str(w.message)]


def test_dora_run_prints_no_hydra_migration_warnings(tmp_path):
    ensure_example()
    env = {**os.environ, "JASCO_DORA_DIR": str(tmp_path), "DORA_PACKAGE": "jasco", "PYTHONWARNINGS": "default"}
    command = [sys.executable, "-m", "dora", "run", "solver=jasco/debug", "show=true"]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trainable parameters" in result.stdout
    for noise in ("Hydra14MigrationWarning", "version_base", "will no longer change working directory"):
        assert noise not in result.stderr, result.stderr[-3000:]
