"""Audio file I/O: probe, seek-and-read, write with normalisation, and format conversion.

soundfile (libsndfile) handles the formats it can seek in exactly (wav, flac, ogg, aiff, ...);
PyAV handles everything else (mp3, m4a/aac, opus, ...). Every reader error is re-raised as
`AudioReadError` naming the file.

Shapes: `C` channels, `N` samples.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import julius
import numpy as np
import soundfile as sf
import torch

logger = logging.getLogger(__name__)

# Formats that libsndfile seeks in sample-exactly; everything else goes through PyAV.
SOUNDFILE_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".aiff", ".aif", ".au", ".w64", ".rf64"})
AUDIO_EXTENSIONS = SOUNDFILE_EXTENSIONS | frozenset({".mp3", ".m4a", ".aac", ".opus", ".mp4", ".webm"})
NORMALIZE_STRATEGIES = ("peak", "clip", "rms", "loudness")
_AV_PREROLL_S = 0.2


class AudioReadError(RuntimeError):
    """An audio file is missing, corrupt, empty or cannot be decoded."""


@dataclass(frozen=True)
class AudioFileInfo:
    """Header information of an audio file.

    Attributes:
        sample_rate: samples per second.
        frames: number of samples per channel (estimated from the container for compressed files).
        channels: number of channels.
        duration: length in seconds.
    """

    sample_rate: int
    frames: int
    channels: int
    duration: float


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise AudioReadError(f"Audio file {path} does not exist; check the path (or the manifest).")
    if path.is_dir():
        raise AudioReadError(f"Audio path {path} is a directory, expected a file.")
    if path.stat().st_size == 0:
        raise AudioReadError(f"Audio file {path} is empty (0 bytes); re-export or remove it.")


def _uses_soundfile(path: Path) -> bool:
    return path.suffix.lower() in SOUNDFILE_EXTENSIONS


def _av_info(path: Path) -> AudioFileInfo:
    import av

    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise AudioReadError(f"{path} has no audio stream.")
        stream = container.streams.audio[0]
        sample_rate = int(stream.codec_context.sample_rate or stream.rate)
        channels = int(stream.codec_context.channels)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
    return AudioFileInfo(sample_rate, int(round(duration * sample_rate)), channels, duration)


def audio_info(path: str | Path) -> AudioFileInfo:
    """Read sample rate, length and channel count from the header, without decoding the audio."""
    path = Path(path)
    _check_exists(path)
    try:
        if _uses_soundfile(path):
            info = sf.info(str(path))
            result = AudioFileInfo(int(info.samplerate), int(info.frames), int(info.channels),
                                   info.frames / info.samplerate)
        else:
            result = _av_info(path)
    except AudioReadError:
        raise
    except Exception as exc:  # libsndfile and ffmpeg raise many unrelated types
        raise AudioReadError(f"Cannot read the header of audio file {path}: {exc}") from exc
    if result.frames <= 0 or result.sample_rate <= 0:
        raise AudioReadError(f"Audio file {path} contains no samples (zero length).")
    return result


def _sf_read(path: Path, seek_time: float, duration: float) -> tuple[np.ndarray, int]:
    with sf.SoundFile(str(path)) as f:
        sr = f.samplerate
        start = int(round(seek_time * sr))
        if start > 0:
            f.seek(min(start, f.frames))
        frames = int(round(duration * sr)) if duration > 0 else -1
        data = f.read(frames, dtype="float32", always_2d=True)  # [N, C]
    return data.T, sr


def _frame_to_array(frame) -> np.ndarray:
    """Decoded PyAV frame -> float32 `[C, n]`."""
    arr = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if not frame.format.is_planar:
        arr = arr.reshape(-1, channels).T  # packed samples are interleaved: [1, n*C] -> [C, n]
    if np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
    return arr.astype(np.float32, copy=False)


def _av_read(path: Path, seek_time: float, duration: float) -> tuple[np.ndarray, int]:
    import av

    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise AudioReadError(f"{path} has no audio stream.")
        stream = container.streams.audio[0]
        sr = int(stream.codec_context.sample_rate)
        # Timestamps are offset by the stream start (e.g. the encoder delay of mp3).
        origin = stream.start_time or 0
        if seek_time > _AV_PREROLL_S:
            # Land a little early: frames right after a seek decode wrongly (mp3 bit reservoir,
            # aac overlap); the exact start is trimmed below using frame timestamps.
            target = int((seek_time - _AV_PREROLL_S) / stream.time_base) + origin
            container.seek(target, stream=stream, backward=True)
        start = int(round(seek_time * sr))
        wanted = int(round(duration * sr)) if duration > 0 else None
        chunks: list[np.ndarray] = []
        position: int | None = None  # sample index of the first decoded sample kept so far
        collected = 0
        for frame in container.decode(stream):
            arr = _frame_to_array(frame)
            frame_start = None
            if frame.pts is not None:
                frame_start = int(round(float((frame.pts - origin) * frame.time_base) * sr))
            if position is None:
                position = frame_start if frame_start is not None else 0
                skip = max(0, start - position)
                if skip >= arr.shape[1]:
                    position = None
                    continue
                arr = arr[:, skip:]
                position += skip
            chunks.append(arr)
            collected += arr.shape[1]
            if wanted is not None and collected >= wanted:
                break
    if not chunks:
        channels = int(stream.codec_context.channels) or 1
        return np.zeros((channels, 0), dtype=np.float32), sr
    data = np.concatenate(chunks, axis=1)
    if wanted is not None:
        data = data[:, :wanted]
    return data, sr


def audio_read(path: str | Path, seek_time: float = 0.0, duration: float = -1.0,
               pad: bool = False) -> tuple[torch.Tensor, int]:
    """Read `duration` seconds (all if < 0) starting at `seek_time`.

    Args:
        path: audio file.
        seek_time: start of the segment in seconds.
        duration: length to read in seconds; negative reads to the end.
        pad: zero-pad at the end when the file ends before `seek_time + duration`.

    Returns:
        (wav `[C, N]` float32 in [-1, 1], sample_rate).
    """
    path = Path(path)
    _check_exists(path)
    if seek_time < 0:
        raise ValueError(f"seek_time must be >= 0, got {seek_time} for {path}.")
    try:
        if _uses_soundfile(path):
            data, sr = _sf_read(path, seek_time, duration)
        else:
            data, sr = _av_read(path, seek_time, duration)
    except AudioReadError:
        raise
    except Exception as exc:
        raise AudioReadError(f"Cannot decode audio file {path}: {exc}") from exc
    wav = torch.from_numpy(np.ascontiguousarray(data))
    if wav.shape[-1] == 0 and seek_time == 0:
        raise AudioReadError(f"Audio file {path} contains no samples (zero length).")
    if pad and duration > 0:
        target = int(round(duration * sr))
        if wav.shape[-1] < target:
            wav = torch.nn.functional.pad(wav, (0, target - wav.shape[-1]))
    return wav, sr


def convert_audio_channels(wav: torch.Tensor, channels: int) -> torch.Tensor:
    """Change `[..., C, N]` to `[..., channels, N]`: mean for a mono mix, repeat mono to N."""
    src = wav.shape[-2]
    if src == channels:
        return wav
    if channels == 1:
        return wav.mean(dim=-2, keepdim=True)
    if src == 1:
        return wav.expand(*wav.shape[:-2], channels, wav.shape[-1]).contiguous()
    if src > channels:
        return wav[..., :channels, :]
    raise ValueError(f"Cannot convert {src} audio channels to {channels}; "
                     "only mono<->N and dropping extra channels are supported.")


def convert_audio(wav: torch.Tensor, from_rate: float, to_rate: float, to_channels: int) -> torch.Tensor:
    """Convert `[..., C, N]` audio to `to_channels` channels at `to_rate` (julius resampling)."""
    wav = convert_audio_channels(wav, to_channels)
    if int(from_rate) != int(to_rate):
        wav = julius.resample_frac(wav, int(from_rate), int(to_rate))
    return wav


def _biquad_response(b: list[float], a: list[float], n_fft: int) -> torch.Tensor:
    """Complex frequency response of a biquad on the `rfft` grid of size `n_fft`."""
    w = torch.linspace(0, math.pi, n_fft // 2 + 1, dtype=torch.float64)
    z1 = torch.exp(-1j * w)
    num = b[0] + b[1] * z1 + b[2] * z1 * z1
    den = a[0] + a[1] * z1 + a[2] * z1 * z1
    return num / den


def _k_weighting(sample_rate: int, n_fft: int) -> torch.Tensor:
    """ITU-R BS.1770 K-weighting (high shelf then high pass) for any sample rate.

    The bilinear-transform design below reproduces the standard's 48 kHz coefficients.
    """
    k = math.tan(math.pi * 1681.974450955533 / sample_rate)
    q = 0.7071752369554196
    vh = 10 ** (3.999843853973347 / 20)
    vb = vh ** 0.4996667741545416
    a0 = 1 + k / q + k * k
    shelf_b = [(vh + vb * k / q + k * k) / a0, 2 * (k * k - vh) / a0, (vh - vb * k / q + k * k) / a0]
    shelf_a = [1.0, 2 * (k * k - 1) / a0, (1 - k / q + k * k) / a0]
    k = math.tan(math.pi * 38.13547087602444 / sample_rate)
    q = 0.5003270373238773
    a0 = 1 + k / q + k * k
    hp_b = [1.0, -2.0, 1.0]
    hp_a = [1.0, 2 * (k * k - 1) / a0, (1 - k / q + k * k) / a0]
    return _biquad_response(shelf_b, shelf_a, n_fft) * _biquad_response(hp_b, hp_a, n_fft)


def loudness(wav: torch.Tensor, sample_rate: int) -> float:
    """Integrated loudness (LUFS) of `[C, N]` audio: K-weighting, 400 ms blocks, BS.1770 gating."""
    x = wav.detach().to(torch.float64)
    if x.dim() == 1:
        x = x[None]
    n = x.shape[-1]
    # Filtering in the frequency domain; the padding holds the IIR tail (which decays in < 0.5 s).
    n_fft = 1 << int(math.ceil(math.log2(n + sample_rate // 2 + 1)))
    filtered = torch.fft.irfft(torch.fft.rfft(x, n_fft) * _k_weighting(sample_rate, n_fft), n_fft)[:, :n]
    block, hop = int(0.4 * sample_rate), int(0.1 * sample_rate)
    if n < block:
        power = filtered.pow(2).mean(-1, keepdim=True)  # [C, 1]
    else:
        power = filtered.pow(2).unfold(-1, block, hop).mean(-1)  # [C, n_blocks]
    block_power = power.sum(0)  # channel weights are 1 for L/R/C (surround is not supported)
    block_lufs = -0.691 + 10 * torch.log10(block_power.clamp_min(1e-20))
    gated = block_power[block_lufs > -70.0]
    if gated.numel() == 0:
        return -70.0
    relative = -0.691 + 10 * math.log10(gated.mean().item()) - 10.0
    gated = block_power[(block_lufs > -70.0) & (block_lufs > relative)]
    return -0.691 + 10 * math.log10(gated.mean().item())


def normalize_audio(wav: torch.Tensor, normalize: bool = True, strategy: str = "peak",
                    peak_clip_headroom_db: float = 1.0, rms_headroom_db: float = 18.0,
                    loudness_headroom_db: float = 14.0, loudness_compressor: bool = False,
                    sample_rate: int | None = None, log_clipping: bool = False,
                    stem_name: str | None = None) -> torch.Tensor:
    """Scale `[C, N]` audio by a strategy, then keep it in [-1, 1].

    Strategies: `peak` scales the peak to `-peak_clip_headroom_db` dBFS; `clip` clamps to that
    level without scaling; `rms` scales the RMS to `-rms_headroom_db` dBFS; `loudness` scales the
    integrated loudness to `-loudness_headroom_db` LUFS (needs `sample_rate`). After `rms` and
    `loudness`, samples beyond full scale are clamped (or soft-clipped with tanh when
    `loudness_compressor`). With `normalize=False`, audio is only clamped to [-1, 1].
    """
    eps = 1e-9
    if strategy not in NORMALIZE_STRATEGIES:
        raise ValueError(f"Unknown normalisation strategy {strategy!r}; expected one of {NORMALIZE_STRATEGIES}.")
    if not normalize:
        out = wav
    elif strategy == "peak":
        out = wav * (10 ** (-peak_clip_headroom_db / 20) / wav.abs().max().clamp_min(eps))
    elif strategy == "clip":
        level = 10 ** (-peak_clip_headroom_db / 20)
        out = wav.clamp(-level, level)
    elif strategy == "rms":
        rms = wav.pow(2).mean().sqrt().clamp_min(eps)
        out = wav * (10 ** (-rms_headroom_db / 20) / rms)
    else:
        if sample_rate is None:
            raise ValueError("strategy='loudness' needs sample_rate.")
        gain_db = -loudness_headroom_db - loudness(wav, sample_rate)
        out = wav * 10 ** (gain_db / 20)
        if loudness_compressor:
            out = torch.tanh(out)
    peak = out.abs().max().item() if out.numel() else 0.0
    if peak > 1.0:
        if log_clipping:
            logger.warning("Clipping %s: peak %.3f after '%s' normalisation.", stem_name or "audio", peak, strategy)
        out = out.clamp(-1.0, 1.0)
    return out


def audio_write(path: str | Path, wav: torch.Tensor, sample_rate: int, normalize: bool = True,
                strategy: str = "peak", peak_clip_headroom_db: float = 1.0, rms_headroom_db: float = 18.0,
                loudness_headroom_db: float = 14.0, loudness_compressor: bool = False,
                log_clipping: bool = True, subtype: str | None = None,
                make_parent_dir: bool = True) -> Path:
    """Normalise and write `[C, N]` (or `[N]`) audio; the format comes from the suffix (`.wav` if none).

    Returns:
        The path written. wav is 16-bit PCM unless `subtype` says otherwise (e.g. 'FLOAT').
    """
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".wav")
    if wav.dim() == 1:
        wav = wav[None]
    if wav.dim() != 2:
        raise ValueError(f"audio_write expects [C, N] audio, got shape {tuple(wav.shape)} for {path}.")
    if not torch.is_floating_point(wav):
        raise ValueError(f"audio_write expects float audio, got {wav.dtype} for {path}.")
    wav = normalize_audio(wav.detach().cpu().float(), normalize, strategy, peak_clip_headroom_db,
                          rms_headroom_db, loudness_headroom_db, loudness_compressor,
                          sample_rate=sample_rate, log_clipping=log_clipping, stem_name=str(path))
    suffix = path.suffix.lower()
    if subtype is None and suffix in (".wav", ".flac"):
        subtype = "PCM_16"
    if make_parent_dir:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        sf.write(str(path), wav.numpy().T, int(sample_rate), subtype=subtype)
    except Exception as exc:
        raise ValueError(f"Cannot write audio file {path} ({suffix} with subtype {subtype}): {exc}") from exc
    return path
