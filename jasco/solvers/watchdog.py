"""Deadlock watchdog (`deadlock.use`, `deadlock.timeout`): a run that stops making progress exits.

A hung collective (one rank waiting forever in an all-reduce another rank never joins), a stuck
data-loader worker or a file system that stopped answering leaves a job alive and idle until its
time limit, burning the allocation. `Watchdog` is a daemon thread: the solver calls `beat()` after
every update (and every batch of the other stages, and around checkpoint saves); when no beat comes
for `timeout` seconds it logs an error naming the last progress, writes the stack of every thread
(`faulthandler`) to stderr and to the log files, and ends the process with `EXIT_CODE` (124, as
GNU `timeout`), so SLURM frees the nodes and marks the job failed. With several ranks each has its
own watchdog; the launcher (torchrun, srun) ends the others.

The thread needs the GIL to run. For a hang inside C code that holds it, `faulthandler`'s own
C-level timer (`dump_traceback_later`, re-armed every `timeout / 4` s of progress at most, so beats
stay cheap) is the backstop: after `timeout + BACKSTOP_GRACE_S` without progress it dumps the
stacks to stderr and exits with status 1.
"""
from __future__ import annotations

import faulthandler
import logging
import os
import sys
import threading
import time
from types import TracebackType
from typing import IO

logger = logging.getLogger(__name__)

__all__ = ["BACKSTOP_GRACE_S", "EXIT_CODE", "Watchdog"]

EXIT_CODE = 124
BACKSTOP_GRACE_S = 60.0


def _log_streams() -> list[IO[str]]:
    """Where the stacks go: stderr and the files of the root logger's file handlers (solver.log.<rank>)."""
    streams: list[IO[str]] = [sys.__stderr__ or sys.stderr]
    for handler in logging.getLogger().handlers:
        stream = getattr(handler, "stream", None)
        if isinstance(handler, logging.FileHandler) and stream is not None and stream not in streams:
            streams.append(stream)
    return streams


class Watchdog:
    """Ends the process when `beat()` is not called for `timeout` seconds (see the module docstring).

    Use as a context manager (`with Watchdog(600) as watchdog: ... watchdog.beat("train update")`);
    leaving the block stops it. `exit` is what ends the process (tests replace it).
    """

    def __init__(self, timeout: float, exit_code: int = EXIT_CODE, backstop: bool = True) -> None:
        if not timeout or timeout <= 0:
            raise ValueError(f"deadlock.timeout must be a positive number of seconds, got {timeout!r}")
        self.timeout = float(timeout)
        self.exit_code = exit_code
        self.backstop = backstop
        self._last = time.monotonic()
        self._what = "start"
        self._armed_at = float("-inf")
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Watchdog:
        self._last = time.monotonic()
        self._thread = threading.Thread(target=self._watch, name="jasco-deadlock-watchdog", daemon=True)
        self._thread.start()
        self._arm_backstop()
        logger.info("Deadlock watchdog on: the run exits if no update completes for %.0f s", self.timeout)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stopped.set()
        if self.backstop:
            faulthandler.cancel_dump_traceback_later()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def beat(self, what: str) -> None:
        """Progress was made (`what`: e.g. `train update 12 of epoch 3`)."""
        self._last = time.monotonic()
        self._what = what
        if self._last - self._armed_at > self.timeout / 4:
            self._arm_backstop()

    def _arm_backstop(self) -> None:
        if self.backstop:
            faulthandler.dump_traceback_later(self.timeout + BACKSTOP_GRACE_S, exit=True,
                                              file=sys.__stderr__ or sys.stderr)
            self._armed_at = time.monotonic()

    def _watch(self) -> None:
        poll = min(5.0, self.timeout / 4)
        while not self._stopped.wait(poll):
            idle = time.monotonic() - self._last
            if idle >= self.timeout:
                self._fire(idle)
                return

    def _fire(self, idle: float) -> None:
        logger.error("Deadlock watchdog: no progress for %.0f s (deadlock.timeout=%g); the last was: %s. "
                     "The stack of every thread follows; exiting with status %d.",
                     idle, self.timeout, self._what, self.exit_code)
        for stream in _log_streams():
            try:
                stream.write(f"\nStacks of all threads (pid {os.getpid()}), no progress for {idle:.0f} s:\n")
                stream.flush()
                faulthandler.dump_traceback(file=stream, all_threads=True)
                stream.flush()
            except (OSError, ValueError):  # a closed stream: the others still get the stacks
                continue
        self.exit(self.exit_code)

    def exit(self, code: int) -> None:
        """End the process at once (no cleanup: the main thread is stuck, so `sys.exit` would not work)."""
        os._exit(code)
