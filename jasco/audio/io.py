"""Audio file I/O: probe, seek-and-read, write with normalisation, and format conversion.

soundfile (libsndfile) handles the formats it can seek in exactly (wav, flac, ogg, aiff, ...);
PyAV handles everything else (mp3, m4a/aac, opus, ...). Every reader error is re-raised as
`AudioReadError` naming the file.

Shapes: `C` channels, `N` samples.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from jasco.audio.loudness import normalize_audio

logger = logging.getLogger(__name__)

# Formats that libsndfile seeks in sample-exactly; everything else goes through PyAV.
SOUNDFILE_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".aiff", ".aif", ".au", ".w64", ".rf64"})
AUDIO_EXTENSIONS = SOUNDFILE_EXTENSIONS | frozenset({".mp3", ".m4a", ".aac", ".opus", ".mp4", ".webm"})
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
