"""Tests for jasco/utils/checkpoint.py: atomic save, load errors, epoch copies, source resolution."""
from __future__ import annotations

import os
import re

import pytest
import torch
from jasco.solvers import checkpoint as ckpt

from jasco.solvers.checkpoint import (
    CheckpointError,
    epoch_checkpoint_path,
    flush_stale_checkpoints,
    list_epoch_checkpoints,
    load_checkpoint,
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


def test_unsafe_objects_error(tmp_path):
    path = tmp_path / "pickled.th"
    torch.save({"cfg": Custom()}, path)
    with pytest.raises(CheckpointError, match="weights_only loading refuses.*Custom"):
        load_checkpoint(path)


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
        seen.append((str(src), str(dst)))
        return real_replace(src, dst)

    real_replace = os.replace
    monkeypatch.setattr(ckpt.os, "replace", spy_replace)
    path = tmp_path / "checkpoint.th"
    save_checkpoint(make_state(), path)
    assert seen == [(str(tmp_path / f"checkpoint.th.tmp.{os.getpid()}"), str(path))]
