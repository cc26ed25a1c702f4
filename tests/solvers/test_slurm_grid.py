"""Grids on SLURM: resources fitted to the cluster (`jasco.grids._slurm`), `dora grid debug`
run to completion on a real cluster (the one-node cluster of scripts/local_slurm.sh), and a job
signalled as SLURM does before a preemption or time limit, which saves, requeues and resumes.

The integration test starts that cluster when no SLURM controller answers and it runs as root
(as in CI); it skips when SLURM is unavailable, or when the controller is another cluster (a real
one: set JASCO_SLURM_TEST=1 to submit there, with `--basetemp` on a folder the nodes share).
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers_interrupts import (
    assert_same_training,
    checkpoint_of,
    finish,
    start_run,
    wait_for,
)
from helpers_training import REPO_ROOT, ensure_example

from jasco.grids._slurm import Node, parse_sinfo, plan

LOCAL_CLUSTER = "jasco-local"  # ClusterName written by scripts/local_slurm.sh
SETTINGS = {"gpus_per_node": "auto", "cpus_per_gpu": 10, "mem_per_gpu": 40, "cpus_per_task": 1, "mem_per_task": 4}
ANSI = re.compile(r"\x1b\[[0-9;]*m")


# ---------------------------------------------------------------- placement (no cluster)
def test_parse_sinfo():
    assert parse_sinfo("") is None
    assert parse_sinfo("2|24105|(null)\n") == Node(gpus=0, cpus=2, mem_gb=23)
    text = "64|257000|(null)\n80|512000|gpu:a100:8(S:0-1)\n48|380000|gpu:4,mps:400\n"
    assert parse_sinfo(text) == Node(gpus=8, cpus=80, mem_gb=500)


def test_cpu_cluster_gets_one_cpu_task_without_gres():
    placement = plan(1, SETTINGS, Node(gpus=0, cpus=2, mem_gb=23), cpu_ok=True)
    assert placement.slurm["gpus"] == 0  # Dora asks no gres for 0 GPUs
    assert placement.slurm["cpus_per_task"] == 1 and placement.slurm["mem_per_gpu"] == 4
    assert placement.overrides == {"device": "cpu", "num_threads": 1}
    # Capped to the node: 8 CPUs and 64 GB asked, 2 CPUs and 23 GB there.
    big = plan(1, {**SETTINGS, "cpus_per_task": 8, "mem_per_task": 64}, Node(0, 2, 23), cpu_ok=True)
    assert (big.slurm["cpus_per_task"], big.slurm["mem_per_gpu"], big.overrides["num_threads"]) == (2, 23, 2)
    # gpus_per_node: 0 says CPU-only without asking sinfo.
    assert plan(1, {**SETTINGS, "gpus_per_node": 0}, None, cpu_ok=True).slurm["gpus"] == 0


def test_gpu_cluster_gets_one_task_per_gpu():
    placement = plan(4, SETTINGS, Node(gpus=8, cpus=80, mem_gb=500), cpu_ok=True, partitions="team,global")
    assert placement.slurm == {"partition": "team,global", "gpus": 4, "cpus_per_gpu": 10, "cpus_per_task": None,
                               "mem_per_gpu": 40, "one_task_per_node": False}
    assert placement.overrides == {"device": "cuda"}
    small = plan(1, SETTINGS, Node(gpus=4, cpus=32, mem_gb=128), cpu_ok=True)  # a GPU's share of the node
    assert (small.slurm["cpus_per_gpu"], small.slurm["mem_per_gpu"]) == (8, 32)
    unknown = plan(32, SETTINGS, None, cpu_ok=False)  # no sinfo: the team's GPU settings as they are
    assert (unknown.slurm["gpus"], unknown.slurm["cpus_per_gpu"], unknown.slurm["mem_per_gpu"]) == (32, 10, 40)


def test_gpu_only_grid_on_cpu_cluster_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="jasco.grids._slurm"):
        placement = plan(32, SETTINGS, Node(gpus=0, cpus=2, mem_gb=23), cpu_ok=False)
    assert placement.slurm["gpus"] == 32 and "has none" in caplog.text
    with pytest.raises(ValueError, match="gpus_per_node"):
        plan(1, {**SETTINGS, "gpus_per_node": "many"}, None, cpu_ok=True)


# ---------------------------------------------------------------- dora grid debug on SLURM
def cluster_name() -> str | None:
    """ClusterName of the SLURM controller that answers here, None when none does."""
    if shutil.which("scontrol") is None:
        return None
    result = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60)
    match = re.search(r"^ClusterName\s*=\s*(\S+)", result.stdout, re.MULTILINE)
    return match.group(1) if result.returncode == 0 and match else None


@pytest.fixture(scope="module")
def slurm_cluster() -> str:
    name = cluster_name()
    if name is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["bash", str(REPO_ROOT / "scripts" / "local_slurm.sh")], check=True, timeout=1200)
        name = cluster_name()
    if name is None:
        pytest.skip("SLURM is not available: no controller answers `scontrol show config`, and starting the "
                    "local one (scripts/local_slurm.sh) needs root and apt-get")
    if name != LOCAL_CLUSTER and not os.environ.get("JASCO_SLURM_TEST"):
        pytest.skip(f"the SLURM cluster here is {name!r}, not the local one of scripts/local_slurm.sh: "
                    f"set JASCO_SLURM_TEST=1 to submit the debug grid to it")
    return name


def dora_grid(env: dict[str, str]) -> str:
    """`dora grid debug --no_monitoring` (submits what is not submitted yet): stderr + stdout, without colours."""
    result = subprocess.run([sys.executable, "-m", "dora", "grid", "debug", "--no_monitoring"], cwd=REPO_ROOT,
                            env=env, capture_output=True, text=True, timeout=600)
    output = ANSI.sub("", result.stderr + result.stdout)
    assert result.returncode == 0, output[-3000:]
    return output


def job_logs(dora_dir: Path) -> str:
    return "\n".join(f"--- {path}\n{path.read_text(errors='replace')[-3000:]}"
                     for path in sorted(dora_dir.glob("xps/*/submitit/*_log.out")))


def wait_for_jobs(job_ids: list[str], timeout: float) -> bool:
    """Poll squeue until none of `job_ids` is pending or running; False on timeout."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        result = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(job_ids)],
                                capture_output=True, text=True, timeout=60)
        if result.returncode == 0 and not result.stdout.strip():
            return True
        time.sleep(5)
    return False


