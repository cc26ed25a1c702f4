"""Helpers for the crash-safety, preemption and watchdog tests: `dora run` in a subprocess with
test hooks, waiting for a run to reach a point of its log, and comparing final checkpoints.

Run as a script, this file is `dora` (`python tests/helpers_interrupts.py run solver=...`) with
hooks chosen by environment variables, so that the tests can stop a run at an exact point:

- `JASCO_TEST_SLOW_SAVE=N`: the N-th checkpoint save of the process writes half of the file, prints
  `JASCO_TEST: save N half written` to stderr and sleeps (the test then kills it mid-write).
- `JASCO_TEST_HANG_AT=N`: the update after the N-th `step_done` of a train stage (the N-th update
  of the process when N > 1; the first one when N is 1) prints `JASCO_TEST: hanging` and sleeps
  for an hour (a stuck collective, for the deadlock watchdog and the lock test).
- `JASCO_TEST_SIGNAL_AT=N:RANK:NAME`: the process of rank RANK sends itself signal NAME (`TERM`,
  `USR1`, ...) after its N-th update (to stop a multi-process run from one process only).
"""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
# Short runs: 3 epochs of 4 updates, no evaluate/generate stage; checkpoint copies every epoch.
FAST = ["solver=jasco/debug", "optim.epochs=3", "generate.every=0", "evaluate.every=0"]
PROGRESS = re.compile(r"Train \| Epoch (\d+) \| (\d+)/\d+")
# What must be equal between an interrupted-and-resumed run and an uninterrupted one.
TRAINING_STATE = ("model", "optimizer", "lr_scheduler", "ema", "best_state", "updates", "rng")
TIMING_METRICS = ("duration", "samples_per_s", "seconds_per_sample")


def dora_env(dora_dir: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("JASCO_TEST_")}
    env.update(JASCO_DORA_DIR=str(dora_dir), DORA_PACKAGE="jasco", PYTHONUNBUFFERED="1", **extra)
    return env


def start_run(dora_dir: Path, overrides: list[str], log: Path, processes: int = 1, **hooks: str) -> subprocess.Popen:
    """`dora run <overrides>` (through this file, so `hooks` apply), stdout and stderr into `log`.

    With `processes` > 1, under `torchrun --standalone` (gloo on CPU), as `dora run -d` would.
    """
    command = [sys.executable, str(Path(__file__).resolve()), "run", *overrides]
    if processes > 1:
        command[1:1] = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
        hooks = {"OMP_NUM_THREADS": "1", **hooks}
    with open(log, "ab") as out:
        return subprocess.Popen(command, cwd=REPO_ROOT, env=dora_env(dora_dir, **hooks), stdout=out,
                                stderr=subprocess.STDOUT)


def wait_for(log: Path, pattern: str | re.Pattern[str], process: subprocess.Popen | None = None,
             timeout: float = 120) -> re.Match[str]:
    """Poll `log` until `pattern` matches (fails if `process` exits first or on timeout)."""
    pattern = re.compile(pattern) if isinstance(pattern, str) else pattern
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        match = pattern.search(text)
        if match:
            return match
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the run exited ({process.returncode}) before {pattern.pattern!r}:\n{text[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"{pattern.pattern!r} not in {log} after {timeout} s:\n{log.read_text()[-3000:]}")


def finish(process: subprocess.Popen, timeout: float = 300) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


def checkpoint_of(dora_dir: Path) -> dict[str, Any]:
    folders = list((dora_dir / "xps").iterdir())
    assert len(folders) == 1, folders
    return torch.load(folders[0] / "checkpoint.th", weights_only=True)


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two checkpoint values differ (tensors bit for bit), timing metrics ignored."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape or a.dtype != b.dtype or not torch.equal(a, b):
            return [path]
        return []
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path}: keys {sorted(set(a) ^ set(b), key=str)}"]
        return [d for key in a if key not in TIMING_METRICS for d in differences(a[key], b[key], f"{path}.{key}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def assert_same_training(resumed: dict[str, Any], reference: dict[str, Any]) -> None:
    """The final states of two runs are bit-identical (history compared without timings)."""
    found = [d for key in (*TRAINING_STATE, "history") for d in differences(resumed[key], reference[key], key)]
    assert not found, "resumed run differs from the uninterrupted one: " + ", ".join(found[:10])
    assert resumed["resume"] is None and reference["resume"] is None


# ---------------------------------------------------------------- hooks (in the dora process)
def _install_hooks() -> None:
    slow_save = int(os.environ.get("JASCO_TEST_SLOW_SAVE", "0"))
    hang_at = int(os.environ.get("JASCO_TEST_HANG_AT", "0"))
    signal_at = os.environ.get("JASCO_TEST_SIGNAL_AT")
    if slow_save:
        from jasco.solvers import checkpoint
        real_save = torch.save
        calls = [0]

        def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
            calls[0] += 1
            if calls[0] != slow_save:
                return real_save(obj, f, *args, **kwargs)
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            print(f"JASCO_TEST: save {slow_save} half written", file=sys.stderr, flush=True)
            time.sleep(3600)

        checkpoint.torch.save = save  # the module's `torch` is the torch module: patched for this process only
    if hang_at or signal_at:
        import signal

        from jasco.solvers.base import StandardSolver
        real_step_done = StandardSolver.step_done
        steps = [0]
        update, rank, name = signal_at.split(":") if signal_at else ("0", "-1", "")

        def step_done(self: Any) -> None:
            if self._current_stage == "train":
                steps[0] += 1
                if steps[0] == hang_at:  # the solver never gets past this update
                    print("JASCO_TEST: hanging", file=sys.stderr, flush=True)
                    time.sleep(3600)
                if steps[0] == int(update) and os.environ.get("RANK", "0") == rank:
                    print(f"JASCO_TEST: rank {rank} sends SIG{name}", file=sys.stderr, flush=True)
                    os.kill(os.getpid(), getattr(signal, f"SIG{name}"))
            real_step_done(self)

        StandardSolver.step_done = step_done


def send(process: subprocess.Popen, signum: int) -> None:
    os.kill(process.pid, signum)


if __name__ == "__main__":
    _install_hooks()
    from dora.__main__ import main
    main()
