"""A segment-sampling audio dataset over a manifest (`jasco.data.manifest`).

Every file an item reads (the audio, and in subclasses its side files) is read under `reading`,
which turns a failure into a `BadTrackError` naming the track and the bad file; with
`skip_bad_files` the item is drawn again from another file instead (docs/DATA_FORMATS.md).

Shapes: `B` batch, `C` channels, `N` samples.
"""
from __future__ import annotations

import math
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from jasco.audio.convert import convert_audio
from jasco.audio.io import audio_info, audio_read
from jasco.data.manifest import MANIFEST_NAMES, AudioMeta, load_manifest

# What reading a bad file raises (decoders, numpy, json, our own readers): turned into BadTrackError.
# A short or corrupt file also surfaces as RuntimeError from torch (e.g. reshaping 0 samples).
DATA_ERRORS = (OSError, ValueError, RuntimeError, KeyError, EOFError, zipfile.BadZipFile)
SKIP_HINT = ("Fix or remove that file (or its manifest line), or set skip_bad_files=true "
             "(dataset.skip_bad_files in a training config) to skip such tracks with a warning.")


class BadTrackError(RuntimeError):
    """One track of a dataset cannot be used: its audio or one of its side files is bad.

    Attributes:
        track: the track's audio file (its manifest `path`).
        kind: what the bad file is (`audio`, `drum stem`, `chord file`, ...).
        path: the bad file itself.
        reason: what is wrong with it.
    """

    def __init__(self, track: str | Path, kind: str, path: str | Path, reason: str, hint: str = "") -> None:
        self.track, self.kind, self.path, self.reason = str(track), kind, str(path), reason
        named = "" if self.path == self.track else f" {path}"  # the audio file is the track itself
        super().__init__(f"Track {track}: bad {kind}{named}: {reason}" + (f" {hint}" if hint else ""))


class EmptyDatasetError(ValueError):
    """No file of the manifest is usable with the dataset's segment settings."""


@contextmanager
def reading(track: str | Path, kind: str, path: str | Path | None) -> Iterator[None]:
    """Context: any data error inside becomes a BadTrackError naming `track` and the file `path`."""
    try:
        yield
    except BadTrackError:
        raise
    except DATA_ERRORS as exc:
        raise BadTrackError(track, kind, path, f"{type(exc).__name__}: {exc}") from exc


def check_finite(wav: torch.Tensor, track: str | Path, kind: str, path: str | Path, seek_time: float) -> None:
    """Raise BadTrackError when `wav` holds NaN or inf (they would poison the loss silently)."""
    if torch.isfinite(wav.sum()):
        return  # NaN and inf propagate through a sum: one reduction, ~15x cheaper than isfinite(wav).all()
    bad = ~torch.isfinite(wav)
    if bad.any():
        raise BadTrackError(track, kind, path, f"{int(bad.sum())} non-finite values (NaN/inf) in the segment "
                                               f"at {seek_time:.2f} s.")


@dataclass
class SegmentInfo:
    """Where a returned segment comes from.

    Attributes:
        meta: the file's manifest entry.
        seek_time: start of the segment in the file, in seconds.
        n_frames: samples of real audio in the segment (before zero padding), at `sample_rate`.
        total_frames: samples of the returned segment (after padding).
        sample_rate: sample rate of the returned audio.
        channels: channels of the returned audio.
    """

    meta: AudioMeta
    seek_time: float
    n_frames: int
    total_frames: int
    sample_rate: int
    channels: int


