"""Audio manifests: one JSON object per line describing an audio file and its side files.

Manifest: `data.jsonl` or `data.jsonl.gz`, each line
`{"path", "duration", "sample_rate", "amplitude", "weight", "info_path", ...}`; see
docs/DATA_FORMATS.md. Build one with `python -m jasco.prepare.manifest ROOT OUT.jsonl`.
"""
from __future__ import annotations

import gzip
import json
import logging
import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from jasco.audio.io import AUDIO_EXTENSIONS, AudioReadError, audio_info, audio_read
from jasco.files import atomic_path

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
                            "`python -m jasco.prepare.manifest ROOT OUT.jsonl`.")
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

    The file is replaced atomically (a unique temp file, then a rename): a reader, or a second
    writer, never sees a half-written manifest.
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
    with atomic_path(path) as tmp, opener(tmp, "wt", encoding="utf-8") as f:
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
