"""Every way of starting 2 processes trains on CPU (gloo): `dora run -d`, torchrun on one machine,
torchrun as 2 nodes on localhost, and a SLURM job's environment (rank and world from SLURM).

Only rank 0 writes in the experiment folder: one log, the checkpoints, history, samples, TensorBoard.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers_training import REPO_ROOT, ensure_example, free_port

pytestmark = pytest.mark.slow

SHORT = ["solver=jasco/debug", "optim.epochs=1", "optim.updates_per_epoch=3", "generate.every=0", "evaluate.every=0"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
LAUNCH_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SLURM_JOB_ID")


def environment(dora_dir, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    return {**env, "JASCO_DORA_DIR": str(dora_dir), "DORA_PACKAGE": "jasco", "OMP_NUM_THREADS": "1", **extra}


def start(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finish(*processes: subprocess.Popen) -> list[str]:
    """Wait for every process; their outputs (a failure shows them all)."""
    outputs = []
    for process in processes:
        try:
            outputs.append(process.communicate(timeout=300)[0])
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            raise
    codes = [process.returncode for process in processes]
    assert codes == [0] * len(processes), "\n----\n".join(output[-4000:] for output in outputs)
    return outputs


def only_folder(dora_dir):
    folders = list((dora_dir / "xps").iterdir())
    assert len(folders) == 1
    return folders[0]


def check_one_writer(folder, epochs: int) -> None:
    """Rank 0's files, once: no per-rank log, no temp file, a history of every epoch."""
    names = {path.name for path in folder.iterdir()}
    assert {"checkpoint.th", "history.json", "solver.log.0"} <= names
    assert not [name for name in names if name.startswith("solver.log.") and name != "solver.log.0"]
    assert not [name for name in names if ".tmp" in name]
    history = json.loads((folder / "history.json").read_text())
    assert len(history) == epochs and all({"train", "valid"} <= set(epoch) for epoch in history)
    state = torch.load(folder / "checkpoint.th", weights_only=True)
    assert len(state["history"]) == epochs
    assert "rank 0 of 2" in (folder / "solver.log.0").read_text()


def test_dora_run_ddp_workers(tmp_path):
    """`dora run -d --ddp_workers 2 solver=jasco/debug`: the full debug run, samples written once."""
    ensure_example()
    (output,) = finish(start([sys.executable, "-m", "dora", "run", "-d", "--ddp_workers", "2", "solver=jasco/debug"],
                             environment(tmp_path)))
    folder = only_folder(tmp_path)
    check_one_writer(folder, epochs=2)
    assert "All workers completed successfully" in output
    wavs = sorted(path.name for path in (folder / "samples" / "2").glob("*.wav"))
    assert wavs == ["000_clip_08.wav", "001_clip_09.wav"]  # both processes' samples, by rank 0
    assert list((folder / "tensorboard").rglob("events.out.tfevents*"))
    assert "INFO" not in (folder / "worker_1.log").read_text()  # rank 1 logs warnings only


def test_torchrun_one_machine(tmp_path):
    """`torchrun --standalone --nproc_per_node 2 -m jasco.train ...`."""
    ensure_example()
    finish(start([*TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "jasco.train", *SHORT],
                 environment(tmp_path)))
    check_one_writer(only_folder(tmp_path), epochs=1)


def test_torchrun_two_nodes_on_localhost(tmp_path):
    """Two `torchrun --nnodes 2 --node_rank i` processes meeting at 127.0.0.1, one process each."""
    ensure_example()
    port = str(free_port())
    nodes = [start([*TORCHRUN, "--nnodes", "2", "--node_rank", str(rank), "--master_addr", "127.0.0.1",
                    "--master_port", port, "--nproc_per_node", "1", "-m", "jasco.train", *SHORT],
                   environment(tmp_path)) for rank in range(2)]
    finish(*nodes)
    check_one_writer(only_folder(tmp_path), epochs=1)


def test_slurm_environment(tmp_path):
    """What a 2-task SLURM job started by `dora grid` gives each task: SLURM variables, no torch ones.

    Dora reads rank and world size through submitit, the address from the node list and a port
    from the signature and job id.
    """
    ensure_example()
    slurm = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "2", "SLURM_JOB_NUM_NODES": "1",
             "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "localhost"}
    tasks = [start([sys.executable, "-m", "jasco.train", *SHORT],
                   environment(tmp_path, **slurm, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank)))
             for rank in range(2)]
    outputs = finish(*tasks)
    assert "from submitit" in outputs[0]
    check_one_writer(only_folder(tmp_path), epochs=1)
