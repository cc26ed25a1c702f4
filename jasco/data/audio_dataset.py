"""Audio manifests (one JSON object per line) and a segment-sampling audio dataset.

Manifest: `data.jsonl` or `data.jsonl.gz`, each line
`{"path", "duration", "sample_rate", "amplitude", "weight", "info_path", ...}`; see
docs/DATA_FORMATS.md. Build one with `python -m jasco.data.audio_dataset ROOT OUT.jsonl`.

Shapes: `B` batch, `C` channels, `N` samples.
"""
from __future__ import annotations

import argparse
import gzip
import json
import logging
import math
import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from jasco.data.audio import AUDIO_EXTENSIONS, AudioReadError, audio_info, audio_read, convert_audio

logger = logging.getLogger(__name__)

MANIFEST_NAMES = ("data.jsonl", "data.jsonl.gz")
REQUIRED_FIELDS = ("path", "duration", "sample_rate")
# Optional manifest fields holding file paths: resolved like `path` when stored relative.
PATH_FIELDS = ("path", "info_path", "chords_path", "salience_path", "drums_path", "drum_codes_path", "latents_path")
# Side files written next to the audio by our pipelines; never training examples themselves.
SIDE_STEM_MARKERS = (".drums",)


class ManifestError(ValueError):
    """A manifest file or one of its lines is invalid."""


@dataclass
class AudioMeta:
    """One manifest line: an audio file and what the datasets need to know about it.

    Attributes:
        path: audio file (absolute once loaded).
        duration: length in seconds.
        sample_rate: native sample rate.
        amplitude: peak amplitude if measured, else None.
        weight: sampling weight (None = 1).
        info_path: `.json` sidecar with music metadata, if any.
        extra: every other field of the line (e.g. `chords_path`, `latents_path`), kept verbatim.
    """

    path: str
    duration: float
    sample_rate: int
    amplitude: float | None = None
    weight: float | None = None
    info_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict, source: str | Path | None = None, line: int | None = None) -> "AudioMeta":
        """Validate and build from a manifest line; errors name `source` and `line`."""
        where = f"{source}, line {line}" if source is not None else "manifest entry"
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: expected a JSON object, got {type(data).__name__}.")
        for name in REQUIRED_FIELDS:
            if data.get(name) is None:
                raise ManifestError(f"{where}: missing required field '{name}' "
                                    f"(every line needs {', '.join(REQUIRED_FIELDS)}).")
        try:
            duration = float(data["duration"])
            sample_rate = int(data["sample_rate"])
            amplitude = None if data.get("amplitude") is None else float(data["amplitude"])
            weight = None if data.get("weight") is None else float(data["weight"])
        except (TypeError, ValueError) as exc:
            raise ManifestError(f"{where}: a numeric field has a non-numeric value ({exc}).") from exc
        if duration <= 0 or sample_rate <= 0:
            raise ManifestError(f"{where}: duration and sample_rate must be > 0 (file {data['path']}).")
        if weight is not None and weight < 0:
            raise ManifestError(f"{where}: weight must be >= 0, got {weight}.")
        known = {f.name for f in fields(cls)} - {"extra"}
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(path=str(data["path"]), duration=duration, sample_rate=sample_rate, amplitude=amplitude,
                   weight=weight, info_path=data.get("info_path"), extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """The manifest line (extra fields flattened in)."""
        out: dict[str, Any] = {"path": self.path, "duration": self.duration, "sample_rate": self.sample_rate,
                               "amplitude": self.amplitude, "weight": self.weight, "info_path": self.info_path}
        out.update(self.extra)
        return out

    def get_path(self, name: str) -> str | None:
        """A path field (`info_path` or an extra such as `chords_path`), or None."""
        if name == "path":
            return self.path
        if name == "info_path":
            return self.info_path
        value = self.extra.get(name)
        return None if value is None else str(value)


def _map_paths(meta: AudioMeta, fn) -> AudioMeta:
    data = meta.to_dict()
    for name in PATH_FIELDS:
        if data.get(name) is not None:
            data[name] = fn(str(data[name]))
    return AudioMeta.from_dict(data)


def _manifest_file(path_or_dir: str | Path) -> Path:
    path = Path(path_or_dir)
    if path.is_dir():
        for name in MANIFEST_NAMES:
            if (path / name).exists():
                return path / name
        raise ManifestError(f"No manifest in directory {path}: expected one of {', '.join(MANIFEST_NAMES)}.")
    if not path.exists():
        raise ManifestError(f"Manifest {path} does not exist; build one with "
                            "`python -m jasco.data.audio_dataset ROOT OUT.jsonl`.")
    return path


def load_manifest(path_or_dir: str | Path) -> list[AudioMeta]:
    """Read a `.jsonl`/`.jsonl.gz` manifest (or the `data.jsonl[.gz]` inside a directory).

    Relative paths are resolved against the manifest file's directory.
    """
    path = _manifest_file(path_or_dir)
    base = path.parent.resolve()
    opener = gzip.open if path.name.endswith(".gz") else open
    metas = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            lines = f.readlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"Cannot read manifest {path}: {exc}") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path}, line {number}: invalid JSON ({exc.msg}).") from exc
        meta = AudioMeta.from_dict(data, source=path, line=number)
        metas.append(_map_paths(meta, lambda p: p if Path(p).is_absolute() else os.path.normpath(base / p)))
    return metas


