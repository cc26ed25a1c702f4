"""jasco.hub and jasco.files: hub offline detection, disk-full errors and file modes of atomic writes."""
from __future__ import annotations

import errno
import os
import socket
import time

import pytest

from jasco import files, hub


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def no_offline_variables(monkeypatch):
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hub, "_hub_probes", {})


@pytest.mark.parametrize("name", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_offline_variables_are_read_at_every_call(no_offline_variables, monkeypatch, name):
    monkeypatch.setattr(hub, "_hub_unreachable", lambda endpoint: None)  # the hub answers
    assert hub.hub_offline() is None
    monkeypatch.setenv(name, "1")
    assert hub.hub_offline() == f"{name} is set"


def test_unreachable_hub_is_offline_and_the_probe_is_remembered(no_offline_variables, monkeypatch):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    begin = time.monotonic()
    assert hub.hub_offline().startswith(f"{endpoint} cannot be reached")
    assert time.monotonic() - begin < hub.HUB_PROBE_TIMEOUT_S + 1
    calls = []
    monkeypatch.setattr(hub, "_hub_unreachable", lambda e: calls.append(e))
    assert hub.hub_offline() is not None and calls == []  # remembered, not probed again


def test_from_hub_uses_the_cache_only_when_offline(no_offline_variables, monkeypatch, tmp_path):
    monkeypatch.setattr(hub, "_hub_unreachable", lambda endpoint: None)
    seen = []

    def load(local_only: bool) -> str:
        seen.append(local_only)
        if local_only:
            raise FileNotFoundError("not in the disk cache")
        return "downloaded"

    assert hub.from_hub(load, "org/model", what="the model", local_fix="pass DIR") == "downloaded"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.HubUnavailableError) as info:
        hub.from_hub(load, "org/model", what="the model", local_fix="pass DIR", cache=tmp_path)
    assert seen == [False, True]
    message = str(info.value)
    assert message.startswith(f"the model 'org/model' is not in the local cache ({tmp_path}) and HF_HUB_OFFLINE is set")
    assert "hf download org/model --local-dir DIR" in message and "pass DIR" in message
    assert "JASCO_CACHE_DIR=CACHE" in message and "not in the disk cache" in message
    # A local path never goes through the hub logic.
    assert hub.from_hub(lambda local_only: local_only, str(tmp_path), what="x", local_fix="y") is False


def test_disk_full_is_found_anywhere_in_the_chain():
    assert files.is_disk_full(OSError(errno.ENOSPC, "full"))
    assert files.is_disk_full(OSError(errno.EDQUOT, "quota"))
    assert not files.is_disk_full(OSError(errno.EACCES, "denied"))
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1 vs 0") from None
    except RuntimeError as error:  # `from None` hides the context in tracebacks, but it is still there
        assert files.is_disk_full(error)
    assert not files.is_disk_full(RuntimeError("unexpected pos"))


def test_atomic_write_on_a_full_disk(tmp_path, monkeypatch):
    target = tmp_path / "file.bin"
    with pytest.raises(files.DiskFullError) as info, \
            files.atomic_write(target, "wb", needed_bytes=5 * 2**20, disk_full_hint="do something") as f:
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert str(info.value).startswith(f"No space left on device while writing {target} (needs ~5 MB, ")
    assert str(info.value).endswith(" MB free): do something")
    assert info.value.errno == errno.ENOSPC and os.listdir(tmp_path) == []


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_write_mode_follows_the_current_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        files.write_text_atomic(tmp_path / f"{umask:o}.txt", "x")
    finally:
        os.umask(previous)
    assert (tmp_path / f"{umask:o}.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_temp_files_names_only_leftovers_of_the_target(tmp_path):
    names = [".checkpoint.th.ab_c1.tmp.th", ".history.json.x1.tmp.json", "checkpoint.th", ".checkpoint.th.keep"]
    for name in names:
        (tmp_path / name).write_text("x")
    assert [p.name for p in files.atomic_temp_files(tmp_path, r"checkpoint\.th")] == [names[0]]
    assert len(files.atomic_temp_files(tmp_path)) == 2
