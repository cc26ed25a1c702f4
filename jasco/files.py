"""Writing files safely: atomic replacement through a unique temporary file in the same folder
(`atomic_path`, `atomic_write`, `write_text_atomic`), the process umask's file mode, and a clear
`DiskFullError` when the disk fills.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    pass

def _file_mode() -> int:
    """Permissions of a newly created file (0o666 minus the umask); temp files start at 0o600.

    Read at every call (not cached): a process that changes its umask gets the new one.
    """
    try:  # Linux exposes the umask without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o644


DISK_FULL_HINT = "free space on that disk or write to another one"
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """No space left (or disk quota exceeded) while writing a file; `errno` is ENOSPC.

    Its message names the file, about how much it needed, what is free and what to do.
    """

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def is_disk_full(error: BaseException) -> bool:
    """True when `error`, or an exception it was raised from or while handling, is ENOSPC / EDQUOT.

    torch.save reports a full disk as `RuntimeError: [enforce fail at inline_container.cc] ...
    unexpected pos ...`, with the `OSError(ENOSPC)` of the failed write only in its chain.
    """
    seen: set[int] = set()
    stack: list[BaseException | None] = [error]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_FULL_ERRNOS:
            return True
        stack += [current.__cause__, current.__context__]
    return False


def disk_full_error(path: str | os.PathLike, needed_bytes: int | None = None,
                    hint: str = DISK_FULL_HINT) -> DiskFullError:
    """`DiskFullError("No space left on device while writing <path> (needs ~N MB, M MB free): <hint>")`."""
    path = Path(path)
    sizes = []
    if needed_bytes:
        sizes.append(f"needs ~{max(1, round(needed_bytes / 2**20))} MB")
    with contextlib.suppress(OSError):
        sizes.append(f"{shutil.disk_usage(path.parent).free / 2**20:.0f} MB free")
    detail = f" ({', '.join(sizes)})" if sizes else ""
    return DiskFullError(f"No space left on device while writing {path}{detail}: {hint}")


def atomic_temp_files(folder: str | os.PathLike, name: str = r".+") -> list[Path]:
    """Temp files that `atomic_path` left in `folder` (a writer killed before its rename).

    Args:
        folder: where to look (a missing folder has none).
        name: a regular expression the target file's name must match in full, e.g. `checkpoint(_\\d+)?\\.th`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    # `.<name>.<random>.tmp<suffix>`: the names `atomic_path` gives its temp files (mkstemp's
    # random part has no dot).
    pattern = re.compile(rf"\.(?:{name})\.[^.]+\.tmp(?:\.[^.]*)?")
    return sorted(p for p in folder.iterdir() if pattern.fullmatch(p.name) and p.is_file())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = False, *, needed_bytes: int | None = None,
                disk_full_hint: str = DISK_FULL_HINT) -> Iterator[Path]:
    """Yield a unique temporary path next to `path`; when the block succeeds, rename it over `path`.

    Readers see the old file or the complete new one, never a partial one, and two processes
    writing the same file cannot mix their bytes (each has its own temp name; the last rename
    wins). The temp name keeps `path`'s suffix, so writers that infer the format from it (audio,
    `.npy`) still work. On any error, KeyboardInterrupt included, the temp file is removed and
    `path` is left as it was; when the disk is full (ENOSPC anywhere in the error's chain) the error
    is a `DiskFullError` saying so. Missing parent folders are created. The file gets the mode a
    plain `open()` would give it under the process umask (e.g. 0o644 with umask 022).

    Args:
        path: the file to (re)place.
        fsync: flush the data to disk before the rename (checkpoints).
        needed_bytes: about how large the file will be, for the disk-full message.
        disk_full_hint: what to do when the disk is full, for the disk-full message.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    except OSError as error:
        if is_disk_full(error):
            raise disk_full_error(path, needed_bytes, disk_full_hint) from error
        raise
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if is_disk_full(error):
            raise disk_full_error(path, needed_bytes, disk_full_hint) from error
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8",
                 fsync: bool = False, *, needed_bytes: int | None = None,
                 disk_full_hint: str = DISK_FULL_HINT) -> Iterator[IO]:
    """Open a unique temporary file next to `path` for writing; rename it over `path` on success.

    `mode` is `"w"` (text, `encoding`) or `"wb"` (binary); see `atomic_path` for the guarantees
    and the other arguments. Example: `with atomic_write(out / "tracks.jsonl") as f: f.write(text)`.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}.")
    with atomic_path(path, fsync=fsync, needed_bytes=needed_bytes, disk_full_hint=disk_full_hint) as tmp:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
            yield f


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; returns `path`."""
    with atomic_write(path) as f:
        f.write(text)
    return Path(path)
