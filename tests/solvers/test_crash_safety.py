"""Crash safety end to end: `dora run` killed at random moments (SIGKILL, also mid-save), stopped by
SIGTERM / Ctrl-C, started twice, or hung; each time the same command resumes, and the final state is
bit-identical to an uninterrupted run of the same seed (weights, optimizer, scheduler, EMA, best
state, update count, random states, and every metric but timings).

The runs are `jasco/debug` with 3 epochs of 4 updates and no evaluate/generate stage
(`helpers_interrupts.FAST`): ~10 s of start-up and ~1.5 s per epoch on 2 CPU cores.
"""
from __future__ import annotations

import random
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers_interrupts import (
    FAST,
    PROGRESS,
    assert_same_training,
    checkpoint_of,
    finish,
    start_run,
    wait_for,
)
from helpers_training import ensure_example, experiment

from jasco.solvers.checkpoint import load_checkpoint

KILL_SEED = 1234  # the "random" kill moments are drawn from it: a failure replays exactly


class Reference:
    """The uninterrupted run, started at once in the background (it overlaps the interrupted runs)."""

    def __init__(self, dora_dir: Path) -> None:
        self.dora_dir = dora_dir
        self.log = dora_dir.parent / "reference.log"
        self.process = start_run(dora_dir, FAST, self.log)
        self._checkpoint: dict[str, Any] | None = None

    def checkpoint(self) -> dict[str, Any]:
        if self._checkpoint is None:
            assert finish(self.process) == 0, self.log.read_text()[-3000:]
            self._checkpoint = checkpoint_of(self.dora_dir)
        return self._checkpoint


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Reference:
    ensure_example()
    reference = Reference(tmp_path_factory.mktemp("reference") / "dora")
    yield reference
    if reference.process.poll() is None:
        reference.process.kill()


def folder_of(dora_dir: Path) -> Path:
    folders = list((dora_dir / "xps").iterdir())
    assert len(folders) == 1
    return folders[0]


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def last_progress(log: Path) -> tuple[int, int]:
    """(epoch, update) of the last train progress line of `log`, (1, 0) when there is none."""
    found = PROGRESS.findall(log.read_text(errors="replace"))
    return (int(found[-1][0]), int(found[-1][1])) if found else (1, 0)


def check_after_kill(dora_dir: Path, log: Path) -> None:
    """No corrupt file, and nothing lost but the epoch in progress."""
    folder = folder_of(dora_dir)
    epoch, _ = last_progress(log)
    if not (folder / "checkpoint.th").exists():
        assert epoch == 1, "killed after epoch 1 and no checkpoint"
        return
    state = load_checkpoint(folder / "checkpoint.th")  # complete: loads with the safe loader
    assert len(state["history"]) >= epoch - 1, (len(state["history"]), epoch)
    for copy in folder.glob("checkpoint_*.th"):
        load_checkpoint(copy)


@pytest.mark.slow  # 50-85 s on 2 cores: 6 runs one after the other (the reference beside them)
def test_sigkill_at_random_moments_then_rerun_matches_an_uninterrupted_run(reference, tmp_path):
    rng = random.Random(KILL_SEED)
    dora_dir = tmp_path / "dora"
    # (what to wait for in the run's log, extra hooks, then seconds until the kill): each lands
    # within an update or two of its mark, so that every run has work left when it is killed.
    kills = [
        (rf"Train \| Epoch 1 \| {rng.randint(1, 3)}/4", {}, rng.uniform(0, 0.3)),  # before any checkpoint
        (rf"Train \| Epoch 2 \| {rng.randint(1, 3)}/4", {}, rng.uniform(0, 0.3)),
        (r"JASCO_TEST: save 1 half written", {"JASCO_TEST_SLOW_SAVE": "1"}, 0.0),  # epoch 2's checkpoint.th
        (r"Resumed from .* at epoch 2", {}, rng.uniform(0, 0.3)),  # restore done, first update under way
        (rf"Train \| Epoch 3 \| {rng.randint(1, 3)}/4", {}, rng.uniform(0, 0.3)),
    ]
    begin = time.time()
    for index, (pattern, hooks, delay) in enumerate(kills):
        log = tmp_path / f"run{index}.log"
        process = start_run(dora_dir, FAST, log, **hooks)
        try:
            wait_for(log, pattern, process)
            time.sleep(delay)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=60)
        if process.returncode != -signal.SIGKILL:  # it may have finished within `delay`: then it must be clean
            assert process.returncode == 0, log.read_text()[-3000:]
        check_after_kill(dora_dir, log)
        if hooks:  # killed mid-write: the half-written temp file is there, checkpoint.th is epoch 1's
            folder = folder_of(dora_dir)
            assert temp_files(folder) and len(load_checkpoint(folder / "checkpoint.th")["history"]) == 1
    log = tmp_path / "final.log"
    assert finish(start_run(dora_dir, FAST, log)) == 0, log.read_text()[-3000:]
    assert not temp_files(folder_of(dora_dir))  # the killed save's temp file was removed at start
    assert_same_training(checkpoint_of(dora_dir), reference.checkpoint())
    print(f"5 kills and reruns in {time.time() - begin:.0f} s")


