"""Tests for jasco.audio.hcqt and jasco.controls.melody (deepsalience multif0 in torch)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from jasco.audio.hcqt import amplitude_to_db, filter_lengths, harmonic_cqt, log_hcqt, reflect_indices
from jasco.controls.melody.extraction import (
    extract_salience,
    resample_frames,
    resolve_weights,
    run_salience_network,
    salience_to_melody,
)
from jasco.controls.melody.network import LAYERS, TIME_CONTEXT, MultiF0Salience, SameConv2d, tf_same_padding
from jasco.controls.melody.salience import one_hot_frames

h5py = pytest.importorskip("h5py", reason="h5py (jasco[melody]) is needed to read Keras weights")

WEIGHTS = Path("/work/shared/reference/deepsalience/multif0.h5")
needs_weights = pytest.mark.skipif(
    not WEIGHTS.is_file(), reason=f"deepsalience weights not present at {WEIGHTS}"
)
SR = 22050


@pytest.fixture(scope="module")
def model() -> MultiF0Salience:
    if not WEIGHTS.is_file():
        pytest.skip(f"deepsalience weights not present at {WEIGHTS}")
    return MultiF0Salience.from_keras_h5(WEIGHTS)


def write_fake_keras_h5(path: Path, bad_layer: str | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Write a Keras-2-style weight file with the multif0 layout and random values; return kernels."""
    g = torch.Generator().manual_seed(seed)
    names = ["input_1"]
    kernels = {}
    with h5py.File(path, "w") as f:
        def add(name: str, weights: dict[str, torch.Tensor]) -> None:
            names.append(name)
            grp = f.create_group(name)
            sub = grp.create_group(name)
            for w, v in weights.items():
                sub.create_dataset(f"{w}:0", data=v.numpy())
            grp.attrs["weight_names"] = [f"{name}/{w}:0".encode() for w in weights]

        f.create_group("input_1").attrs["weight_names"] = []
        add("batch_normalization_1", _bn(6, g))
        for i, (name, (kh, kw), cin, cout) in enumerate(LAYERS):
            shape = (kh + 1, kw, cin, cout) if name == bad_layer else (kh, kw, cin, cout)
            kernels[name] = torch.randn(*shape, generator=g) * 0.05
            add(name, {"kernel": kernels[name], "bias": torch.randn(cout, generator=g) * 0.1})
            if i < len(LAYERS) - 1:
                add(f"batch_normalization_{i + 2}", _bn(cout, g))
        f.attrs["layer_names"] = [n.encode() for n in names]
    return kernels


def _bn(n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        "gamma": 1 + 0.1 * torch.randn(n, generator=g),
        "beta": 0.1 * torch.randn(n, generator=g),
        "moving_mean": 0.1 * torch.randn(n, generator=g),
        "moving_variance": 1 + torch.rand(n, generator=g),
    }


# ---------------------------------------------------------------- padding and network structure
def test_tf_same_padding_puts_odd_extra_at_the_end():
    assert tf_same_padding((5, 5)) == (2, 2, 2, 2)
    assert tf_same_padding((70, 3)) == (1, 1, 34, 35)
    assert tf_same_padding((2, 1)) == (0, 0, 0, 1)


def test_same_conv_even_kernel_alignment_matches_tensorflow():
    conv = SameConv2d(1, 1, (2, 1))
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[10.0], [1.0]]]]))  # out[i] = 10 x[i] + x[i + 1]
        conv.bias.zero_()
    x = torch.zeros(1, 1, 6, 1)
    x[0, 0, 3, 0] = 1.0
    y = conv(x)[0, 0, :, 0]
    assert y.tolist() == [0.0, 0.0, 1.0, 10.0, 0.0, 0.0]


def test_fake_h5_roundtrip_loads_every_layer(tmp_path: Path):
    path = tmp_path / "fake.h5"
    kernels = write_fake_keras_h5(path)
    net = MultiF0Salience.from_keras_h5(path)
    for name, kernel in kernels.items():
        torch.testing.assert_close(net.convs[name].weight, kernel.permute(3, 2, 0, 1))
    with h5py.File(path) as f:
        var = torch.from_numpy(f["batch_normalization_1/batch_normalization_1/moving_variance:0"][()])
    torch.testing.assert_close(net.input_norm.running_var, var)
    assert net.input_norm.eps == 1e-3 and not net.training
    out = net(torch.rand(2, 6, 360, 9))
    assert out.shape == (2, 360, 9) and 0 <= out.min() and out.max() <= 1