def table_rows(output: str) -> dict[str, dict[str, list[str]]]:
    """The rows of a `dora grid` table by signature: `meta`, `train`, `valid`, `evaluate`, `text only` cells."""
    rows = {}
    for line in output.splitlines():
        parts = line.split("|")
        match = re.search(r"\b([0-9a-f]{8})\b", parts[0])
        if len(parts) == 5 and match:
            rows[match.group(1)] = dict(zip(("meta", "train", "valid", "evaluate", "text only"),
                                            (p.split() for p in parts)))
    return rows


@pytest.mark.slow
def test_debug_grid_runs_to_the_end_on_slurm(slurm_cluster, tmp_path):
    ensure_example()
    dora_dir = tmp_path / "dora"
    env = {key: value for key, value in os.environ.items() if key not in ("JASCO_TEAM", "JASCO_CLUSTER")}
    env.update(JASCO_DORA_DIR=str(dora_dir), DORA_PACKAGE="jasco")
    begin = time.time()

    scheduled = re.findall(r"Scheduled job (\S+) for sheep ([0-9a-f]{8})", dora_grid(env))
    assert len(scheduled) == 2, "the debug grid has two experiments, each submitted once"
    job_ids = [job_id for job_id, _ in scheduled]
    for _, sig in scheduled:  # what submitit gave sbatch: the venv's python, no gres on a CPU-only node
        script = next((dora_dir / "xps" / sig / "submitit").glob("*_submission.sh")).read_text()
        assert sys.executable in script
        if slurm_cluster == LOCAL_CLUSTER:
            assert "--gres" not in script and "--cpus-per-task=1" in script, script

    if not wait_for_jobs(job_ids, timeout=900):
        subprocess.run(["scancel", *job_ids], check=False)
        pytest.fail(f"jobs {job_ids} still queued or running after 900 s\n{job_logs(dora_dir)}")
    elapsed = time.time() - begin

    output = dora_grid(env)  # nothing left to submit: the table of the finished grid
    assert "Scheduled job" not in output, output
    assert re.search(r"epoch\s+loss\s+lr\s+samples/s\s*\|\s*loss\s+best\s*\|\s*loss", output), output
    rows = table_rows(output)
    assert set(rows) == {sig for _, sig in scheduled}, output
    for sig, row in rows.items():
        history = json.loads((dora_dir / "xps" / sig / "history.json").read_text())
        assert "COM" in row["meta"], f"{sig} did not complete:\n{output}\n{job_logs(dora_dir)}"
        epoch, train_loss, lr, samples_per_s = row["train"]
        assert int(epoch) == len(history) == 2, output  # jasco/debug: optim.epochs=2, all run
        assert float(train_loss) == pytest.approx(history[-1]["train"]["loss"], abs=1e-4)
        assert float(lr) > 0 and float(samples_per_s) > 0
        valid_loss, best = map(float, row["valid"])
        assert best == pytest.approx(min(h["valid"]["loss"] for h in history), abs=1e-4) and best <= valid_loss
        assert math.isfinite(float(row["evaluate"][0]))
        # The evaluate stage's metric means (chord IOU, onset F1, melody, FAD; CLAP is off by default).
        evaluated = history[-1]["evaluate"]
        shown = [float(cell) for cell in row["evaluate"][1:5]]
        expected = [evaluated[key] for key in ("chords_iou", "onset_f1", "chroma_similarity", "fad")]
        assert shown == pytest.approx(expected, rel=1e-3, abs=1e-4), output
    print(f"dora grid debug on SLURM ({slurm_cluster}): jobs done in {elapsed:.0f} s\n{output}")


