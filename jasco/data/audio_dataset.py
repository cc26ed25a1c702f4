"""A segment-sampling audio dataset over a manifest (`jasco.data.manifest`).

Shapes: `B` batch, `C` channels, `N` samples.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from jasco.audio.convert import convert_audio
from jasco.audio.io import AudioReadError, audio_read
from jasco.data.manifest import AudioMeta, load_manifest


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
                 permutation_on_files: bool = False, skip_bad_files: bool = False) -> None:
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
        self.epoch = 0
        self.metas = self._filter(metas, min_audio_duration, max_audio_duration)
        if not self.metas:
            raise ValueError("AudioDataset has no files left after duration filtering; "
                             "check the manifest, min/max_audio_duration and min_segment_ratio.")
        self.sampling_probabilities = self._probabilities()

    @classmethod
    def from_meta(cls, path_or_dir: str | Path, **kwargs: Any) -> "AudioDataset":
        """Build from a manifest file or a directory holding `data.jsonl[.gz]`."""
        return cls(load_manifest(path_or_dir), **kwargs)

    def _filter(self, metas: list[AudioMeta], min_d: float | None, max_d: float | None) -> list[AudioMeta]:
        kept, dropped = [], []
        min_len = 0.0 if self.segment_duration is None else self.segment_duration * self.min_segment_ratio
        if min_d is not None:
            min_len = max(min_len, min_d)
        for meta in metas:
            too_long = max_d is not None and meta.duration > max_d
            (dropped if meta.duration < min_len or too_long else kept).append(meta)
        if dropped:
            names = ", ".join(f"{m.path} ({m.duration:.2f}s)" for m in dropped[:20])
            more = f" and {len(dropped) - 20} more" if len(dropped) > 20 else ""
            warnings.warn(f"AudioDataset dropped {len(dropped)} file(s) outside the allowed duration "
                          f"[{min_len:.2f}s, {max_d if max_d is not None else 'inf'}]: {names}{more}")
        return kept

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

    def _read(self, meta: AudioMeta, seek_time: float) -> tuple[torch.Tensor, SegmentInfo]:
        duration = -1.0 if self.segment_duration is None else self.segment_duration
        wav, sr = audio_read(meta.path, seek_time, duration, pad=False)
        wav = convert_audio(wav, sr, self.sample_rate, self.channels)  # [C, n]
        n_frames = wav.shape[-1]
        if self.segment_duration is not None:
            target = int(round(self.segment_duration * self.sample_rate))
            wav = wav[..., :target]
            n_frames = wav.shape[-1]
            if self.pad and n_frames < target:
                wav = torch.nn.functional.pad(wav, (0, target - n_frames))
        info = SegmentInfo(meta=meta, seek_time=seek_time, n_frames=n_frames, total_frames=wav.shape[-1],
                           sample_rate=self.sample_rate, channels=self.channels)
        return wav, info

    def get_segment(self, index: int) -> tuple[torch.Tensor, SegmentInfo]:
        """Read item `index`: (wav `[C, N]`, SegmentInfo); retries other files when `skip_bad_files`."""
        rng = self.make_generator(index)
        errors: list[str] = []
        for _ in range(max(1, self.max_read_retry)):
            if self.shuffle and self.segment_duration is not None:
                meta = self._sample_file(index, rng)
                max_seek = max(0.0, meta.duration - self.segment_duration * self.min_segment_ratio)
                seek_time = float(torch.rand(1, generator=rng, dtype=torch.float64)) * max_seek
                if self.seek_step:
                    seek_time = math.floor(seek_time / self.seek_step) * self.seek_step
            elif self.shuffle:
                meta, seek_time = self._sample_file(index, rng), 0.0
            else:
                meta, seek_time = self.metas[index], 0.0
            try:
                return self._read(meta, seek_time)
            except AudioReadError as exc:
                if not self.skip_bad_files:
                    raise AudioReadError(f"{exc} (set skip_bad_files=True to sample another file instead)") from exc
                warnings.warn(f"Sampling another file instead of an unreadable one ({exc})")
                errors.append(str(exc))
                if not self.shuffle:
                    break  # item i is always file i: retrying cannot help
        raise AudioReadError(f"Could not read a segment for item {index} after {len(errors)} attempt(s); "
                             f"last error: {errors[-1]}")

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

