"""One atomic writer (`jasco.files.atomic_write`) behind every file `jasco.prepare` writes."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from jasco.controls.chords.progression import read_chord_file, write_chord_file
from jasco.controls.melody.salience import read_salience, write_salience
from jasco.data.drum_codes import write_drum_codes
from jasco.data.latents import write_latents
from jasco.data.manifest import AudioMeta, load_manifest, save_manifest
from jasco.files import atomic_path, atomic_write, write_text_atomic
from jasco.prepare.tracks import Track, load_tracks, save_tracks


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "sub" / "file.txt"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write("half")
        raise RuntimeError("crash while writing")
    assert target.read_text() == "old" and os.listdir(target.parent) == ["file.txt"]
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".txt" and tmp != target
        tmp.write_text("new")
    assert target.read_text() == "new" and os.listdir(target.parent) == ["file.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not the 0o600 of a raw temp file


def test_concurrent_writers_never_collide(tmp_path):
    """Two runs writing the same file: unique temp names, so no writer fails and the result is whole."""
    target = tmp_path / "tracks.jsonl"
    errors: list[BaseException] = []

    def writer(text: str) -> None:
        try:
            for _ in range(50):
                write_text_atomic(target, text * 1000)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(c,)) for c in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and target.read_text() in ("a" * 1000, "b" * 1000)
    assert os.listdir(tmp_path) == ["tracks.jsonl"]


def test_prepare_writers_leave_only_their_file(tmp_path):
    write_chord_file(tmp_path / "c" / "x.chords.json", [(0.0, "C")])
    write_salience(tmp_path / "m" / "x.salience.npz", np.zeros((53, 4), np.float32), 50.0)
    write_drum_codes(tmp_path / "d" / "x.npy", torch.zeros(4, dtype=torch.long))
    write_latents(tmp_path / "l" / "x.npy", torch.zeros(4, 128))
    save_manifest(tmp_path / "t" / "data.jsonl", [AudioMeta(path=str(tmp_path / "a.wav"), duration=1, sample_rate=1)])
    save_manifest(tmp_path / "g" / "data.jsonl.gz", [AudioMeta(path=str(tmp_path / "a.wav"), duration=1,
                                                                 sample_rate=1)])
    save_tracks(tmp_path / "k", [Track("x", str(tmp_path / "a.wav"), 1.0, 32000, 0.5)])
    for folder, name in (("c", "x.chords.json"), ("m", "x.salience.npz"), ("d", "x.npy"), ("l", "x.npy"),
                         ("t", "data.jsonl"), ("g", "data.jsonl.gz"), ("k", "tracks.jsonl")):
        assert os.listdir(tmp_path / folder) == [name]
    assert read_chord_file(tmp_path / "c" / "x.chords.json") == [(0.0, "C")]
    assert read_salience(tmp_path / "m" / "x.salience.npz")[0].shape == (53, 4)
    assert len(load_manifest(tmp_path / "g")) == 1 and list(load_tracks(tmp_path / "k"))


def test_non_finite_latents_are_never_written(tmp_path):
    latents = torch.zeros(4, 128)
    latents[2, 5] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        write_latents(tmp_path / "x.npy", latents)
    assert not list(Path(tmp_path).iterdir())