# ---------------------------------------------------------------- preemption: signal, requeue, resume
PREEMPTED = {"optim.epochs": 3, "optim.updates_per_epoch": 12, "generate.every": 0, "evaluate.every": 0}
# `dora grid` for one experiment, through Dora's API (`dora grid` takes no overrides): the same
# Shepherd, submitit executor and pickled main as `dora grid debug`.
SUBMIT_ONE = """
from dora.grid import RunGridArgs, run_grid
from jasco.grids._explorers import JascoExplorer
from jasco.grids._slurm import place
from jasco.train import main

@JascoExplorer
def explorer(launcher):
    place(launcher, gpus=1, cpu_ok=True, time=30)
    launcher.bind_({{"solver": "jasco/debug"}})
    launcher({overrides!r})

args = RunGridArgs()
args.monitor = False
run_grid(main, explorer, "preemption_test", args=args)
"""


def job_state(job_id: str) -> str:
    result = subprocess.run(["squeue", "-h", "-o", "%T", "-j", job_id], capture_output=True, text=True, timeout=60)
    return result.stdout.strip()


def wait_for_requeue(job_id: str, timeout: float = 120) -> None:
    """Wait until SLURM shows the job requeued (`Restarts` >= 1)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        shown = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=60)
        if re.search(r"\bRestarts=[1-9]", shown.stdout):
            return
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} was not requeued (state {job_state(job_id)!r})")


def start_requeued_job_now(job_id: str, timeout: float = 120) -> None:
    """SLURM keeps a requeued job pending ~2 min (until its old credential expires): start it now (root)."""
    wait_for_requeue(job_id, timeout)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if job_state(job_id) == "PENDING":
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True, timeout=60)
            return
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} was not requeued (state {job_state(job_id)!r})")


@pytest.mark.slow
def test_signalled_job_saves_requeues_through_submitit_and_resumes(slurm_cluster, tmp_path):
    """`scancel --signal=USR1` (what `--signal=USR1@<s>` sends before a time limit or preemption) on a job
    of `dora grid`: the job saves at the next update, submitit requeues it, the requeued job resumes at
    that update and completes, with the final state of an uninterrupted run."""
    ensure_example()
    dora_dir = tmp_path / "dora"
    env = {key: value for key, value in os.environ.items() if key not in ("JASCO_TEAM", "JASCO_CLUSTER")}
    env.update(JASCO_DORA_DIR=str(dora_dir), DORA_PACKAGE="jasco")
    submit = subprocess.run([sys.executable, "-c", SUBMIT_ONE.format(overrides=PREEMPTED)], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    output = ANSI.sub("", submit.stderr + submit.stdout)
    assert submit.returncode == 0, output[-3000:]
    [(job_id, sig)] = re.findall(r"Scheduled job (\S+) for sheep ([0-9a-f]{8})", output)
    # Meanwhile here, the same experiment without interruption (device and num_threads are not in the signature).
    overrides = ["solver=jasco/debug", *(f"{k}={v}" for k, v in PREEMPTED.items()), "device=cpu", "num_threads=1"]
    reference = start_run(tmp_path / "reference", overrides, tmp_path / "reference.log")
    try:
        log = dora_dir / "xps" / sig / "solver.log.0"
        wait_for(log, r"Train \| Epoch 2 \| 2/12", timeout=600)
        subprocess.run(["scancel", "--signal=USR1", job_id], check=True, timeout=60)
        stopped = wait_for(log, r"SIGUSR1: stopped in epoch 2, after update (\d+) of 12; checkpoint saved", timeout=120)
        # submitit's handler requeues after the save. SLURM's requeue may kill the job before
        # submitit's "Requeued job" line reaches the log, so the requeue is read from SLURM itself.
        if slurm_cluster == LOCAL_CLUSTER:
            start_requeued_job_now(job_id)
        else:
            wait_for_requeue(job_id)
        if not wait_for_jobs([job_id], timeout=900):
            subprocess.run(["scancel", job_id], check=False)
            pytest.fail(f"job {job_id} still queued or running after 900 s\n{job_logs(dora_dir)}")
        assert finish(reference) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    finally:
        reference.kill()
    sacct = subprocess.run(["sacct", "-X", "-n", "-j", job_id, "-o", "State"], capture_output=True, text=True, timeout=60)
    assert sacct.stdout.split()[:1] == ["COMPLETED"], f"{sacct.stdout}\n{job_logs(dora_dir)}"
    text = log.read_text()
    assert f"Resuming epoch 2 at update {int(stopped.group(1)) + 1}" in text, text[-3000:]
    assert len(json.loads((dora_dir / "xps" / sig / "history.json").read_text())) == 3
    assert_same_training(checkpoint_of(dora_dir), checkpoint_of(tmp_path / "reference"))