def save_manifest(path: str | Path, metas: list[AudioMeta], relative: bool = False) -> Path:
    """Write metas as a manifest (gzip when the name ends in `.gz`).

    Args:
        path: output file.
        metas: entries to write (relative paths in them are taken relative to the working directory).
        relative: store paths relative to the manifest's directory (portable datasets) instead of absolute.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.parent.resolve()

    def fix(p: str) -> str:
        absolute = Path(p).resolve()
        if not relative:
            return str(absolute)
        try:
            return str(absolute.relative_to(base))
        except ValueError:
            return os.path.relpath(absolute, base)

    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        for meta in metas:
            f.write(json.dumps(_map_paths(meta, fix).to_dict()) + "\n")
    return path


def is_side_file(path: Path) -> bool:
    """True for our own side stems such as `song.drums.wav`."""
    return any(Path(path.stem).suffix == marker for marker in SIDE_STEM_MARKERS)


def find_audio_files(root: str | Path) -> list[Path]:
    """All audio files under root (sorted), skipping side stems (`*.drums.*`) and non-audio files."""
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"Audio root {root} is not a directory.")
    return sorted(p for p in root.rglob("*")
                  if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS and not is_side_file(p))


def build_meta(path: str | Path, compute_amplitude: bool = False) -> AudioMeta:
    """Probe one audio file; `info_path` is its `.json` sidecar when present."""
    path = Path(path).resolve()
    info = audio_info(path)
    amplitude = None
    if compute_amplitude:
        wav, _ = audio_read(path)
        amplitude = float(wav.abs().max())
    sidecar = path.with_suffix(".json")
    return AudioMeta(path=str(path), duration=info.duration, sample_rate=info.sample_rate,
                     amplitude=amplitude, info_path=str(sidecar) if sidecar.exists() else None)


def build_manifest(root: str | Path, workers: int = 4, skip_bad: bool = False,
                   compute_amplitude: bool = False, progress: bool = True) -> list[AudioMeta]:
    """Probe every audio file under root in parallel.

    Raises:
        AudioReadError: on the first unreadable file, unless `skip_bad` (then it is logged and skipped).
    """
    from tqdm import tqdm

    files = find_audio_files(root)
    metas: list[AudioMeta] = []
    # Probing is I/O and C-library bound, so threads parallelise it without pickling overhead.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(build_meta, p, compute_amplitude) for p in files]
        for path, future in tqdm(zip(files, futures), total=len(files), disable=not progress,
                                 desc="probing audio", file=sys.stderr):
            try:
                metas.append(future.result())
            except AudioReadError as exc:
                if not skip_bad:
                    raise AudioReadError(f"{exc} (use --skip-bad to leave such files out)") from exc
                warnings.warn(f"Skipping unreadable audio file ({exc})")
    return metas


def main(argv: list[str] | None = None) -> int:
    """CLI: `python -m jasco.data.audio_dataset ROOT OUT.jsonl [--workers N] [--skip-bad] [--relative]`."""
    parser = argparse.ArgumentParser(description="Build a jasco audio manifest (jsonl) from a folder.")
    parser.add_argument("root", type=Path, help="folder scanned recursively for audio files")
    parser.add_argument("out", type=Path, help="manifest to write (.jsonl or .jsonl.gz)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable files with a warning")
    parser.add_argument("--relative", action="store_true",
                        help="store paths relative to the manifest's directory (default: absolute)")
    parser.add_argument("--amplitude", action="store_true", help="decode files to store their peak amplitude")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    try:
        metas = build_manifest(args.root, args.workers, args.skip_bad, args.amplitude, not args.no_progress)
    except (AudioReadError, ManifestError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    save_manifest(args.out, metas, relative=args.relative)
    print(f"Wrote {len(metas)} entries to {args.out}", file=sys.stderr)
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
