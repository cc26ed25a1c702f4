"""One training run per experiment folder: an exclusive `flock` on `<xp folder>/train.lock`.

Two runs of the same signature (a `dora run` started twice, or beside the SLURM job of a grid)
would both write `checkpoint.th`, each overwriting the other's, and each would delete the other's
temp files at start-up. `experiment_lock` takes an exclusive, non-blocking `fcntl.flock` on the
lock file for the duration of training; a second run finds it taken and stops at once with
`ExperimentLocked`, whose message names the holder (pid, host, SLURM job, start time, written into
the file by the holder) and what to do.

The lock belongs to the open file, not to the file's existence: the kernel releases it when the
holding process exits, however it exits (SIGKILL, OOM kill, node reboot), so a crashed run never
leaves a stale lock behind, and the file itself is never deleted (deleting a lock file lets two
processes lock two different files under the same name). Data-loader workers started with the
`fork` method share the open file and so hold the lock until they exit too, a few seconds after
the main process (the default `forkserver` workers do not). On NFS, Linux implements `flock` with
NFS byte-range locks, which all clients see (NFSv4, or NFSv3 with `lockd`).

Only training takes the lock: `execute_only=...`, `show=true` and exports read the folder beside
a running job.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["LOCK_NAME", "ExperimentLocked", "experiment_lock", "lock_holder"]

LOCK_NAME = "train.lock"


class ExperimentLocked(RuntimeError):
    """Another process is training this experiment (holds `<folder>/train.lock`)."""

    exit_code = 3


def _holder_record() -> dict[str, object]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "slurm_job": os.environ.get("SLURM_JOB_ID"),
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}


def lock_holder(path: str | Path) -> dict[str, object]:
    """What the holder wrote into the lock file (empty when unreadable or not written yet)."""
    try:
        return dict(json.loads(Path(path).read_text() or "{}"))
    except (OSError, ValueError, TypeError):
        return {}


def _describe(holder: dict[str, object]) -> str:
    if not holder:
        return "another process"
    parts = [f"pid {holder.get('pid')} on {holder.get('host')}"]
    if holder.get("slurm_job"):
        parts.append(f"SLURM job {holder['slurm_job']}")
    if holder.get("started"):
        parts.append(f"since {holder['started']}")
    return ", ".join(parts)


@contextmanager
def experiment_lock(folder: str | Path) -> Iterator[Path]:
    """Hold the exclusive training lock of `folder` for the block.

    Raises:
        ExperimentLocked: another process holds it (the message names it and what to do).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        holder = _describe(lock_holder(path))
        raise ExperimentLocked(
            f"Experiment {folder.name} is already being trained by {holder} ({path} is locked): a second run "
            f"would write the same checkpoint. Wait for that run to finish, or stop it first (Ctrl-C, kill, "
            f"scancel) and run again: the lock is released as soon as that process exits, even if it "
            f"crashes.") from None
    except BaseException:
        os.close(fd)
        raise
    try:
        record = json.dumps(_holder_record()).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        yield path
    finally:
        try:
            os.ftruncate(fd, 0)  # no holder any more; the file stays (see the module docstring)
        finally:
            os.close(fd)  # releases the lock
