"""The Hugging Face hub: whether it can be used (`hub_offline`) and loading from it or from the
local cache only (`from_hub`), so that offline or unreachable hubs fail fast with what to do.

Environment variables:
    HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE: use only cached hub files (read at every hub access).
    HF_ENDPOINT: the hub `hub_offline` probes (default: https://huggingface.co).
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from jasco.environment import cache_dir

if TYPE_CHECKING:
    pass

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
