"""Training checkpoints on disk: atomic save, safe load, epoch copies and source resolution.

Layout of an experiment folder (docs/MODEL.md, "Training checkpoint"): `checkpoint.th` (the
latest state, overwritten at every save) and optional epoch copies `checkpoint_<epoch>.th`
(kept every `checkpoint.save_every` epochs, pruned to the `checkpoint.keep_last` most recent).
"""
from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_NAME",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "epoch_checkpoint_path",
    "list_epoch_checkpoints",
    "flush_stale_checkpoints",
    "resolve_checkpoint",
]

CHECKPOINT_NAME = "checkpoint.th"
SIG_PREFIX = "//sig/"
_EPOCH_PATTERN = re.compile(r"^checkpoint_(\d+)\.th$")


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


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write `state` to `path` atomically: readers see the old file or the complete new one.

    The state is written to `<path>.tmp.<pid>` in the same folder, flushed and fsynced, then renamed
    over `path` (`os.replace` is atomic within a filesystem). On any failure, including a
    KeyboardInterrupt, the temp file is removed and the previous checkpoint is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp_path, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise
    _fsync_folder(path.parent)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200] if lines else ''}"


def _unreadable_cause(path: Path, error: BaseException) -> str:
    """Most likely reason why `torch.load` failed on `path`, with what to do about it."""
    copies = "a checkpoint_<epoch>.th copy in the same folder may be intact"
    if path.stat().st_size == 0:
        return f"the file is empty: was the job killed while writing? {copies}"
    if isinstance(error, pickle.UnpicklingError) and zipfile.is_zipfile(path):
        lines = [line.strip() for line in str(error).splitlines()]
        detail = next((line for line in lines if "Unsupported global" in line), lines[0] if lines else "")
        return ("it holds objects that weights_only loading refuses (only tensors, numbers, strings "
                "and containers are allowed); re-save it with plain values, e.g. the config as a YAML "
                f"string. Loader said: {detail[:300]}")
    if not zipfile.is_zipfile(path):
        return (f"truncated or not a torch checkpoint: was the job killed while writing? {copies}. "
                f"Loader said: {_first_line(error)}")
    return f"the file is corrupt ({_first_line(error)}); {copies}"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict with `torch.load(weights_only=True)`, raising `CheckpointError` on failure."""
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
