"""Tests for jasco/solvers/checkpoint.py: atomic save, load errors, epoch copies, source resolution;
and, in a solver, stale temp files and the order of checkpoint and history.json."""
from __future__ import annotations

import errno
import json
import os
import pickle
import re

import pytest
import torch
from helpers_training import ensure_example, experiment

from jasco import safe_load
from jasco import files
from jasco.solvers import checkpoint as ckpt
from jasco.solvers.checkpoint import (
    CheckpointError,
    epoch_checkpoint_path,
    flush_stale_checkpoints,
    list_epoch_checkpoints,
    load_checkpoint,
    remove_stale_temp_files,
    resolve_checkpoint,
    save_checkpoint,
)


def make_state(value: float = 1.0) -> dict:
    return {"model": {"w": torch.full((4, 4), value)}, "xp.cfg": "lr: 1e-4\n", "epoch": 3,
            "history": [{"train": {"loss": 0.5}}]}


def test_round_trip(tmp_path):
    path = tmp_path / "sub" / "checkpoint.th"
    save_checkpoint(make_state(2.0), path)
    state = load_checkpoint(path)
    assert torch.equal(state["model"]["w"], torch.full((4, 4), 2.0))
    assert state["xp.cfg"] == "lr: 1e-4\n" and state["epoch"] == 3
    assert state["history"] == [{"train": {"loss": 0.5}}]
    assert os.listdir(path.parent) == ["checkpoint.th"]


def test_overwrite_replaces(tmp_path):
    path = tmp_path / "checkpoint.th"
    save_checkpoint(make_state(1.0), path)
    save_checkpoint(make_state(5.0), str(path))
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.full((4, 4), 5.0))


@pytest.mark.parametrize("exc", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_failed_save_keeps_previous(tmp_path, monkeypatch, exc):
    path = tmp_path / "checkpoint.th"
    save_checkpoint(make_state(1.0), path)
    original = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise exc

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(type(exc)):
        save_checkpoint(make_state(9.0), path)
    monkeypatch.undo()
    assert path.read_bytes() == original
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.th"]  # no temp file left behind
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.full((4, 4), 1.0))


def test_failed_rename_removes_temp(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.th"

    def broken_replace(src, dst):
        raise OSError("cross-device link")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="cross-device"):
        save_checkpoint(make_state(), path)
    assert os.listdir(tmp_path) == []


def test_truncated_file_error(tmp_path):
    path = tmp_path / "checkpoint.th"
    save_checkpoint(make_state(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated") as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message
    assert "killed while writing" in message and "checkpoint_<epoch>.th" in message
    assert isinstance(info.value, RuntimeError)


def test_empty_and_garbage_files(tmp_path):
    empty = tmp_path / "empty.th"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.th: the file is empty"):
        load_checkpoint(empty)
    garbage = tmp_path / "garbage.th"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match=r"garbage\.th: truncated or not a torch checkpoint"):
        load_checkpoint(garbage)


class Custom:
    """A class weights_only loading refuses."""


class RunsACommand:
    """Unpickling this would call os.system: the safe loader must refuse it, and nothing runs it."""

    def __reduce__(self):
        return os.system, ("touch SHOULD_NEVER_EXIST",)


def _crafted(path, how: str) -> None:
    """Write a malicious file without executing anything (pickling only records the call)."""
    state = {"model": {"w": torch.zeros(2)}, "cfg": RunsACommand()}
    if how == "zip":
        torch.save(state, path)
    elif how == "legacy":
        torch.save(state, path, _use_new_zipfile_serialization=False)
    else:  # a plain pickle, protocol 2 or 5
        path.write_bytes(pickle.dumps(state, protocol=int(how[-1])))


def test_unsafe_objects_error(tmp_path):
    path = tmp_path / "pickled.th"
    torch.save({"cfg": Custom()}, path)
    with pytest.raises(CheckpointError, match=r"safe loader \(torch.load weights_only=True\) refuses: the global "
                                              r".*Custom\. jasco will not execute it"):
        load_checkpoint(path)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("how", ["zip", "legacy", "pickle2", "pickle5"])
def test_malicious_file_is_refused_not_called_corrupt(tmp_path, monkeypatch, how):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "checkpoint.th"
    _crafted(path, how)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert re.search(r"refuses: the globals? ([\w.]+, )*(posix|nt)\.system", message)  # named, whatever the format
    assert "will not execute it" in message
    assert "truncated" not in message and "corrupt" not in message
    assert not (tmp_path / "SHOULD_NEVER_EXIST").exists()


def test_truncated_malicious_file_is_truncated(tmp_path):
    path = tmp_path / "checkpoint.th"
    _crafted(path, "zip")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)


