"""Where things live: Dora experiment folders, team/cluster settings, reference and cache folders,
dataset paths, and the compute device (`resolve_device`).

Environment variables:
    JASCO_DORA_DIR: experiment root (default: the team config's `dora_dir`, else `outputs`, relative
        to `base_dir()`: the repository in a source checkout, the launch directory when installed).
    JASCO_TEAM: which `config/teams/<team>.yaml` to read (default: `default`).
    JASCO_CLUSTER: which section of the team file (default: `default`).
    JASCO_REFERENCE_DIR: what `//reference/...` paths point to.
    JASCO_CACHE_DIR: downloads: hub models (default: the Hugging Face cache) and other weights
        (default: ~/.cache/jasco).
"""
from __future__ import annotations

import logging
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

if TYPE_CHECKING:
    import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
# A built wheel carries the configs inside the package (`jasco/config`, copied from the repository's
# `config/` at build time by setup.py); a source checkout (editable install) reads `<repo>/config`.
PACKAGED_CONFIG_DIR = Path(__file__).resolve().parent / "config"
INSTALLED = PACKAGED_CONFIG_DIR.is_dir()
CONFIG_DIR = PACKAGED_CONFIG_DIR if INSTALLED else REPO_ROOT / "config"
# Where the debug recipe's example dataset lives (config/dset/audio/example.yaml), relative to base_dir().
EXAMPLE_DATASET = "egs/example"


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


def base_dir() -> Path:
    """What relative paths (dora_dir, reference_dir, datasets) are relative to.

    A source checkout: the repository. An installed jasco: the directory the command was started
    from (inside a run, whose working directory is its XP folder, Hydra's original one).
    """
    if not INSTALLED:
        return REPO_ROOT
    from hydra.core.hydra_config import (
        HydraConfig,  # light: hydra is imported by every entry point
    )

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.cwd)
    return Path.cwd()


def _resolve(path: str | Path) -> Path:
    path = Path(os.path.expandvars(str(path))).expanduser()
    return path if path.is_absolute() else base_dir() / path


def example_dataset_dir() -> Path:
    """The folder of the synthesised example dataset: `egs/example` under `base_dir()`."""
    return _resolve(EXAMPLE_DATASET)


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


AUTOCAST_CHOICES = ("auto", "true", "false")
AUTOCAST_DTYPES = ("auto", "bfloat16", "float16", "float32")


def _cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def resolve_autocast(autocast: bool | str, dtype: str, device: torch.device) -> torch.dtype | None:
    """The dtype of the flow network's mixed precision on `device`, or None for float32 (no autocast).

    `autocast`: `auto` turns it on where the device runs the dtype natively (CPU: bfloat16 with the
    `avx512_bf16` or `amx_bf16` flags; CUDA: bfloat16 where `torch.cuda.is_bf16_supported` says so
    without emulation, float16 always), `true` always, `false` never. `dtype` (`autocast_dtype`):
    `auto` is bfloat16 where native, else float16 on CUDA (bfloat16 on CPU); `float32` is the same
    as `autocast=false`; `float16` on CPU becomes bfloat16 (CPU float16 autocast is slow), with a warning.

    Raises:
        ValueError: a value outside `AUTOCAST_CHOICES` / `AUTOCAST_DTYPES`.
    """
    import torch  # heavy: only when a device is needed

    mode = str(autocast).strip().lower()
    if mode not in AUTOCAST_CHOICES:
        raise ValueError(f"autocast={autocast!r}: choose one of {', '.join(AUTOCAST_CHOICES)}")
    if str(dtype) not in AUTOCAST_DTYPES:
        raise ValueError(f"autocast_dtype={dtype!r}: choose one of {', '.join(AUTOCAST_DTYPES)}")
    if mode == "false" or dtype == "float32":
        return None
    if device.type == "cuda":
        native = {torch.float16} | ({torch.bfloat16} if torch.cuda.is_bf16_supported(including_emulation=False)
                                    else set())
    else:
        native = {torch.bfloat16} if _cpu_flags() & {"avx512_bf16", "amx_bf16"} else set()
    if dtype == "auto":
        wanted = torch.bfloat16 if torch.bfloat16 in native or device.type != "cuda" else torch.float16
    else:
        wanted = getattr(torch, dtype)
    if wanted == torch.float16 and device.type != "cuda":
        if mode == "true":
            logging.getLogger(__name__).warning("autocast_dtype=float16 is slow and unsupported on CPU; "
                                                "using bfloat16")
        wanted = torch.bfloat16
    if mode == "auto" and wanted not in native:
        return None
    return wanted


def resolve_num_threads(value: int | str | None) -> int | None:
    """The `num_threads` config key: `auto` is `$OMP_NUM_THREADS` when set (torchrun sets it per
    process), else the CPUs this process may run on (its affinity mask, e.g. a SLURM allocation);
    a positive int is itself; null or 0 leaves torch's default (None).

    Raises:
        ValueError: anything else.
    """
    if value is None or value == 0:
        return None
    if str(value).strip().lower() == "auto":
        if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
            return int(os.environ["OMP_NUM_THREADS"])
        affinity = getattr(os, "sched_getaffinity", None)
        return len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"num_threads={value!r}: give auto, a positive number of threads, or null")
    return value


def resolve_dataset_path(path: str | Path) -> Path:
    """A `datasource.*` path: the team's dataset mappers, then `//reference/...`, relative to `base_dir()`."""
    return resolve_reference_path(apply_dataset_mappers(str(path)))
