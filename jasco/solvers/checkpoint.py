"""Training checkpoints on disk: atomic save, safe load, epoch copies and source resolution.

Layout of an experiment folder (docs/MODEL.md, "Training checkpoint"): `checkpoint.th` (the
latest state, overwritten at every save) and optional epoch copies `checkpoint_<epoch>.th`
(kept every `checkpoint.save_every` epochs, pruned to the `checkpoint.keep_last` most recent).
A save writes a temporary `.checkpoint.th.<random>.tmp.th` first; one left by a killed job is
removed by `remove_stale_temp_files` when the next run starts.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from jasco import safe_load
from jasco import files

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_NAME",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "epoch_checkpoint_path",
    "list_epoch_checkpoints",
    "flush_stale_checkpoints",
    "remove_stale_temp_files",
    "state_bytes",
    "resolve_checkpoint",
]

CHECKPOINT_NAME = "checkpoint.th"
SIG_PREFIX = "//sig/"
_EPOCH_PATTERN = re.compile(r"^checkpoint_(\d+)\.th$")
_CHECKPOINT_NAMES = r"checkpoint(?:_\d+)?\.th"
# Temp files of the writer before `files.atomic_path`: `checkpoint.th.tmp.<pid>`.
_LEGACY_TEMP_PATTERN = re.compile(rf"{_CHECKPOINT_NAMES}\.tmp\.\d+")
DISK_FULL_HINT = "free space or set JASCO_DORA_DIR to another disk"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, or does not hold a state dict."""


def _fsync_folder(folder: Path) -> None:
    """Persist the rename itself (best effort: not every OS/filesystem lets a folder be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def state_bytes(state: Any) -> int:
    """About how many bytes `torch.save(state)` writes: the sizes of the tensors it holds."""
    if isinstance(state, torch.Tensor):
        return state.nelement() * state.element_size()
    if isinstance(state, dict):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(v) for v in state)
    return 0


def save_checkpoint(state: dict[str, Any], path: str | Path, disk_full_hint: str = DISK_FULL_HINT) -> None:
    """Write `state` to `path` atomically: readers see the old file or the complete new one.

    The state is written to a unique temp file in the same folder (`files.atomic_path`),
    fsynced, then renamed over `path` (`os.replace` is atomic within a filesystem); the file gets
    the usual mode under the process umask. On any failure, including a KeyboardInterrupt, the
    temp file is removed and the previous checkpoint is left untouched.

    Raises:
        files.DiskFullError: the disk filled up (`No space left on device while writing
            <path> (needs ~N MB, M MB free): <disk_full_hint>`).
    """
    path = Path(path)
    with files.atomic_write(path, "wb", fsync=True, needed_bytes=state_bytes(state),
                                  disk_full_hint=disk_full_hint) as f:
        torch.save(state, f)
    _fsync_folder(path.parent)


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temp files of checkpoint saves that never finished (a killed job); return them.

    Each can be as large as a checkpoint. Called when a run starts, on rank 0, before it writes any
    checkpoint: only one run writes an experiment's checkpoints, so every temp file found then
    belongs to a writer that is gone. Covers `.checkpoint[_<epoch>].th.<random>.tmp.th` and the
    `checkpoint[_<epoch>].th.tmp.<pid>` of earlier versions.
    """
    folder = Path(folder)
    stale = files.atomic_temp_files(folder, _CHECKPOINT_NAMES)
    if folder.is_dir():
        stale += sorted(p for p in folder.iterdir() if _LEGACY_TEMP_PATTERN.fullmatch(p.name) and p.is_file())
    for path in stale:
        logger.info("Removing %s, left by a checkpoint save that did not finish", path)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return stale


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200] if lines else ''}"


