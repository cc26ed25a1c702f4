"""Reading torch files safely: refuse a torch whose `weights_only=True` loader can be bypassed
(`check_safe_torch_load`) and tell a file the safe loader refuses from a truncated one
(`refused_by_safe_loader`), without ever executing it.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass

SAFE_TORCH_VERSION = (2, 6)


class UnsafeTorchError(RuntimeError):
    """The installed torch's safe loader (`weights_only=True`) can be bypassed: files are not loaded."""


def check_safe_torch_load() -> None:
    """Refuse to load torch files with a torch whose `weights_only=True` loader can run code.

    torch <= 2.5.1 can be made to execute code by a crafted file even with `weights_only=True`
    (CVE-2025-32434); torch 2.6.0 fixed it. Pre-releases of 2.6.0 (`2.6.0a0+...`) count as older.

    Raises:
        UnsafeTorchError: the installed torch is older than 2.6.
    """
    import torch
    from packaging.version import InvalidVersion, Version

    installed = str(torch.__version__)
    try:
        safe = Version(installed) >= Version(".".join(map(str, SAFE_TORCH_VERSION)))
    except InvalidVersion:  # an unusual build string: compare its leading major.minor
        match = re.match(r"(\d+)\.(\d+)", installed)
        safe = bool(match) and (int(match[1]), int(match[2])) >= SAFE_TORCH_VERSION
    if not safe:
        wanted = ".".join(map(str, SAFE_TORCH_VERSION))
        raise UnsafeTorchError(
            f"torch {installed} is installed: its safe loader (torch.load weights_only=True) can be made to "
            f"run code by a crafted file (CVE-2025-32434, fixed in torch {wanted}), so jasco does not load "
            f"checkpoints with it. Install torch>={wanted}, e.g. `make install TORCH_SPEC=\"torch=={wanted}.0\"` "
            f"or `pip install -U 'torch>={wanted}'`.")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_PICKLE_SCAN_LIMIT = 64 * 2**20
_NO_PUSH = {"PROTO", "FRAME", "STOP", "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "POP", "POP_MARK"}


def _loader_detail(error: BaseException) -> str:
    """The line of a torch.load error that says what it refused."""
    lines = [_ANSI.sub("", line).strip() for line in str(error).splitlines() if line.strip()]
    for keys in (("GLOBAL", "Unsupported"), ("WeightsUnpickler",)):
        for line in lines:
            if any(key in line for key in keys):
                return line[:300]
    return lines[0][:300] if lines else type(error).__name__


def _scan_pickles(f: IO[bytes], max_pickles: int = 4) -> list[str] | None:
    """Names (`module.name`) that the pickles at the start of `f` refer to; None if the first is not whole.

    Read with `pickletools.genops`, which parses opcodes and executes nothing. Up to `max_pickles`
    pickles in a row are read (torch's legacy format writes several); what follows the first
    complete one may be anything (tensor bytes).
    """
    import pickletools

    names: list[str] = []
    for index in range(max_pickles):
        stack: list[Any] = []  # what the last opcodes pushed: strings, for STACK_GLOBAL's module and name
        memo: dict[Any, Any] = {}
        found: list[str] = []
        try:
            for opcode, arg, _ in pickletools.genops(f):
                if opcode.name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                    stack.append(None)
                elif opcode.name == "STACK_GLOBAL":
                    module, name = stack[-2:] if len(stack) >= 2 else (None, None)
                    found.append(f"{module}.{name}" if isinstance(module, str) and isinstance(name, str)
                                 else "an unnamed global")
                    stack[-2:] = [None]
                elif opcode.name == "MEMOIZE":
                    memo[len(memo)] = stack[-1] if stack else None
                elif opcode.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[arg] = stack[-1] if stack else None
                elif opcode.name in ("GET", "BINGET", "LONG_BINGET"):
                    stack.append(memo.get(arg))
                elif opcode.name not in _NO_PUSH:
                    stack.append(arg if isinstance(arg, str) else None)
                del stack[:-2]
        except (ValueError, EOFError, OSError, UnicodeDecodeError):
            if index == 0:
                return None
            break
        names += found
    return list(dict.fromkeys(names))


def _pickle_globals(path: Path) -> list[str] | None:
    """Names the pickle(s) of `path` refer to: a torch zip archive's `data.pkl`, or the file itself.

    None when that is not a complete pickle (garbage or truncated) or is too large to scan.
    """
    import zipfile

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            members = [info for info in archive.infolist() if info.filename.endswith("data.pkl")]
            if not members or members[0].file_size > _PICKLE_SCAN_LIMIT:
                return None
            with archive.open(members[0]) as f:
                return _scan_pickles(f, max_pickles=1)
    if path.stat().st_size > _PICKLE_SCAN_LIMIT:
        return None
    with open(path, "rb") as f:
        return _scan_pickles(f)


def refused_by_safe_loader(path: str | os.PathLike, error: BaseException) -> str | None:
    """What `torch.load(weights_only=True)` refused in `path`, when `error` is such a refusal.

    Tells a file that holds objects the safe loader will not build (a class, a function such as
    `os.system`, a plain pickle) from a truncated or corrupt one: returns e.g. `the global
    posix.system` for the former and None for the latter. The globals torch names are completed
    with those the file's pickle refers to (besides torch's and collections' own). Nothing in the
    file is executed: it is only parsed (`pickletools`).
    """
    import pickle
    import zipfile

    if not isinstance(error, pickle.UnpicklingError):
        return None
    path = Path(path)
    named = re.findall(r"GLOBAL ([\w.]+)", _ANSI.sub("", str(error)))
    try:
        scanned = _pickle_globals(path)
    except (OSError, zipfile.BadZipFile, RuntimeError):
        scanned = None
    if not named and scanned is None and not zipfile.is_zipfile(path):
        return None  # not a whole pickle: garbage or truncated
    others = [name for name in scanned or [] if not name.startswith(("torch.", "collections."))]
    names = list(dict.fromkeys(named + others))
    if names:
        shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        return ("the global " if len(names) == 1 else "the globals ") + shown
    return f"content it does not accept ({_loader_detail(error)})"