class AudioDataset:
    """Fixed-length (or whole-file) audio segments sampled from a manifest, deterministically.

    With `shuffle`, item `index` of epoch `e` draws its file and seek time from a generator seeded
    with `shuffle_seed + index + num_samples * e`; files are drawn with probability proportional to
    duration (`sample_on_duration`) times weight (`sample_on_weight`). The seek time is uniform in
    `[0, duration - min_segment_ratio * segment_duration]`, so a segment holds at least that ratio
    of real audio; the rest is zero padding at the end (`pad`). Without `shuffle`, item i is file i
    read from its start. Subclasses may set `seek_step` (seconds) to snap seek times down to a grid.
    """

    seek_step: float | None = None

    def __init__(self, metas: list[AudioMeta], segment_duration: float | None = None, shuffle: bool = True,
                 num_samples: int = 10_000, sample_rate: int = 32000, channels: int = 1, pad: bool = True,
                 sample_on_duration: bool = True, sample_on_weight: bool = True, min_segment_ratio: float = 0.5,
                 max_read_retry: int = 10, return_info: bool = False, min_audio_duration: float | None = None,
                 max_audio_duration: float | None = None, shuffle_seed: int = 0,
                 permutation_on_files: bool = False, skip_bad_files: bool = False, read_audio: bool = True,
                 length_tolerance: float = 0.5, source: str | Path | None = None) -> None:
        """See the class docstring; the less obvious arguments:

        Args:
            skip_bad_files: on a bad track (audio or side file), warn and draw another file (up to
                `max_read_retry` attempts) instead of raising BadTrackError.
            read_audio: decode the audio. When False the item's wav is `[C, 0]` and its SegmentInfo
                comes from the manifest alone (for datasets whose audio is replaced by cached latents).
            length_tolerance: seconds a file may differ from its manifest `duration` before the track
                counts as bad (truncated file or wrong manifest).
            source: the manifest the metas come from, named by errors (`from_meta` sets it).
        """
        if segment_duration is not None and segment_duration <= 0:
            raise ValueError(f"segment_duration must be > 0 or None, got {segment_duration}.")
        if not 0 <= min_segment_ratio <= 1:
            raise ValueError(f"min_segment_ratio must be in [0, 1], got {min_segment_ratio}.")
        self.segment_duration = segment_duration
        self.shuffle = shuffle
        self.num_samples = num_samples
        self.sample_rate = sample_rate
        self.channels = channels
        self.pad = pad
        self.sample_on_duration = sample_on_duration
        self.sample_on_weight = sample_on_weight
        self.min_segment_ratio = min_segment_ratio
        self.max_read_retry = max_read_retry
        self.return_info = return_info
        self.shuffle_seed = shuffle_seed
        self.permutation_on_files = permutation_on_files
        self.skip_bad_files = skip_bad_files
        self.read_audio = read_audio
        self.length_tolerance = length_tolerance
        self.source = None if source is None else str(source)
        self.epoch = 0
        self.metas = self._filter(metas, min_audio_duration, max_audio_duration)
        self.sampling_probabilities = self._probabilities()

    @classmethod
    def from_meta(cls, path_or_dir: str | Path, **kwargs: Any) -> "AudioDataset":
        """Build from a manifest file or a directory holding `data.jsonl[.gz]`."""
        path = Path(path_or_dir)
        if path.is_dir():  # name the manifest file itself in errors
            path = next((path / name for name in MANIFEST_NAMES if (path / name).exists()), path)
        kwargs.setdefault("source", path)
        return cls(load_manifest(path_or_dir), **kwargs)

    def _filter(self, metas: list[AudioMeta], min_d: float | None, max_d: float | None) -> list[AudioMeta]:
        """Drop files too short for a segment or outside [min_d, max_d], with a warning naming them.

        Raises:
            EmptyDatasetError: no file is left; the message counts the dropped files and says why.
        """
        segment_min = 0.0 if self.segment_duration is None else self.segment_duration * self.min_segment_ratio
        min_len = segment_min if min_d is None else max(segment_min, min_d)
        too_short = [m for m in metas if m.duration < min_len]
        too_long = [m for m in metas if m.duration >= min_len and max_d is not None and m.duration > max_d]
        dropped = too_short + too_long
        kept = [m for m in metas if m.duration >= min_len and not (max_d is not None and m.duration > max_d)]
        if dropped:
            names = ", ".join(f"{m.path} ({m.duration:.2f}s)" for m in dropped[:20])
            more = f" and {len(dropped) - 20} more" if len(dropped) > 20 else ""
            warnings.warn(f"AudioDataset dropped {len(dropped)} file(s) outside the allowed duration "
                          f"[{min_len:.2f}s, {max_d if max_d is not None else 'inf'}]: {names}{more}")
        if not kept:
            raise EmptyDatasetError(self._empty_message(metas, too_short, too_long, min_len, segment_min, min_d, max_d))
        return kept

    def _empty_message(self, metas: list[AudioMeta], too_short: list[AudioMeta], too_long: list[AudioMeta],
                       min_len: float, segment_min: float, min_d: float | None, max_d: float | None) -> str:
        where = f"the manifest {self.source}" if self.source else "the manifest"
        if not metas:
            return (f"AudioDataset has no files: {where} has no entries. Build it with "
                    "`python -m jasco.prepare.manifest ROOT OUT.jsonl` (or `python -m jasco.prepare`).")
        reasons = []
        if too_short:
            longest = max(m.duration for m in too_short)
            rule = (f"min_segment_ratio {self.min_segment_ratio:g} x segment_duration {self.segment_duration:g} s"
                    if min_len == segment_min else f"min_audio_duration {min_d:g} s")
            reasons.append(f"{len(too_short)} shorter than {min_len:.2f} s (= {rule}; the longest of them "
                           f"lasts {longest:.2f} s)")
        if too_long:
            reasons.append(f"{len(too_long)} longer than max_audio_duration {max_d:g} s")
        fixes = []
        if too_short and min_len == segment_min:
            fixes.append("lower segment_duration or min_segment_ratio (each file must last at least "
                         "min_segment_ratio x segment_duration)")
        elif too_short:
            fixes.append("lower min_audio_duration")
        if too_long:
            fixes.append("raise max_audio_duration")
        fixes.append("or add longer files to the manifest")
        return (f"AudioDataset has no files left after duration filtering: all {len(metas)} file(s) of {where} "
                f"were dropped: {'; '.join(reasons)}. Fix: {', '.join(fixes)}.")

    def _probabilities(self) -> torch.Tensor:
        scores = torch.ones(len(self.metas), dtype=torch.float64)
        for i, meta in enumerate(self.metas):
            if self.sample_on_duration:
                scores[i] *= meta.duration
            if self.sample_on_weight and meta.weight is not None:
                scores[i] *= meta.weight
        if scores.sum() <= 0:
            raise ValueError("All sampling weights are zero; check the 'weight' fields of the manifest.")
        return scores / scores.sum()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; items are a deterministic function of (epoch, index)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples if self.shuffle else len(self.metas)

    def make_generator(self, index: int, salt: int = 0) -> torch.Generator:
        """The generator of item `index` in the current epoch (`salt` gives independent streams)."""
        rng = torch.Generator()
        rng.manual_seed(self.shuffle_seed + index + self.num_samples * self.epoch + salt * 1_000_003)
        return rng

    def _sample_file(self, index: int, rng: torch.Generator) -> AudioMeta:
        if self.permutation_on_files:
            # Each epoch visits files in a fresh order, one permutation per epoch.
            perm_rng = torch.Generator().manual_seed(self.shuffle_seed + self.epoch)
            perm = torch.randperm(len(self.metas), generator=perm_rng)
            return self.metas[int(perm[index % len(self.metas)])]
        return self.metas[int(torch.multinomial(self.sampling_probabilities, 1, generator=rng))]

    def expected_frames(self, meta: AudioMeta, seek_time: float) -> int:
        """Samples of real audio (at `sample_rate`) the manifest promises for a segment at `seek_time`."""
        seconds = max(0.0, meta.duration - seek_time)
        if self.segment_duration is not None:
            seconds = min(seconds, self.segment_duration)
        return int(round(seconds * self.sample_rate))

    def check_length(self, n_frames: int, expected: int, track: str, kind: str, path: str | Path,
                     seek_time: float, what: str = "the manifest") -> None:
        """Raise BadTrackError when `n_frames` real samples differ from `expected` by more than the tolerance."""
        if abs(n_frames - expected) <= self.length_tolerance * self.sample_rate:
            return
        found, wanted = n_frames / self.sample_rate, expected / self.sample_rate
        side = "shorter" if n_frames < expected else "longer"
        raise BadTrackError(track, kind, path, f"it is {side} than {what} says: {found:.2f} s of audio from "
                                               f"{seek_time:.2f} s where {what} promises {wanted:.2f} s "
                                               f"(tolerance {self.length_tolerance:g} s). A truncated or wrong "
                                               "file, a wrong sample rate in its header, or a wrong manifest "
                                               "duration (rebuild the manifest).")

    def check_duration(self, meta: AudioMeta, kind: str, path: str | Path) -> None:
        """Raise BadTrackError when the header of audio file `path` disagrees with the track's manifest duration.

        A header read only (no decoding): catches wrong manifest durations, truncated wav files and
        stems of another length or sample rate on the first draw, wherever the segment falls.
        """
        header = audio_info(path)
        if abs(header.duration - meta.duration) <= self.length_tolerance:
            return
        cause = ("A truncated file or a wrong manifest duration (rebuild the manifest)." if str(path) == meta.path else
                 "A truncated or wrong file, or one written with a wrong sample rate; rebuild it from the track.")
        raise BadTrackError(meta.path, kind, path, f"it lasts {header.duration:.2f} s ({header.sample_rate} Hz, "
                                                   f"{header.channels} channel(s)) by its header, but the manifest "
                                                   f"gives the track {meta.duration:.2f} s (tolerance "
                                                   f"{self.length_tolerance:g} s). {cause}")

    def _read(self, meta: AudioMeta, seek_time: float) -> tuple[torch.Tensor, SegmentInfo]:
        expected = self.expected_frames(meta, seek_time)
        target = expected if self.segment_duration is None else int(round(self.segment_duration * self.sample_rate))
        if not self.read_audio:
            # The audio is replaced by cached latents: the manifest alone says how long the segment is.
            wav = torch.zeros(self.channels, 0)
            return wav, SegmentInfo(meta=meta, seek_time=seek_time, n_frames=expected,
                                    total_frames=target if self.pad else expected,
                                    sample_rate=self.sample_rate, channels=self.channels)
        duration = -1.0 if self.segment_duration is None else self.segment_duration
        with reading(meta.path, "audio file", meta.path):
            self.check_duration(meta, "audio file", meta.path)
            wav, sr = audio_read(meta.path, seek_time, duration, pad=False)
            check_finite(wav, meta.path, "audio file", meta.path, seek_time)
            wav = convert_audio(wav, sr, self.sample_rate, self.channels)  # [C, n]
        if self.segment_duration is not None:
            wav = wav[..., :target]
        n_frames = wav.shape[-1]
        self.check_length(n_frames, expected, meta.path, "audio file", meta.path, seek_time)
        if self.segment_duration is not None and self.pad and n_frames < target:
            wav = torch.nn.functional.pad(wav, (0, target - n_frames))
        info = SegmentInfo(meta=meta, seek_time=seek_time, n_frames=n_frames, total_frames=wav.shape[-1],
                           sample_rate=self.sample_rate, channels=self.channels)
        return wav, info

    def load_item(self, index: int, meta: AudioMeta, seek_time: float) -> tuple[torch.Tensor, SegmentInfo]:
        """Everything item `index` reads from the track `meta` at `seek_time`; subclasses add side files.

        Raises:
            BadTrackError: the audio or a side file is bad (the message names the track and the file).
        """
        return self._read(meta, seek_time)

    def _draw(self, index: int, attempt: int, rng: torch.Generator) -> tuple[AudioMeta, float]:
        """File and seek time of attempt `attempt` of item `index`."""
        if self.shuffle and self.segment_duration is not None:
            meta = self._sample_file(index, rng)
            max_seek = max(0.0, meta.duration - self.segment_duration * self.min_segment_ratio)
            seek_time = float(torch.rand(1, generator=rng, dtype=torch.float64)) * max_seek
            if self.seek_step:
                seek_time = math.floor(seek_time / self.seek_step) * self.seek_step
            return meta, seek_time
        if self.shuffle:
            return self._sample_file(index, rng), 0.0
        # Item i is file i; when it is bad (skip_bad_files), the next files in order stand in for it.
        return self.metas[(index + attempt) % len(self.metas)], 0.0

    def get_segment(self, index: int) -> tuple[torch.Tensor, SegmentInfo]:
        """Item `index` as built by `load_item`: (wav `[C, N]`, info).

        A bad track raises BadTrackError, or with `skip_bad_files` is skipped with a warning naming
        the track and the bad file, and the item is drawn again (another file when shuffling, the
        next file otherwise), up to `max_read_retry` attempts.
        """
        rng = self.make_generator(index)
        errors: list[BadTrackError] = []
        attempts = max(1, self.max_read_retry) if self.skip_bad_files else 1
        if not self.shuffle:
            attempts = min(attempts, len(self.metas))  # each file at most once
        for attempt in range(attempts):
            meta, seek_time = self._draw(index, attempt, rng)
            try:
                return self.load_item(index, meta, seek_time)
            except BadTrackError as exc:
                if not self.skip_bad_files:
                    raise BadTrackError(exc.track, exc.kind, exc.path, exc.reason, hint=SKIP_HINT) from exc
                warnings.warn(f"Skipping a bad track (skip_bad_files=true): {exc}")
                errors.append(exc)
        raise BadTrackError(errors[-1].track, errors[-1].kind, errors[-1].path, errors[-1].reason,
                            hint=f"Item {index}: every one of {len(errors)} attempt(s) hit a bad track "
                                 f"(skip_bad_files=true, max_read_retry={self.max_read_retry}); "
                                 "is most of the dataset bad?") from errors[-1]

    def __getitem__(self, index: int) -> torch.Tensor | tuple[torch.Tensor, SegmentInfo]:
        wav, info = self.get_segment(index)
        return (wav, info) if self.return_info else wav

    def collater(self, samples: list) -> torch.Tensor | tuple[torch.Tensor, list]:
        """Stack items into `[B, C, N]` (zero-padding to the longest for whole files), plus infos if returned."""
        if not samples:
            raise ValueError("collater got an empty batch.")
        with_info = isinstance(samples[0], tuple)
        wavs = [s[0] for s in samples] if with_info else list(samples)
        length = max(w.shape[-1] for w in wavs)
        batch = torch.stack([torch.nn.functional.pad(w, (0, length - w.shape[-1])) for w in wavs])
        if with_info:
            return batch, [s[1] for s in samples]
        return batch

