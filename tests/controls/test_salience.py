"""Tests for jasco.controls.melody.salience: file formats, resampling to 50 fps, one-hot frames, errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from jasco.controls.melody.salience import (
    N_MELODY_BINS,
    SalienceError,
    one_hot_frames,
    read_salience,
    salience_segment,
    write_salience,
)


def _pattern(n_frames: int, rate: float, changes: list[tuple[float, int | None]]) -> torch.Tensor:
    """One-hot `[53, F]` holding bin b (None = unvoiced) from each (time, b) until the next change."""
    sal = torch.zeros(N_MELODY_BINS, n_frames)
    times = torch.arange(n_frames) / rate
    for i, (start, b) in enumerate(changes):
        end = changes[i + 1][0] if i + 1 < len(changes) else float("inf")
        if b is not None:
            sal[b, (times >= start) & (times < end)] = 1.0
    return sal


def test_npz_round_trip_and_orientation(tmp_path: Path) -> None:
    sal = torch.rand(N_MELODY_BINS, 40)
    path = write_salience(tmp_path / "song.salience.npz", sal, 86.0)
    back, rate = read_salience(path)
    assert rate == 86.0 and torch.allclose(back, sal)
    np.save(tmp_path / "t.npy", sal.numpy().T)  # time-major [F, 53]
    back, rate = read_salience(tmp_path / "t.npy", default_frame_rate=43.0)
    assert rate == 43.0 and torch.allclose(back, sal)
    np.savez(tmp_path / "norate.npz", salience=sal.numpy())
    assert read_salience(tmp_path / "norate.npz")[1] == 86.0


def test_wrong_shapes_name_the_file(tmp_path: Path) -> None:
    np.save(tmp_path / "bad.npy", np.zeros((60, 40)))
    with pytest.raises(SalienceError, match=r"bad\.npy.*53 pitch bins"):
        read_salience(tmp_path / "bad.npy")
    np.save(tmp_path / "flat.npy", np.zeros(53))
    with pytest.raises(SalienceError, match=r"flat\.npy.*2-D"):
        read_salience(tmp_path / "flat.npy")
    np.savez(tmp_path / "key.npz", other=np.zeros((53, 4)))
    with pytest.raises(SalienceError, match=r"key\.npz.*'salience'"):
        read_salience(tmp_path / "key.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(SalienceError, match=r"junk\.npz"):
        read_salience(tmp_path / "junk.npz")
    with pytest.raises(SalienceError, match="does not exist"):
        read_salience(tmp_path / "none.npz")


def test_86fps_pattern_lands_in_right_50fps_frames() -> None:
    # 3 s at 86 fps: bin 5 from 0 s, unvoiced from 1 s, bin 40 from 1.5 s, bin 12 from 2.2 s.
    sal = _pattern(258, 86.0, [(0.0, 5), (1.0, None), (1.5, 40), (2.2, 12)])
    out = salience_segment(sal, 86.0, seek_time=0.0, n_frames=150)
    assert out.shape == (N_MELODY_BINS, 150)
    assert torch.all(out.sum(0) <= 1)
    active = [int(out[:, j].argmax()) if out[:, j].sum() > 0 else None for j in range(150)]
    # Away from the change points (one source frame ~ 0.6 target frame), labels are exact.
    assert all(a == 5 for a in active[:49])
    assert all(a is None for a in active[51:74])
    assert all(a == 40 for a in active[76:109])
    assert all(a == 12 for a in active[111:150])


def test_segment_seek_and_padding() -> None:
    sal = _pattern(172, 86.0, [(0.0, 3), (1.0, 30)])  # 2 s
    out = salience_segment(sal, 86.0, seek_time=1.5, n_frames=50)  # 1.5 s .. 2.5 s
    voiced = out.sum(0)
    assert torch.all(out[30, :24] == 1)
    assert torch.all(voiced[26:] == 0)  # past the end of the salience: zero padding


def test_one_hot_keeps_argmax_and_silence() -> None:
    frames = torch.tensor([[0.2, 0.0, 0.9], [0.7, 0.0, 0.1], [0.1, 0.0, 0.5]])
    frames = torch.cat([frames, torch.zeros(N_MELODY_BINS - 3, 3)])
    out = one_hot_frames(frames)
    assert out[:3].tolist() == [[0, 0, 1], [1, 0, 0], [0, 0, 0]]
    assert out.sum() == 2


def test_segment_rejects_wrong_bins() -> None:
    with pytest.raises(SalienceError, match="53"):
        salience_segment(torch.zeros(12, 10), 86.0, 0.0, 5)


def test_notes_to_salience_marks_the_sounding_note_per_frame():
    from jasco.controls.melody.salience import notes_to_salience

    sal = notes_to_salience([(0.0, 0.1, 43), (0.1, 0.15, 60), (0.2, 0.3, 200)], n_frames=12)
    assert sal.shape == (N_MELODY_BINS, 12) and sal.dtype == np.float32
    assert sal[0, :5].tolist() == [1.0] * 5 and sal[0, 5:].sum() == 0  # frames 0..4 (0.0 .. 0.08 s)
    assert sal[17, 5:8].tolist() == [1.0] * 3  # MIDI 60 = row 17, frames 5..7
    assert sal[:, 8:].sum() == 0  # a rest, then a note outside MIDI 43..95 stays silent