def test_wrong_kernel_shape_names_the_layer(tmp_path: Path):
    path = tmp_path / "wrong.h5"
    write_fake_keras_h5(path, bad_layer="distribute")
    with pytest.raises(ValueError, match=r"layer 'distribute'.*\(71, 3, 64, 8\)"):
        MultiF0Salience.from_keras_h5(path)


def test_corrupt_or_missing_h5_gives_clear_error(tmp_path: Path):
    path = tmp_path / "corrupt.h5"
    path.write_bytes(b"this is not hdf5" * 64)
    with pytest.raises(ValueError, match="(?s)corrupt.h5.*corrupt or not a deepsalience"):
        MultiF0Salience.from_keras_h5(path)
    with pytest.raises(FileNotFoundError, match="nowhere.h5"):
        MultiF0Salience.from_keras_h5(tmp_path / "nowhere.h5")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.attrs["layer_names"] = [b"dense_1"]
        f.create_group("dense_1").attrs["weight_names"] = []
    with pytest.raises(ValueError, match="not a deepsalience multif0 weight file"):
        MultiF0Salience.from_keras_h5(other)


@needs_weights
def test_real_weights_load_with_expected_shapes(model: MultiF0Salience):
    expected = {name: (cout, cin, *k) for name, k, cin, cout in LAYERS}
    for name, shape in expected.items():
        assert tuple(model.convs[name].weight.shape) == shape
    with h5py.File(WEIGHTS) as f:
        kernel = torch.from_numpy(f["distribute/distribute_14/kernel:0"][()])
    torch.testing.assert_close(model.convs["distribute"].weight, kernel.permute(3, 2, 0, 1))


def test_chunked_network_equals_single_pass(tmp_path: Path):
    path = tmp_path / "fake.h5"
    write_fake_keras_h5(path, seed=3)
    net = MultiF0Salience.from_keras_h5(path)
    x = torch.rand(6, 360, 50)
    whole = net(x[None])[0]
    chunked = run_salience_network(net, x, chunk_frames=13)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- HCQT