@pytest.mark.slow
def test_sigterm_saves_mid_epoch_exits_cleanly_and_the_rerun_resumes_identically(reference, tmp_path):
    dora_dir = tmp_path / "dora"
    log = tmp_path / "stopped.log"
    process = start_run(dora_dir, FAST, log)
    try:
        wait_for(log, r"Train \| Epoch 2 \| 2/4", process)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 143  # 128 + SIGTERM, as a shell reports a process it ended
    finally:
        process.kill()
    text = log.read_text()
    match = re.search(r"SIGTERM: stopped in epoch 2, after update (\d) of 4; checkpoint saved to \S+checkpoint.th\. "
                      r"Run the same command to resume\.", text)
    assert match, text[-3000:]
    assert "Traceback" not in text and "Error" not in text
    state = checkpoint_of(dora_dir)
    updates = int(match.group(1))
    assert len(state["history"]) == 1 and state["resume"]["epoch"] == 2
    assert state["resume"]["train_updates"] == updates and state["updates"] == 4 + updates

    log = tmp_path / "resumed.log"
    assert finish(start_run(dora_dir, FAST, log)) == 0, log.read_text()[-3000:]
    assert f"Resuming epoch 2 at update {updates + 1}" in log.read_text()
    assert_same_training(checkpoint_of(dora_dir), reference.checkpoint())


@pytest.mark.parametrize(("signum", "stage", "at", "where"), [
    (signal.SIGINT, "train", 2, "after update 2 of 4"),  # Ctrl-C: resumes at update 3 of epoch 2
    (signal.SIGTERM, "valid", 1, "after its train stage"),  # resumes at valid, the train stage kept
])
def test_a_stop_in_process_saves_where_it_stands_and_resumes_identically(signum, stage, at, where, reference,
                                                                        tmp_path, monkeypatch):
    """`StandardSolver.run` itself (no subprocess): the signal comes at batch `at` of `stage` in epoch 2."""
    import os

    from jasco.solvers.base import StandardSolver
    from jasco.solvers.interrupts import TrainingInterrupted
    from jasco.train import get_solver, init_seed_and_system

    real_step_done = StandardSolver.step_done
    batches = []

    def step_done(self: StandardSolver) -> None:
        if self._current_stage == stage and self.epoch == 2:
            batches.append(1)
            if len(batches) == at:
                os.kill(os.getpid(), signum)  # as Ctrl-C or `kill` would; handled at the next bytecode
        real_step_done(self)

    monkeypatch.setattr(StandardSolver, "step_done", step_done)
    name = signal.Signals(signum).name
    with experiment(tmp_path, FAST) as xp:
        init_seed_and_system(xp.cfg)
        expected = rf"^{name}: stopped in epoch 2, {where}; checkpoint saved"
        with pytest.raises(TrainingInterrupted, match=expected) as info:
            get_solver(xp.cfg).run()
        assert info.value.exit_code == 128 + signum
        state = torch.load(xp.folder / "checkpoint.th", weights_only=True)
        assert state["resume"]["train_updates"] == (2 if stage == "train" else 4)
        assert ("train_metrics" in state["resume"]) == (stage != "train")
        init_seed_and_system(xp.cfg)  # what a new process does before it restores
        solver = get_solver(xp.cfg)
        solver.run()
    assert len(solver.history) == 3
    assert_same_training(torch.load(xp.folder / "checkpoint.th", weights_only=True), reference.checkpoint())


