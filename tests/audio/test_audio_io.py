"""Tests for jasco.audio.io: round trips, seeking, probing, normalisation, conversion, errors."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import soundfile as sf
import torch
from helpers_audio import encode_with_av, ramp, sine, write_wav

from jasco.audio.convert import convert_audio
from jasco.audio.io import AudioReadError, audio_info, audio_read, audio_write
from jasco.audio.loudness import loudness, normalize_audio


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_round_trip_16bit(tmp_path: Path, suffix: str) -> None:
    wav = sine(0.5, 16000, channels=2) * 0.8
    out = audio_write(tmp_path / f"x{suffix}", wav, 16000, normalize=False)
    assert out.suffix == suffix
    assert sf.info(str(out)).subtype == "PCM_16"
    back, sr = audio_read(out)
    assert sr == 16000 and back.shape == wav.shape and back.dtype == torch.float32
    assert (back - wav).abs().max() < 2 / 32768


def test_write_adds_wav_suffix_and_parent(tmp_path: Path) -> None:
    out = audio_write(tmp_path / "a" / "b" / "stem", sine(0.1, 8000), 8000)
    assert out == tmp_path / "a" / "b" / "stem.wav" and out.exists()


def test_seek_is_sample_exact(tmp_path: Path) -> None:
    sr = 8000
    path = write_wav(tmp_path / "ramp.flac", ramp(2.0, sr), sr, subtype="PCM_24")
    wav, got_sr = audio_read(path, seek_time=0.75, duration=0.5)
    assert got_sr == sr and wav.shape == (1, 4000)
    expected = torch.arange(6000, 10000, dtype=torch.float64) / 65536.0
    assert torch.allclose(wav[0].double(), expected, atol=1e-6)


def test_read_past_end_and_pad(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "x.wav", sine(1.0, 8000), 8000)
    short, _ = audio_read(path, seek_time=0.8, duration=0.5)
    assert short.shape == (1, 1600)
    padded, _ = audio_read(path, seek_time=0.8, duration=0.5, pad=True)
    assert padded.shape == (1, 4000)
    assert torch.equal(padded[:, :1600], short) and padded[:, 1600:].abs().max() == 0


def test_info_without_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_wav(tmp_path / "x.wav", sine(1.5, 16000, channels=2), 16000)
    # Any attempt to decode samples would go through sf.read / SoundFile.read.
    monkeypatch.setattr(sf.SoundFile, "read", lambda *a, **k: pytest.fail("info decoded audio"))
    info = audio_info(path)
    assert (info.sample_rate, info.frames, info.channels) == (16000, 24000, 2)
    assert info.duration == pytest.approx(1.5)


# (codec given to PyAV, file suffix, sample rate the codec accepts)
_AV_CASES = [("mp3", ".mp3", 32000), ("aac", ".m4a", 32000), ("libopus", ".ogg", 48000)]


@pytest.mark.parametrize("codec,suffix,sr", _AV_CASES)
def test_compressed_formats_read_and_seek(tmp_path: Path, codec: str, suffix: str, sr: int) -> None:
    burst_at = 1.0
    wav = torch.zeros(1, 3 * sr)
    wav[:, int(burst_at * sr):int((burst_at + 0.1) * sr)] = sine(0.1, sr, freq=1000, amplitude=0.8)
    try:
        path = encode_with_av(tmp_path / f"x{suffix}", wav, sr, codec)
    except Exception as exc:  # encoder missing from this PyAV build
        pytest.skip(f"PyAV cannot encode {codec}: {exc}")
    info = audio_info(path)
    assert info.sample_rate == sr and info.channels == 1
    assert info.duration == pytest.approx(3.0, abs=0.05)
    full, got_sr = audio_read(path)
    assert got_sr == sr
    onset = int((full[0].abs() > 0.1).float().argmax())
    assert abs(onset / sr - burst_at) < 0.005  # encoder delay is compensated
    for seek in (0.3, 0.95, 1.5):
        part, _ = audio_read(path, seek_time=seek, duration=0.5)
        start = int(round(seek * sr))
        assert part.shape == (1, sr // 2)
        # Seeking gives exactly the samples of a full decode (decoder warm-up is handled).
        assert torch.allclose(part, full[:, start:start + sr // 2], atol=1e-6)


def test_missing_corrupt_and_empty_files_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.wav"
    with pytest.raises(AudioReadError, match="nope.wav"):
        audio_read(missing)
    empty = tmp_path / "empty.flac"
    empty.write_bytes(b"")
    with pytest.raises(AudioReadError, match="empty.flac.*empty"):
        audio_info(empty)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF garbage that is not a wav file" * 10)
    with pytest.raises(AudioReadError, match="corrupt.wav"):
        audio_read(corrupt)
    with pytest.raises(AudioReadError, match="corrupt.wav"):
        audio_info(corrupt)
    corrupt_mp3 = tmp_path / "corrupt.mp3"
    corrupt_mp3.write_bytes(b"\x00\x01not an mp3" * 50)
    with pytest.raises(AudioReadError, match="corrupt.mp3"):
        audio_read(corrupt_mp3)
    zero = write_wav(tmp_path / "zero.wav", torch.zeros(1, 0), 8000)
    with pytest.raises(AudioReadError, match="zero.wav.*zero length"):
        audio_info(zero)
    with pytest.raises(AudioReadError, match="zero.wav"):
        audio_read(zero)


def test_peak_normalisation() -> None:
    wav = sine(0.2, 8000, amplitude=0.1)
    out = normalize_audio(wav, strategy="peak", peak_clip_headroom_db=1.0)
    assert out.abs().max().item() == pytest.approx(10 ** (-1 / 20), rel=1e-5)


def test_clip_normalisation() -> None:
    wav = sine(0.2, 8000, amplitude=2.0)
    out = normalize_audio(wav, strategy="clip", peak_clip_headroom_db=6.0)
    level = 10 ** (-6 / 20)
    assert out.abs().max().item() == pytest.approx(level, rel=1e-6)
    quiet = sine(0.2, 8000, amplitude=0.1)
    assert torch.equal(normalize_audio(quiet, strategy="clip"), quiet)


def test_rms_normalisation_and_clipping() -> None:
    wav = sine(0.5, 8000, amplitude=0.01)
    out = normalize_audio(wav, strategy="rms", rms_headroom_db=18.0)
    assert out.pow(2).mean().sqrt().item() == pytest.approx(10 ** (-18 / 20), rel=1e-4)
    loud = normalize_audio(wav, strategy="rms", rms_headroom_db=0.0)  # sine peak would be 1.41
    assert loud.abs().max().item() <= 1.0


def test_loudness_reference_and_normalisation() -> None:
    # BS.1770: a full-scale 997 Hz sine in one channel reads -3.01 LUFS.
    sr = 48000
    assert loudness(sine(2.0, sr, freq=997, amplitude=1.0), sr) == pytest.approx(-3.01, abs=0.1)
    quiet = sine(2.0, 32000, freq=440, amplitude=0.05)
    out = normalize_audio(quiet, strategy="loudness", loudness_headroom_db=14.0, sample_rate=32000)
    assert loudness(out, 32000) == pytest.approx(-14.0, abs=0.05)
    # A 40 Hz tone is attenuated by the K-weighting high pass (~ -3 dB at 38 Hz).
    assert loudness(sine(2.0, sr, freq=40, amplitude=1.0), sr) < -5.0


def test_loudness_write_round_trip(tmp_path: Path) -> None:
    sr = 16000
    out = audio_write(tmp_path / "l.wav", sine(1.0, sr, amplitude=0.01), sr, strategy="loudness",
                      loudness_headroom_db=20.0)
    back, _ = audio_read(out)
    assert loudness(back, sr) == pytest.approx(-20.0, abs=0.1)


def test_unknown_strategy() -> None:
    with pytest.raises(ValueError, match="strategy"):
        normalize_audio(sine(0.1, 8000), strategy="median")


def test_convert_audio_channels_and_rate() -> None:
    stereo = torch.stack([torch.ones(1000), -torch.ones(1000) * 0.5])
    mono = convert_audio(stereo, 8000, 8000, 1)
    assert mono.shape == (1, 1000) and torch.allclose(mono, torch.full((1, 1000), 0.25))
    up = convert_audio(mono, 8000, 8000, 2)
    assert up.shape == (2, 1000) and torch.equal(up[0], up[1])
    batched = convert_audio(sine(1.0, 16000, freq=440).repeat(3, 1)[None], 16000, 32000, 1)
    assert batched.shape == (1, 1, 32000)
    # Resampling keeps a low tone's amplitude and frequency.
    tone = convert_audio(sine(1.0, 44100, freq=440, amplitude=0.5), 44100, 32000, 1)[0]
    assert tone.shape[-1] == 32000
    reference = sine(1.0, 32000, freq=440, amplitude=0.5)[0]
    assert (tone[1000:-1000] - reference[1000:-1000]).abs().max() < 1e-2
    with pytest.raises(ValueError, match="channels"):
        convert_audio(torch.zeros(2, 10), 8000, 8000, 3)


def test_stereo_to_mono_is_mean_in_dataset_sense() -> None:
    wav = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert torch.allclose(convert_audio(wav, 1, 1, 1), torch.tensor([[0.5, 0.5]]))
    assert not math.isnan(loudness(torch.zeros(1, 100), 8000))