def test_hcqt_sine_peaks_at_expected_bins_for_every_harmonic():
    t = torch.arange(2 * SR) / SR
    for f0 in (110.0, 440.0, 1000.0):
        mag = harmonic_cqt(torch.sin(2 * math.pi * f0 * t))
        assert mag.shape == (6, 360, 1 + 2 * SR // 256)
        frame = mag[:, :, mag.shape[-1] // 2]
        for i, h in enumerate((0.5, 1, 2, 3, 4, 5)):
            expected = 60 * math.log2(f0 / (32.7 * h))
            if 0 <= expected <= 359:
                assert abs(int(frame[i].argmax()) - expected) <= 0.5
        # librosa scaling (scale=True): a unit sine gives sqrt(L) / 2 at its bin.
        k = round(60 * math.log2(f0 / 32.7))
        length = float(filter_lengths(torch.tensor(32.7 * 2 ** (k / 60)), SR, 60))
        assert frame[1, k] == pytest.approx(math.sqrt(length) / 2, rel=0.02)


def test_hcqt_blocks_match_and_channels_are_averaged():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, SR, generator=g)
    whole = harmonic_cqt(x.mean(0), harmonics=(1, 3))
    blocked = harmonic_cqt(x, harmonics=(1, 3), block_frames=20)
    # Blocks differ from one pass only through the truncated filter spectra wrapping around
    # differently (about -60 dB of the maximum).
    torch.testing.assert_close(blocked, whole, rtol=0, atol=2e-3 * float(whole.max()))
    with pytest.raises(ValueError, match=r"\[N\] or \[C, N\]"):
        harmonic_cqt(torch.zeros(1, 2, 100))
    with pytest.raises(ValueError, match="Nyquist"):
        harmonic_cqt(torch.zeros(1000), sample_rate=16000)


def test_reflect_indices_and_db_scaling():
    assert reflect_indices(torch.arange(-3, 7), 4).tolist() == [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]
    mag = torch.tensor([1.0, 0.1, 1e-3, 1e-6, 0.0])
    db = amplitude_to_db(mag, ref=1.0)
    torch.testing.assert_close(db, torch.tensor([0.0, -20.0, -60.0, -80.0, -80.0]))
    torch.testing.assert_close(log_hcqt(mag * 7), torch.tensor([1.0, 0.75, 0.25, 0.0, 0.0]))


# ---------------------------------------------------------------- post-processing
def _salience_with_peaks(rows_per_frame: list[int | None], value: float = 0.9) -> torch.Tensor:
    sal = torch.zeros(360, len(rows_per_frame))
    for t, row in enumerate(rows_per_frame):
        if row is not None:
            sal[row, t] = value
    return sal


def test_postprocess_maps_rows_to_semitones():
    # Row 95 + 5k is MIDI 43 + k; its two neighbours each side belong to the same semitone.
    for row, k in [(95, 0), (97, 0), (98, 1), (100, 1), (102, 1), (355, 52), (357, 52)]:
        out = salience_to_melody(_salience_with_peaks([row] * 20), n_frames=5)
        assert out.shape == (53, 5)
        assert out[k].tolist() == [1.0] * 5 and out.sum() == 5, row
    for row in (90, 60, 20, 358):  # below G2, or past the last full group of 5: removed
        assert salience_to_melody(_salience_with_peaks([row] * 20), n_frames=5).sum() == 0
    quiet = _salience_with_peaks([150] * 20, value=0.49)  # below the voicing threshold
    assert salience_to_melody(quiet).sum() == 0
    with pytest.raises(ValueError, match=r"\[360, F\]"):
        salience_to_melody(torch.zeros(53, 10))


def test_postprocess_argmax_one_hot_and_unvoiced_frames():
    sal = torch.zeros(360, 20)
    sal[100, :] = 0.6
    sal[150, :10] = 0.9  # louder note wins while present
    out = salience_to_melody(sal, n_frames=8)
    assert out.sum(0).tolist() == [1.0] * 8
    # Input frames 0-9 hold note 11, later ones note 1; output frame j reads position 1.72 j.
    assert out[11].tolist() == [1.0] * 6 + [0.0] * 2
    assert out[1].tolist() == [0.0] * 6 + [1.0] * 2
    x = torch.tensor([[0.0, 0.2, 0.5], [0.0, 0.7, 0.5]])
    assert one_hot_frames(x).tolist() == [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]


def test_time_resampling_uses_integer_86_and_pads_with_zeros():
    x = torch.arange(10, dtype=torch.float32)[None]
    y = resample_frames(x, 86, 50, n_frames=8)
    # Positions 0, 1.72, ..., 8.6 interpolate the ramp; 10.32 and 12.04 are past the end.
    expected = [0.0, 1.72, 3.44, 5.16, 6.88, 8.6, 0.0, 0.0]
    torch.testing.assert_close(y[0], torch.tensor(expected), atol=1e-4, rtol=0)
    assert resample_frames(x, 86, 50).shape[-1] == 6


def test_resolve_weights_path_and_cached_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    assert resolve_weights(str(tmp_path / "a.h5")) == tmp_path / "a.h5"
    monkeypatch.setenv("JASCO_CACHE_DIR", str(tmp_path / "cache"))
    cached = tmp_path / "cache" / "deepsalience" / "multif0.h5"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    # A cached download is reused without touching the network.
    assert resolve_weights("https://example.invalid/weights/multif0.h5") == cached


# ---------------------------------------------------------------- end to end
def _note_sequence(midis: list[int], durations: list[float], sr: int = SR) -> torch.Tensor:
    """Harmonic-rich tones (6 partials, amplitudes 0.6^k) with 10 ms fades."""
    parts = []
    for midi, dur in zip(midis, durations):
        n = int(round(dur * sr))
        t = torch.arange(n, dtype=torch.float64) / sr
        f0 = 440.0 * 2 ** ((midi - 69) / 12)
        x = sum(0.6 ** k * torch.sin(2 * math.pi * (k + 1) * f0 * t) for k in range(6) if (k + 1) * f0 < sr / 2)
        fade = int(0.01 * sr)
        env = torch.ones(n, dtype=torch.float64)
        env[:fade] = torch.linspace(0, 1, fade)
        env[-fade:] = torch.linspace(1, 0, fade)
        parts.append(0.3 * x * env)
    return torch.cat(parts).float()


@needs_weights
def test_synthetic_melody_is_recovered(model: MultiF0Salience):
    g = torch.Generator().manual_seed(0)
    midis = list(range(43, 96, 4)) + [95] + torch.randint(43, 96, (10,), generator=g).tolist()
    durations = (0.3 + 0.2 * torch.rand(len(midis), generator=g)).tolist()
    wav = _note_sequence(midis, durations)
    out = extract_salience(wav, SR, WEIGHTS, model=model)
    n_out = math.ceil(wav.numel() * 50 / SR)
    assert out.shape == (53, n_out) and out.sum(0).max() <= 1
    target = torch.full((n_out,), -1)
    near_edge = torch.zeros(n_out, dtype=torch.bool)
    start = 0.0
    for midi, dur in zip(midis, durations):
        a, b = math.ceil(start * 50), math.ceil((start + dur) * 50)
        target[a:b] = midi - 43
        # Two frames each side of a note change: the 5x5 and 3x3 convolutions and the 86→50 fps
        # interpolation blend neighbouring notes there.
        near_edge[max(a - 2, 0):a + 2] = True
        start += dur
    near_edge[-2:] = True
    pred = torch.where(out.sum(0) > 0, out.argmax(0), torch.tensor(-1))
    accuracy = (pred == target)[~near_edge].float().mean().item()
    assert accuracy >= 0.95, accuracy


@needs_weights
def test_extract_resamples_mixes_down_and_handles_silence(model: MultiF0Salience):
    sr = 44100
    tone = _note_sequence([69], [1.0], sr=sr)
    stereo = torch.stack([tone, tone])
    out = extract_salience(stereo, sr, WEIGHTS, model=model)
    assert out.shape == (53, 50)
    assert out[69 - 43, 5:45].tolist() == [1.0] * 40
    silent = extract_salience(torch.zeros(sr // 2), sr, WEIGHTS, model=model)
    assert silent.shape == (53, 25) and silent.sum() == 0
    with pytest.raises(ValueError, match=r"\[N\] or \[C, N\]"):
        extract_salience(torch.zeros(1, 1, 10), sr, WEIGHTS, model=model)


def test_extract_requires_weights_or_model():
    with pytest.raises(ValueError, match="needs `weights`"):
        extract_salience(torch.zeros(100), SR)
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        extract_salience(torch.zeros(100), SR, "/nonexistent/missing.h5")


def test_same_padding_helper_matches_manual_pad():
    conv = SameConv2d(2, 3, (70, 3))
    x = torch.randn(1, 2, 80, 7)
    ref = F.conv2d(F.pad(x, (1, 1, 34, 35)), conv.weight, conv.bias)
    torch.testing.assert_close(conv(x), ref)
    assert TIME_CONTEXT >= 7


def test_very_short_audio_gives_one_melody_frame(tmp_path: Path):
    path = tmp_path / "fake.h5"
    write_fake_keras_h5(path, seed=1)
    out = extract_salience(torch.randn(100), SR, path)  # 4.5 ms: less than one 50 fps frame
    assert out.shape == (53, 1)
    assert set(out.unique().tolist()) <= {0.0, 1.0} and out.sum() <= 1  # one-hot or unvoiced


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_network_matches_cpu(tmp_path: Path):
    path = tmp_path / "fake.h5"
    write_fake_keras_h5(path, seed=2)
    x = torch.rand(6, 360, 40)
    cpu = run_salience_network(MultiF0Salience.from_keras_h5(path), x, device="cpu")
    gpu = run_salience_network(MultiF0Salience.from_keras_h5(path), x, device="cuda", chunk_frames=16)
    torch.testing.assert_close(gpu, cpu, atol=1e-3, rtol=1e-3)
