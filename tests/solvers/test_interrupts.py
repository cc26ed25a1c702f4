"""Stop signals, the experiment lock and the deadlock watchdog, each on its own (no training run)."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from jasco.solvers.interrupts import StopSignals, TrainingInterrupted, ignore_stop_signals
from jasco.solvers.run_lock import LOCK_NAME, ExperimentLocked, experiment_lock, lock_holder
from jasco.solvers.watchdog import EXIT_CODE, Watchdog


# ---------------------------------------------------------------- StopSignals
def deliver(signum: int) -> None:
    """Send `signum` to this process and let Python run its handler."""
    os.kill(os.getpid(), signum)
    for _ in range(100):  # the handler runs between bytecodes of the main thread
        time.sleep(0.001)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2])
def test_a_stop_signal_is_recorded_not_acted_on(signum, capfd):
    before = signal.getsignal(signum)
    with StopSignals() as stop:
        assert stop.requested is None
        deliver(signum)
        assert stop.requested == signum  # the process is still here
    assert signal.getsignal(signum) is before  # handlers restored
    assert f"{signal.Signals(signum).name} received: saving a checkpoint" in capfd.readouterr().err


def test_second_ctrl_c_stops_at_once_and_requeue_wins_over_stop():
    with StopSignals() as stop:
        deliver(signal.SIGTERM)
        deliver(signal.SIGUSR1)
        assert stop.requested == signal.SIGUSR1  # SLURM: USR1 warning, then TERM: the requeue is kept
        deliver(signal.SIGTERM)
        assert stop.requested == signal.SIGUSR1
        with pytest.raises(KeyboardInterrupt):
            deliver(signal.SIGINT)


def test_requeue_signal_is_forwarded_to_the_previous_handler_once_saved():
    """Submitit listens on SIGUSR2; SLURM's SIGUSR1 warning goes to that handler too, after the save."""
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        with StopSignals() as stop:
            deliver(signal.SIGUSR1)
            assert calls == []  # nothing forwarded from the signal handler itself
            assert stop.requeue_handler() is not None
            stop.forward()
        assert calls == [signal.SIGUSR1]
        with StopSignals() as stop:  # SIGTERM is never forwarded (submitit only logs it)
            deliver(signal.SIGTERM)
            assert stop.requeue_handler() is None
            stop.forward()
        assert calls == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_nested_blocks_keep_a_start_up_signal_and_forward_past_the_outer_block():
    """train.main's block (around building the solver) and StandardSolver.run's block inside it."""
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        with StopSignals() as outer:
            deliver(signal.SIGUSR1)  # while the solver is being built
            with StopSignals() as inner:
                assert inner.requested == signal.SIGUSR1
                inner.forward()  # to submitit's handler, not to the outer block's
            assert calls == [signal.SIGUSR1]
            assert signal.getsignal(signal.SIGUSR1) == outer._handle
            with StopSignals():
                deliver(signal.SIGTERM)  # during training: handed back to the outer block
            assert outer.requested == signal.SIGUSR1  # a requeue still wins
        with StopSignals() as outer:
            with StopSignals():
                deliver(signal.SIGTERM)
            assert outer.requested == signal.SIGTERM
        assert signal.getsignal(signal.SIGUSR2) is not None and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_without_submitit_a_requeue_signal_just_stops():
    with StopSignals() as stop:
        deliver(signal.SIGUSR2)
        assert stop.requeue_handler() is None
        stop.forward()  # returns: the caller raises TrainingInterrupted
    assert TrainingInterrupted(signal.SIGUSR2, "x").exit_code == 140
    assert TrainingInterrupted(signal.SIGTERM, "x").exit_code == 143


def test_data_loader_workers_ignore_stop_signals():
    code = textwrap.dedent("""
        import os, signal, time
        from jasco.solvers.interrupts import ignore_stop_signals
        ignore_stop_signals(0)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
            os.kill(os.getpid(), signum)
        time.sleep(0.1)
        print("alive")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "alive" in result.stdout, result.stderr
    assert callable(ignore_stop_signals)


# ---------------------------------------------------------------- experiment lock
HOLD_LOCK = """
import sys, time
from jasco.solvers.run_lock import experiment_lock
with experiment_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_second_run_is_refused_while_the_first_holds_the_lock_and_a_killed_holder_frees_it(tmp_path):
    folder = tmp_path / "xps" / "abc123"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert lock_holder(folder / LOCK_NAME)["pid"] == holder.pid
        with pytest.raises(ExperimentLocked) as info, experiment_lock(folder):
            pass
        message = str(info.value)
        assert f"Experiment abc123 is already being trained by pid {holder.pid} on " in message
        assert "the lock is released as soon as that process exits" in message and "\n" not in message
        holder.kill()  # SIGKILL: no cleanup code runs, the kernel drops the lock
        holder.wait(timeout=30)
        with experiment_lock(folder) as path:  # no stale lock
            assert lock_holder(path)["pid"] == os.getpid()
        assert path.exists() and lock_holder(path) == {}  # released: the file stays, empty
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_lock_is_released_when_the_block_raises(tmp_path):
    with pytest.raises(RuntimeError), experiment_lock(tmp_path):
        raise RuntimeError("boom")
    with experiment_lock(tmp_path):
        pass


# ---------------------------------------------------------------- watchdog
class Fired(Exception):
    pass


def test_watchdog_stays_quiet_while_beaten_then_dumps_every_stack_and_exits(tmp_path, capfd):
    log_file = tmp_path / "solver.log.0"
    handler = logging.FileHandler(log_file)
    logging.getLogger().addHandler(handler)
    exits = []
    try:
        watchdog = Watchdog(0.4, backstop=False)
        watchdog.exit = exits.append  # instead of os._exit
        with watchdog:
            for update in range(6):  # 0.6 s of regular progress: no alarm
                time.sleep(0.1)
                watchdog.beat(f"train update {update} of epoch 1")
            assert exits == []
            deadline = time.time() + 10
            while not exits and time.time() < deadline:  # then nothing: the "hung collective"
                time.sleep(0.05)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    assert exits == [EXIT_CODE]
    text = log_file.read_text()
    assert "Deadlock watchdog: no progress for" in text and "the last was: train update 5 of epoch 1" in text
    assert "Stacks of all threads" in text and "test_watchdog_stays_quiet_while_beaten" in text  # the main thread
    assert "Stacks of all threads" in capfd.readouterr().err


def test_watchdog_rejects_a_bad_timeout():
    with pytest.raises(ValueError, match="deadlock.timeout must be a positive number of seconds"):
        Watchdog(0)


def test_watchdog_backstop_ends_a_process_whose_python_threads_cannot_run():
    """faulthandler's C timer fires even when the watchdog thread never gets to run."""
    code = textwrap.dedent("""
        import time
        from jasco.solvers import watchdog
        watchdog.BACKSTOP_GRACE_S = 0.5
        dog = watchdog.Watchdog(0.5)
        dog._watch = lambda: None  # the Python thread is "starved"
        with dog:
            time.sleep(30)
    """)
    begin = time.time()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and time.time() - begin < 25
    assert "Timeout (0:00:01)!" in result.stderr and "Thread" in result.stderr