@pytest.mark.parametrize("version, refused", [("2.5.1", True), ("2.4.0+cu121", True), ("2.6.0a0+ecf3bae", True),
                                              ("2.6.0", False), ("2.6.0+cpu", False), ("2.13.0+cpu", False)])
def test_torch_older_than_2_6_is_refused(tmp_path, monkeypatch, version, refused):
    path = tmp_path / "checkpoint.th"
    save_checkpoint(make_state(), path)
    monkeypatch.setattr(torch, "__version__", version)
    if refused:
        expected = rf"torch {re.escape(version)} .*CVE-2025-32434.*torch>=2\.6"
        with pytest.raises(safe_load.UnsafeTorchError, match=expected):
            load_checkpoint(path)
    else:
        assert load_checkpoint(path)["epoch"] == 3


def test_missing_folder_and_not_dict(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.th does not exist"):
        load_checkpoint(tmp_path / "nope.th")
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(tmp_path)
    path = tmp_path / "list.th"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match=r"list\.th holds a list, not a dict"):
        load_checkpoint(path)


def test_epoch_paths_and_listing(tmp_path):
    assert epoch_checkpoint_path(tmp_path, 7) == tmp_path / "checkpoint_7.th"
    assert list_epoch_checkpoints(tmp_path / "missing") == []
    for epoch in (100, 5, 20):
        epoch_checkpoint_path(tmp_path, epoch).write_bytes(b"x")
    (tmp_path / "checkpoint.th").write_bytes(b"x")
    (tmp_path / "checkpoint_7.th.tmp.123").write_bytes(b"x")
    (tmp_path / "checkpoint_best.th").write_bytes(b"x")
    assert list_epoch_checkpoints(str(tmp_path)) == [
        (5, tmp_path / "checkpoint_5.th"), (20, tmp_path / "checkpoint_20.th"),
        (100, tmp_path / "checkpoint_100.th")]


def test_flush_stale_checkpoints(tmp_path):
    for epoch in (50, 100, 150, 200, 250):
        epoch_checkpoint_path(tmp_path, epoch).write_bytes(b"x")
    (tmp_path / "checkpoint.th").write_bytes(b"x")
    assert flush_stale_checkpoints(tmp_path, None) == []
    assert flush_stale_checkpoints(tmp_path, 0) == []
    assert len(list_epoch_checkpoints(tmp_path)) == 5
    deleted = flush_stale_checkpoints(tmp_path, 2)
    assert deleted == [tmp_path / f"checkpoint_{e}.th" for e in (50, 100, 150)]
    assert not any(p.exists() for p in deleted)
    assert [e for e, _ in list_epoch_checkpoints(tmp_path)] == [200, 250]
    assert (tmp_path / "checkpoint.th").exists()
    assert flush_stale_checkpoints(tmp_path, 10) == []
    with pytest.raises(ValueError, match="keep_last must be >= 0"):
        flush_stale_checkpoints(tmp_path, -1)


def test_resolve_checkpoint(tmp_path):
    dora_dir = tmp_path / "dora"
    xp = dora_dir / "xps" / "abc123"
    xp.mkdir(parents=True)
    (xp / "checkpoint.th").write_bytes(b"x")
    assert resolve_checkpoint("//sig/abc123", dora_dir) == xp / "checkpoint.th"
    assert resolve_checkpoint(str(xp), dora_dir) == xp / "checkpoint.th"
    other = tmp_path / "export.th"
    other.write_bytes(b"x")
    assert resolve_checkpoint(str(other), dora_dir) == other
    with pytest.raises(FileNotFoundError, match="No checkpoint for experiment deadbeef"):
        resolve_checkpoint("//sig/deadbeef", dora_dir)
    with pytest.raises(FileNotFoundError, match="names no experiment"):
        resolve_checkpoint("//sig/", dora_dir)
    with pytest.raises(FileNotFoundError, match=re.escape(f"Folder {tmp_path} has no checkpoint.th")):
        resolve_checkpoint(str(tmp_path), dora_dir)
    with pytest.raises(FileNotFoundError, match="neither a file, a folder nor //sig"):
        resolve_checkpoint(str(tmp_path / "missing.th"), dora_dir)