@pytest.mark.slow
def test_two_processes_stop_together_when_one_is_signalled_and_resume_identically(tmp_path):
    """2 gloo processes under torchrun; only rank 1 gets SIGTERM. The ranks agree on the stop at the
    same update, rank 0 saves both ranks' random states, and the rerun (2 processes) ends as an
    uninterrupted 2-process run does, bit for bit."""
    ensure_example()
    reference = start_run(tmp_path / "reference", FAST, tmp_path / "reference.log", processes=2)
    try:
        dora_dir, log = tmp_path / "dora", tmp_path / "stopped.log"
        assert finish(start_run(dora_dir, FAST, log, processes=2, JASCO_TEST_SIGNAL_AT="6:1:TERM")) != 0
        text = log.read_text()
        assert "JASCO_TEST: rank 1 sends SIGTERM" in text and "JASCO_TEST: rank 0" not in text
        assert text.count("SIGTERM: stopped in epoch 2, after update 2 of 4; checkpoint saved") == 2, text[-3000:]
        state = checkpoint_of(dora_dir)
        assert state["resume"]["train_updates"] == 2 and len(state["rng"]) == 2
        assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # one stream per rank, both kept

        log = tmp_path / "resumed.log"
        assert finish(start_run(dora_dir, FAST, log, processes=2)) == 0, log.read_text()[-3000:]
        assert "Resuming epoch 2 at update 3" in log.read_text()
        assert finish(reference) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    finally:
        reference.kill()
    assert_same_training(checkpoint_of(dora_dir), checkpoint_of(tmp_path / "reference"))


def test_a_second_dora_run_of_the_same_experiment_is_refused(tmp_path):
    ensure_example()
    dora_dir = tmp_path / "dora"
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = start_run(dora_dir, FAST, first_log, JASCO_TEST_HANG_AT="1")  # stays in its first update
    try:
        wait_for(first_log, "JASCO_TEST: hanging", first)
        second = start_run(dora_dir, FAST, second_log)
        assert finish(second, timeout=120) == 3
        text = second_log.read_text()
        assert re.search(rf"Experiment \w+ is already being trained by pid {first.pid} on \S+, since [\d: -]+ "
                         r"\(\S+train.lock is locked\): a second run would write the same checkpoint\.", text), text
        assert "Traceback" not in text
        assert first.poll() is None  # the first run is untouched
        folder = folder_of(dora_dir)
        assert not (folder / "checkpoint.th").exists() and not temp_files(folder)
    finally:
        first.kill()
        first.wait(timeout=60)


def test_deadlock_watchdog_dumps_stacks_and_exits_when_an_update_hangs(tmp_path):
    ensure_example()
    dora_dir = tmp_path / "dora"
    log = tmp_path / "hung.log"
    # 6 s: several times a debug update even on a loaded 2-core machine, so only the planted hang trips it.
    process = start_run(dora_dir, [*FAST, "deadlock.use=true", "deadlock.timeout=6"], log, JASCO_TEST_HANG_AT="6")
    try:
        wait_for(log, "JASCO_TEST: hanging", process)
        hung_at = time.time()
        assert process.wait(timeout=120) == 124
        waited = time.time() - hung_at
    finally:
        process.kill()
    text = log.read_text()
    assert re.search(r"Deadlock watchdog: no progress for [67] s \(deadlock.timeout=6\); the last was: "
                     r"train update 1 of epoch 2\.", text), text[-3000:]
    assert 5.5 < waited < 40
    solver_log = (folder_of(dora_dir) / "solver.log.0").read_text()
    for where in (text, solver_log):  # every thread's stack, in the terminal and in the log file
        assert "Stacks of all threads" in where and 'File "' in where and "in step_done" in where
        assert "jasco-deadlock-watchdog" in where or "Thread 0x" in where