def _unreadable_cause(path: Path, error: BaseException) -> str:
    """Most likely reason why `torch.load` failed on `path`, with what to do about it."""
    copies = "a checkpoint_<epoch>.th copy in the same folder may be intact"
    if path.stat().st_size == 0:
        return f"the file is empty: was the job killed while writing? {copies}"
    refused = safe_load.refused_by_safe_loader(path, error)
    if refused is not None:
        return (f"it contains objects that the safe loader (torch.load weights_only=True) refuses: {refused}. "
                "jasco will not execute it (unpickling such objects can run arbitrary code). If you wrote "
                "this file yourself, re-save it with plain values only (tensors, numbers, strings and "
                "containers; the config as a YAML string); if it came from elsewhere, do not load it")
    if not zipfile.is_zipfile(path):
        return (f"truncated or not a torch checkpoint: was the job killed while writing? {copies}. "
                f"Loader said: {_first_line(error)}")
    return f"the file is corrupt ({_first_line(error)}); {copies}"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict with `torch.load(weights_only=True)`, raising `CheckpointError` on failure.

    Raises:
        safe_load.UnsafeTorchError: the installed torch is older than 2.6, whose safe loader can
            be bypassed (nothing is read).
        CheckpointError: missing, empty, truncated or corrupt, refused objects, or not a dict.
    """
    safe_load.check_safe_torch_load()
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise CheckpointError(f"Checkpoint {path} {what}: pass the path of a checkpoint file "
                              f"(e.g. <xp folder>/{CHECKPOINT_NAME})")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise CheckpointError(f"Cannot read checkpoint {path}: {_unreadable_cause(path, error)}") from error
    if not isinstance(state, dict):
        raise CheckpointError(f"Checkpoint {path} holds a {type(state).__name__}, not a dict: it is not a "
                              "training checkpoint or exported model (those are dicts of named states)")
    return state


def epoch_checkpoint_path(folder: str | Path, epoch: int) -> Path:
    """Path of the copy kept for `epoch`: `<folder>/checkpoint_<epoch>.th`."""
    return Path(folder) / f"checkpoint_{epoch}.th"


def list_epoch_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """Epoch copies in `folder` as `(epoch, path)`, sorted by epoch (empty if the folder is missing)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _EPOCH_PATTERN.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def flush_stale_checkpoints(folder: str | Path, keep_last: int | None) -> list[Path]:
    """Delete all but the `keep_last` most recent epoch copies; return the deleted paths.

    `keep_last=None` or `0` keeps every copy (0 has the same meaning in audiocraft configs; to keep
    no copies at all, disable them with `checkpoint.save_every: null` instead). `checkpoint.th`
    itself is never touched.
    """
    if keep_last is not None and keep_last < 0:
        raise ValueError(f"checkpoint.keep_last must be >= 0 or null, got {keep_last}")
    if not keep_last:
        return []
    stale = [path for _, path in list_epoch_checkpoints(folder)[:-keep_last]]
    for path in stale:
        logger.debug("Removing stale checkpoint %s", path)
        path.unlink()
    return stale


def resolve_checkpoint(source: str | Path, dora_dir: str | Path) -> Path:
    """Checkpoint file named by `source`: `//sig/SIG` (a Dora experiment), a folder, or a file.

    `//sig/SIG` → `<dora_dir>/xps/SIG/checkpoint.th`; a folder → `<folder>/checkpoint.th`;
    a file → itself. Raises FileNotFoundError naming what was looked for.
    """
    text = str(source)
    if text.startswith(SIG_PREFIX):
        sig = text[len(SIG_PREFIX):].strip("/")
        if not sig:
            raise FileNotFoundError(f"Checkpoint source {text!r} names no experiment: use //sig/<SIG>")
        path = Path(dora_dir) / "xps" / sig / CHECKPOINT_NAME
        if not path.is_file():
            raise FileNotFoundError(f"No checkpoint for experiment {sig}: {path} does not exist "
                                    f"(check the signature and the dora dir {dora_dir}; set JASCO_DORA_DIR to your Dora folder)")
        return path
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / CHECKPOINT_NAME).is_file():
            raise FileNotFoundError(f"Folder {path} has no {CHECKPOINT_NAME}: pass the checkpoint "
                                    "file itself or an experiment folder that contains one")
        return path / CHECKPOINT_NAME
    if path.is_file():
        return path
    raise FileNotFoundError(f"Checkpoint source {text!r} is neither a file, a folder nor //sig/<SIG>: "
                            f"{path} does not exist")