def test_temp_name_is_in_same_folder(tmp_path, monkeypatch):
    seen = []

    def spy_replace(src, dst):
        seen.append((src, dst))
        return real_replace(src, dst)

    real_replace = os.replace
    monkeypatch.setattr(os, "replace", spy_replace)
    path = tmp_path / "checkpoint.th"
    save_checkpoint(make_state(), path)
    [(src, dst)] = seen
    assert dst == path and src.parent == tmp_path and re.fullmatch(r"\.checkpoint\.th\.[^.]+\.tmp\.th", src.name)


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_checkpoint_mode_follows_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        save_checkpoint(make_state(), tmp_path / "checkpoint.th")
    finally:
        os.umask(previous)
    assert (tmp_path / "checkpoint.th").stat().st_mode & 0o777 == 0o666 & ~umask


def _torch_full_disk(obj, f, *args, **kwargs):
    """What torch.save does when the disk fills: the OSError(ENOSPC) only in the RuntimeError's chain."""
    f.write(b"PK\x03\x04 part of a checkpoint")
    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 40704 vs 598") from None


def _plain_full_disk(obj, f, *args, **kwargs):
    f.write(b"PK\x03\x04 part of a checkpoint")
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("writer", [_torch_full_disk, _plain_full_disk])
def test_full_disk_is_a_clear_error_and_leaves_no_temp_file(tmp_path, monkeypatch, writer):
    path = tmp_path / "checkpoint.th"
    save_checkpoint(make_state(1.0), path)
    original = path.read_bytes()
    monkeypatch.setattr(torch, "save", writer)
    state = {"model": {"w": torch.zeros(3, 2**20)}}  # 12 MB of float32
    with pytest.raises(files.DiskFullError) as info:
        save_checkpoint(state, path)
    monkeypatch.undo()
    message = str(info.value)
    assert message.startswith(f"No space left on device while writing {path} (needs ~12 MB")
    assert message.endswith("free space or set JASCO_DORA_DIR to another disk")
    assert info.value.errno == errno.ENOSPC and isinstance(info.value, OSError)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.th"] and path.read_bytes() == original


def test_remove_stale_temp_files(tmp_path):
    stale = [".checkpoint.th.k2j_x9a.tmp.th", ".checkpoint_40.th.abc.tmp.th",  # killed atomic saves
             "checkpoint.th.tmp.4242", "checkpoint_7.th.tmp.1"]  # the writer of earlier versions
    kept = ["checkpoint.th", "checkpoint_7.th", "history.json", ".history.json.abc.tmp.json",
            "checkpoint.th.tmp.notapid", "mycheckpoint.th.tmp.12", "checkpoint.th.bak"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"x")
    removed = remove_stale_temp_files(tmp_path)
    assert sorted(p.name for p in removed) == sorted(stale)
    assert sorted(os.listdir(tmp_path)) == sorted(kept)
    assert remove_stale_temp_files(tmp_path / "missing") == []


# ---------------------------------------------------------------- in a solver
RUN = ["solver=jasco/debug", "optim.epochs=1", "optim.updates_per_epoch=3", "generate.every=0", "evaluate.every=0"]


def test_solver_start_cleans_temps_and_history_never_runs_ahead(tmp_path, monkeypatch):
    ensure_example()
    from jasco.solvers import base
    from jasco.train import get_solver

    with experiment(tmp_path, RUN) as xp:
        folder = xp.folder
        folder.mkdir(parents=True, exist_ok=True)
        stale = [folder / ".checkpoint.th.k2j_x9a.tmp.th", folder / "checkpoint.th.tmp.4242"]
        for path in stale:
            path.write_bytes(b"x" * 1000)
        solver = get_solver(xp.cfg)

        def full_disk(state, path, *args, **kwargs):
            raise files.disk_full_error(path, 10**6, ckpt.DISK_FULL_HINT)

        monkeypatch.setattr(base, "save_checkpoint", full_disk)
        with pytest.raises(files.DiskFullError):
            solver.run()  # epoch 1 trains, then its checkpoint cannot be written
        monkeypatch.undo()
        assert not any(path.exists() for path in stale)  # removed at start, before any save
        assert not (folder / "checkpoint.th").exists()
        assert not (folder / "history.json").exists()  # not ahead of the (missing) checkpoint

    with experiment(tmp_path, RUN) as xp:
        get_solver(xp.cfg).run()
    checkpoint_history = torch.load(folder / "checkpoint.th", weights_only=True)["history"]
    assert len(checkpoint_history) == 1
    assert json.loads((folder / "history.json").read_text()) == checkpoint_history

    # history.json ahead of the checkpoint (written first by earlier versions, then killed): the
    # next run rewrites it from the checkpoint.
    (folder / "history.json").write_text(json.dumps(checkpoint_history * 2))
    with experiment(tmp_path, RUN) as xp:
        get_solver(xp.cfg).run()  # optim.epochs=1 is done: nothing to train
    assert json.loads((folder / "history.json").read_text()) == checkpoint_history
