"""Where things live: Dora experiment folders, team/cluster settings, reference and cache folders,
dataset paths, and the compute device (`resolve_device`).

Environment variables:
    JASCO_DORA_DIR: experiment root (default: the team config's `dora_dir`, else `<repo>/outputs`).
    JASCO_TEAM: which `config/teams/<team>.yaml` to read (default: `default`).
    JASCO_CLUSTER: which section of the team file (default: `default`).
    JASCO_REFERENCE_DIR: what `//reference/...` paths point to.
    JASCO_CACHE_DIR: downloads: hub models (default: the Hugging Face cache) and other weights
        (default: ~/.cache/jasco).
"""
from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

if TYPE_CHECKING:
    import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "config"


@lru_cache(maxsize=None)
def team_config() -> dict[str, Any]:
    """The selected cluster section of `config/teams/$JASCO_TEAM.yaml`."""
    team = os.environ.get("JASCO_TEAM", "default")
    path = CONFIG_DIR / "teams" / f"{team}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in (CONFIG_DIR / "teams").glob("*.yaml"))
        raise FileNotFoundError(f"JASCO_TEAM={team!r}: {path} does not exist (known teams: {known})")
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    cluster = os.environ.get("JASCO_CLUSTER", "default")
    if cluster not in cfg:
        raise KeyError(f"{path} has no section for cluster {cluster!r} (JASCO_CLUSTER); sections: {sorted(cfg)}")
    return dict(cfg[cluster])


def _resolve(path: str | Path) -> Path:
    path = Path(os.path.expandvars(str(path))).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def dora_dir() -> Path:
    """Root of the experiment folders (`<dora_dir>/xps/<SIG>`)."""
    if os.environ.get("JASCO_DORA_DIR"):
        return _resolve(os.environ["JASCO_DORA_DIR"])
    return _resolve(team_config().get("dora_dir") or "outputs")


def reference_dir() -> Path:
    """What `//reference/...` config paths resolve to."""
    if os.environ.get("JASCO_REFERENCE_DIR"):
        return _resolve(os.environ["JASCO_REFERENCE_DIR"])
    return _resolve(team_config().get("reference_dir") or "reference")


def cache_dir() -> str | None:
    """Hub download cache: `$JASCO_CACHE_DIR`, else None (the Hugging Face default cache)."""
    return os.environ.get("JASCO_CACHE_DIR") or None


def download_dir(name: str) -> Path:
    """Folder for jasco's own downloads of kind `name`: `<$JASCO_CACHE_DIR or ~/.cache/jasco>/name`."""
    return Path(cache_dir() or Path.home() / ".cache" / "jasco").expanduser() / name


def slurm_partitions() -> dict[str, str | None]:
    """SLURM partitions of the team (`global`, `team`)."""
    return dict(team_config().get("partitions") or {})


TEAM_JOB_SETTINGS = ("account", "qos", "constraint", "exclude", "setup")


def slurm_job_settings() -> dict[str, Any]:
    """The team's SLURM job settings that are set: `account`, `qos`, `constraint`, `exclude` (str)
    and `setup` (shell lines run before each job), from the team config's `slurm:` section."""
    section = team_config().get("slurm") or {}
    settings = {key: section[key] for key in TEAM_JOB_SETTINGS if section.get(key)}
    if "setup" in settings and (not isinstance(settings["setup"], list)
                                or not all(isinstance(line, str) for line in settings["setup"])):
        raise ValueError(f"team config slurm.setup must be a list of shell lines, got {settings['setup']!r}")
    return settings


def resolve_reference_path(path: str | Path) -> Path:
    """`//reference/x` → `<reference_dir>/x`; other paths are returned as absolute paths."""
    text = str(path)
    if text.startswith("//reference/"):
        return reference_dir() / text[len("//reference/"):]
    return _resolve(text)


def apply_dataset_mappers(path: str) -> str:
    """Rewrite a dataset path with the team's `dataset_mappers` (regex → replacement)."""
    for pattern, replacement in (team_config().get("dataset_mappers") or {}).items():
        path = re.sub(pattern, replacement, path)
    return path


DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")


def resolve_device(name: str) -> torch.device:
    """The `device` config key as a torch.device: `auto` is cuda when a GPU is visible, else cpu.

    Raises:
        ValueError: `name` is not one of `auto`, `cpu`, `cuda`, `cuda:N`.
        RuntimeError: a cuda device is asked for but no GPU is visible.
    """
    import torch  # heavy: only when a device is needed

    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"device={name!r} is not supported: use one of {', '.join(DEVICE_CHOICES)}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name} but no GPU is visible: pass device=cpu (or device=auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise RuntimeError(f"device={name} but only {torch.cuda.device_count()} GPU(s) are visible")
    return device


def resolve_dataset_path(path: str | Path) -> Path:
    """A `datasource.*` path: the team's dataset mappers, then `//reference/...`, relative to the repo."""
    return resolve_reference_path(apply_dataset_mappers(str(path)))
