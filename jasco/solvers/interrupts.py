"""Graceful stops: a stop signal becomes a request that training honours at the next update boundary.

`StopSignals` (a context manager, entered by `StandardSolver.run`) replaces the handlers of

- SIGINT (Ctrl-C) and SIGTERM (`kill`, SLURM's time limit or `scancel`): save a checkpoint, exit
  with status 128 + signal (130, 143);
- SIGUSR1 and SIGUSR2 (SLURM's warning `--signal=...@seconds` before a kill; submitit asks for
  USR2 by default, `SUBMITIT_PREEMPT_SIGNAL` changes it): save a checkpoint, then hand the signal
  to submitit's own handler, which requeues the job (`scontrol requeue`) and exits. Outside
  submitit they exit like SIGTERM (138, 140).

The handler itself only records the signal (and writes one line to stderr with `os.write`, which,
unlike logging or print, is safe inside a signal handler): the solver checks `requested` after
each update and stops there, so the checkpoint holds a consistent state, never one taken in the
middle of an optimizer step. A second Ctrl-C raises KeyboardInterrupt at once (no checkpoint).

Submitit is integrated, not fought: its SIGUSR2 handler (`checkpoint_and_try_requeue`, which calls
Dora's `checkpoint` and requeues) is kept and called by `forward` once our checkpoint is on disk;
its SIGTERM handler only logs, so nothing is lost by deferring it.

Data-loader workers get `ignore_stop_signals` as their `worker_init_fn`: SLURM signals every process
of a job step, and a worker killed by SIGUSR1/SIGTERM would make the DataLoader raise in the main
process before it reaches the update boundary. Workers end with the main process as usual.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["REQUEUE_SIGNALS", "STOP_SIGNALS", "StopRequested", "StopSignals", "TrainingInterrupted",
           "ignore_stop_signals", "signal_name", "stop_priority"]

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
REQUEUE_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGUSR1, signal.SIGUSR2)


def signal_name(signum: int) -> str:
    """`SIGTERM` for 15."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def stop_priority(signum: int | None) -> int:
    """Which request wins when several arrive (or ranks disagree): a requeue over a plain stop."""
    if not signum:
        return 0
    return 2 if signum in REQUEUE_SIGNALS else 1


class StopRequested(Exception):
    """Raised by the solver at an update boundary after a stop signal; `StandardSolver.run` saves and stops."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"{signal_name(signum)} received")
        self.signum = signum


class TrainingInterrupted(Exception):
    """Raised by `StandardSolver.run` once an interrupted run has saved its checkpoint.

    `exit_code` is the shell's convention for a process ended by the signal (128 + signal number),
    what `jasco.train.main` exits with; the message says where the run stopped and how to resume.
    """

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignals:
    """Within the block, the signals of `STOP_SIGNALS` set `requested` instead of stopping the process.

    Handlers are only installed in the main thread (Python delivers signals there); elsewhere the
    block installs nothing and `requested` stays None. The previous handlers are restored on exit.

    Blocks nest: an inner block takes over the request an outer one recorded and forwards to the
    outer one's previous handlers, and its own request is handed back to the outer block on exit.
    `jasco.train.main` opens one around building the solver, so a signal during start-up is kept
    for the first update boundary; `StandardSolver.run` opens the inner one.
    """

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}  # where requeue signals are forwarded
        self._restore: dict[int, Any] = {}  # what is put back on exit
        self._outer: StopSignals | None = None

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            logger.debug("Not in the main thread: stop signals keep their handlers")
            return self
        for signum in STOP_SIGNALS:
            current = signal.getsignal(signum)
            self._restore[signum] = current
            outer = getattr(current, "__self__", None)
            if isinstance(outer, StopSignals):
                self._outer = outer
                self._previous[signum] = outer._previous.get(signum, signal.SIG_DFL)
            else:
                self._previous[signum] = current
            signal.signal(signum, self._handle)
        if self._outer is not None:
            self.requested = self._outer.requested
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        for signum, handler in self._restore.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        if self._outer is not None and stop_priority(self.requested) > stop_priority(self._outer.requested):
            self._outer.requested = self.requested
        self._restore.clear()
        self._previous.clear()
        self._outer = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.requested is not None:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        if stop_priority(signum) > stop_priority(self.requested):
            self.requested = signum
        what = "and requeueing" if signum in REQUEUE_SIGNALS and self.requeue_handler() else "and stopping"
        again = " (Ctrl-C again to stop at once, without saving)" if signum == signal.SIGINT else ""
        os.write(2, f"\njasco: {signal_name(signum)} received: saving a checkpoint after the current "
                    f"update {what}{again}\n".encode())

    def requeue_handler(self) -> Callable[[int, FrameType | None], Any] | None:
        """The Python handler a requeue signal had before ours (submitit's), None when there is none.

        The handler of the signal received is preferred; a SIGUSR1 with submitit listening on
        SIGUSR2 (its default) goes to that one, so SLURM's warning signal also requeues.
        """
        if self.requested not in REQUEUE_SIGNALS:
            return None
        for signum in (self.requested, *REQUEUE_SIGNALS):
            handler = self._previous.get(signum)
            if callable(handler) and handler is not signal.default_int_handler:
                return handler
        return None

    def forward(self) -> None:
        """Once the checkpoint is saved, give a requeue signal to the handler it was meant for.

        Under submitit this requeues the job and exits the process (`sys.exit`); without a previous
        handler it returns and the caller stops the run.
        """
        handler = self.requeue_handler()
        if handler is not None:
            logger.info("Handing %s to %s (requeue)", signal_name(self.requested or 0),
                        getattr(handler, "__qualname__", handler))
            handler(self.requested or 0, None)


def ignore_stop_signals(worker_id: int) -> None:
    """`worker_init_fn` of data loaders: workers ignore the stop signals, the main process handles them."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
