"""Fit a grid's SLURM request to the team's cluster: GPUs, CPUs, memory, partition, device.

A grid says how many GPUs an experiment wants; `place` turns that into what the cluster can give,
from the `slurm:` section of the team config (`config/teams/<team>.yaml`) and, when SLURM is
installed where the grid runs, from the nodes `sinfo` reports:

- GPU cluster: `gpus` GPUs, one task per GPU (Dora puts up to 8 on a node, then whole nodes of 8),
  `cpus_per_gpu` CPUs and `mem_per_gpu` GB per task; the experiment runs with `device=cuda`.
- CPU-only cluster (`gpus_per_node: 0`, or `auto` and no node has a `gpu` gres): a grid that can
  run on CPU (`cpu_ok=True`) gets one task of `cpus_per_task` CPUs and `mem_per_task` GB, no gres
  (asking for one is what makes `sbatch` fail with "Invalid generic resource (gres)
  specification"), and runs with `device=cpu num_threads=<cpus_per_task>`.

CPUs and memory are capped to what a node has. `device` and `num_threads` are not part of the
experiment signature, so one grid has the same signatures on every cluster.
"""
from __future__ import annotations

import logging
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

from jasco import environment

logger = logging.getLogger(__name__)

SETTINGS = ("gpus_per_node", "cpus_per_gpu", "mem_per_gpu", "cpus_per_task", "mem_per_task")
DORA_GPUS_PER_NODE = 8  # Dora's submitter: up to 8 GPUs on one node, beyond that whole nodes of 8


@dataclass(frozen=True)
class Node:
    """The largest node of the partition(s), as `sinfo` reports it."""
    gpus: int
    cpus: int
    mem_gb: int


@dataclass(frozen=True)
class Placement:
    """What `place` gives a grid: `launcher.slurm_(**slurm)` and `launcher.bind_(overrides)`."""
    slurm: dict[str, Any]
    overrides: dict[str, Any] = field(default_factory=dict)


def team_settings() -> dict[str, Any]:
    """The `slurm:` section of the team config (all of `SETTINGS`).

    Raises:
        KeyError: the section or one of its keys is missing.
    """
    section = environment.team_config().get("slurm")
    missing = [key for key in SETTINGS if key not in (section or {})]
    if missing:
        raise KeyError(f"the team config (config/teams, JASCO_TEAM / JASCO_CLUSTER) lacks slurm.{missing}: "
                       f"copy the slurm section of config/teams/default.yaml")
    return dict(section)


def partition() -> str | None:
    """The team's partitions for grids, `team` first then `global` (comma-joined); None: the default one."""
    partitions = environment.slurm_partitions()
    names = [partitions.get(key) for key in ("team", "global")]
    return ",".join(name for name in names if name) or None


def parse_sinfo(text: str) -> Node | None:
    """Lines of `sinfo -h -o "%c|%m|%G"` → the node with the most GPUs (then CPUs), None when empty.

    `%G` is the generic resources: `(null)`, `gpu:8`, `gpu:a100:8(S:0-1)`, `gpu:4,mps:400`.
    """
    nodes = []
    for line in text.splitlines():
        if not line.strip():
            continue
        cpus, mem_mb, gres = line.strip().split("|", 2)
        gpus = sum(int(count) for count in re.findall(r"(?:^|,)gpu(?::[^:,(]+)?:(\d+)", gres))
        nodes.append(Node(gpus=gpus, cpus=int(cpus.rstrip("+")), mem_gb=int(mem_mb.rstrip("+")) // 1024))
    return max(nodes, key=lambda node: (node.gpus, node.cpus), default=None)


def detect_node(partitions: str | None) -> Node | None:
    """The largest node of `partitions` (None: all) from `sinfo`; None when SLURM cannot tell."""
    if shutil.which("sinfo") is None:
        return None
    command = ["sinfo", "-h", "-o", "%c|%m|%G"] + (["-p", partitions] if partitions else [])
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        logger.warning("%s failed (%s): placing jobs from the team config alone", " ".join(command), error)
        return None
    node = parse_sinfo(result.stdout) if result.returncode == 0 else None
    if node is None:
        logger.warning("%s found no node (%s): placing jobs from the team config alone",
                       " ".join(command), result.stderr.strip() or "empty answer")
    return node


def plan(gpus: int, settings: dict[str, Any], node: Node | None, cpu_ok: bool,
         partitions: str | None = None) -> Placement:
    """The placement of an experiment wanting `gpus` GPUs (pure: `place` feeds it the cluster).

    Args:
        gpus: GPUs the experiment wants (> 0).
        settings: the team's `slurm:` section (`SETTINGS`); `gpus_per_node: auto` reads `node`.
        node: the largest node of the partition, None when unknown (then `auto` means a GPU cluster).
        cpu_ok: the experiment can run on one CPU task when the cluster has no GPU.
        partitions: the SLURM partition(s), None for the cluster's default.
    """
    if gpus < 1:
        raise ValueError(f"gpus={gpus}: a grid asks for at least 1 GPU (CPU-only clusters get a CPU task)")
    node_gpus = settings["gpus_per_node"]
    if node_gpus == "auto":
        node_gpus = node.gpus if node is not None else None
    elif not isinstance(node_gpus, int) or node_gpus < 0:
        raise ValueError(f"team config slurm.gpus_per_node={node_gpus!r}: use auto or a number of GPUs (0: CPU only)")
    slurm: dict[str, Any] = {"partition": partitions}
    if node_gpus == 0 and cpu_ok:
        cpus = settings["cpus_per_task"]
        mem = settings["mem_per_task"]
        if node is not None:
            cpus, mem = min(cpus, node.cpus), min(mem, max(1, node.mem_gb))
        slurm.update(gpus=0, cpus_per_task=int(cpus), mem_per_gpu=int(mem), one_task_per_node=False)
        return Placement(slurm, {"device": "cpu", "num_threads": int(cpus)})
    if node_gpus == 0:
        logger.warning("this experiment needs %d GPU(s) but the cluster has none (team config or sinfo): "
                       "sbatch will refuse its jobs", gpus)
    per_node = min(gpus, DORA_GPUS_PER_NODE)
    if node_gpus and per_node > node_gpus:
        logger.warning("Dora asks for %d GPUs per node but the nodes have %d: sbatch will refuse the jobs; "
                       "use gpus <= %d", per_node, node_gpus, node_gpus)
    cpus = settings["cpus_per_gpu"]
    mem = settings["mem_per_gpu"]
    if node is not None and node.gpus:  # a task's share of a node
        cpus = min(cpus, max(1, node.cpus // node.gpus))
        mem = min(mem, max(1, node.mem_gb // node.gpus))
    slurm.update(gpus=gpus, cpus_per_gpu=int(cpus), cpus_per_task=None, mem_per_gpu=int(mem),
                 one_task_per_node=False)
    return Placement(slurm, {"device": "cuda"})


def place(launcher: Any, gpus: int, cpu_ok: bool = False, **slurm: Any) -> Placement:
    """Set `launcher`'s SLURM resources and device for experiments wanting `gpus` GPUs on this team's cluster.

    Extra keyword arguments (`time`, `constraint`, ...) go to `launcher.slurm_` as they are, over
    the placement's own (a grid may name its `partition`).
    """
    partitions = partition()
    placement = plan(gpus, team_settings(), detect_node(partitions), cpu_ok, partitions)
    launcher.slurm_(**{**placement.slurm, **slurm})
    launcher.bind_(placement.overrides)
    return placement
