"""Where things live: Dora experiment folders, team/cluster settings, reference and cache folders,
the compute device (`resolve_device`), how files get there (`atomic_write`, `atomic_path`, a
clear `DiskFullError` when the disk fills), whether the Hugging Face hub can be used (`hub_offline`,
`from_hub`: offline or unreachable fails fast) and whether torch files can be read safely
(`check_safe_torch_load`, `refused_by_safe_loader`).

Environment variables:
    JASCO_DORA_DIR: experiment root (default: the team config's `dora_dir`, else `<repo>/outputs`).
    JASCO_TEAM: which `config/teams/<team>.yaml` to read (default: `default`).
    JASCO_CLUSTER: which section of the team file (default: `default`).
    JASCO_REFERENCE_DIR: what `//reference/...` paths point to.
    JASCO_CACHE_DIR: downloads: hub models (default: the Hugging Face cache) and other weights
        (default: ~/.cache/jasco).
    HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE: use only cached hub files (read at every hub access).
    HF_ENDPOINT: the hub `hub_offline` probes (default: https://huggingface.co).
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

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


# ---------------------------------------------------------------- atomic writes
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


# ---------------------------------------------------------------- Hugging Face hub
HUB_PROBE_TIMEOUT_S = 3.0
_HUB_PROBE_TTL_S = 60.0
_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_hub_probes: dict[str, tuple[float, str | None]] = {}  # endpoint -> (when probed, why unreachable or None)
T = TypeVar("T")


class HubUnavailableError(RuntimeError):
    """A hub model is not in the local cache, and the hub is offline or unreachable."""


def _hub_unreachable(endpoint: str) -> str | None:
    """Why `endpoint` gives no answer to one HEAD request within `HUB_PROBE_TIMEOUT_S`; None if it answers.

    Only network failures count (no route, DNS, refused, timeout): any HTTP status, or a TLS
    problem, is an answer, left for huggingface_hub itself to report. Proxies come from the usual
    `HTTPS_PROXY` / `NO_PROXY` variables.
    """
    import socket
    import ssl
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=HUB_PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return None
    except urllib.error.URLError as error:
        if isinstance(error.reason, ssl.SSLError):
            return None
        return f"{endpoint} cannot be reached ({error.reason})"
    except (socket.timeout, TimeoutError, ConnectionError) as error:
        return f"{endpoint} cannot be reached ({type(error).__name__}: {error})"
    except (OSError, ValueError):  # anything else: let huggingface_hub try and say what is wrong
        return None
    return None


def hub_offline() -> str | None:
    """Why the Hugging Face hub cannot be used now (one line), or None when it can.

    Offline when `HF_HUB_OFFLINE` or `TRANSFORMERS_OFFLINE` is set (read at every call, unlike
    huggingface_hub, which reads it once at import), else when `$HF_ENDPOINT` (default
    https://huggingface.co) gives no answer to one HEAD request within `HUB_PROBE_TIMEOUT_S`
    seconds; the probe's answer is kept for a minute.
    """
    for name in _OFFLINE_VARIABLES:
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{name} is set"
    endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    now = time.monotonic()
    probe = _hub_probes.get(endpoint)
    if probe is None or now - probe[0] > _HUB_PROBE_TTL_S:
        probe = (now, _hub_unreachable(endpoint))
        _hub_probes[endpoint] = probe
    return probe[1]


def from_hub(load: Callable[[bool], T], repo_id: str, what: str, local_fix: str,
             cache: str | os.PathLike | None = None) -> T:
    """Run a hub loader, failing at once with what to do when the hub cannot be used.

    Online, or for a local path, `load(False)` runs as usual (its errors are the caller's). When
    `hub_offline()` says the hub cannot be used, `load(True)` runs instead
    (`local_files_only=True`): a cached copy loads, and a missing one raises `HubUnavailableError`
    at once, saying how to provide it, rather than after huggingface_hub's 30-60 s of retries.

    Args:
        load: calls the hub function with `local_files_only=` its argument, e.g.
            `lambda local: hf_hub_download(repo_id=..., filename=..., local_files_only=local)`.
        repo_id: the hub repo (for the message).
        what: what it is (for the message), e.g. `the codec`.
        local_fix: what to do with a downloaded folder DIR, e.g. `pass DIR instead of the repo id`.
        cache: the hub cache in use (for the message; None: `$JASCO_CACHE_DIR` or the HF default).

    Raises:
        HubUnavailableError: the hub cannot be used and the files are not in the cache.
    """
    if Path(repo_id).expanduser().exists() or repo_id.startswith((".", "/", "~")) or repo_id.count("/") > 1:
        return load(False)  # a local path, existing or not: no hub involved
    reason = hub_offline()
    if reason is None:
        return load(False)
    try:
        return load(True)
    except OSError as error:  # huggingface_hub / transformers: the files are not in the cache
        where = cache or cache_dir() or "the default Hugging Face cache"
        said = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise HubUnavailableError(
            f"{what} {repo_id!r} is not in the local cache ({where}) and {reason}, so it cannot be "
            f"downloaded. On a machine with internet, run `hf download {repo_id} --local-dir DIR` "
            f"(`huggingface-cli download` with older huggingface_hub), copy DIR here and {local_fix}; "
            f"or download it into a cache there (`--cache-dir CACHE`), copy CACHE here and set "
            f"JASCO_CACHE_DIR=CACHE. (huggingface_hub said: {said})") from error


# ---------------------------------------------------------------- reading torch files safely
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
