"""Track discovery for `jasco.prepare`: probe and validate audio, give each track a stable id and split.

Probing decodes each file once: non-finite samples are an error; samples beyond full scale,
clipping, silence and a header length that disagrees with the decoded length are warnings (the
decoded length is what the manifests use). The track list is cached in `OUT/tracks.jsonl` (one
JSON object per track, probe warnings included); a file already probed with the same size and
modification time is not probed again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from jasco.audio.io import AUDIO_EXTENSIONS, audio_info, audio_read
from jasco.data.audio_dataset import SegmentInfo
from jasco.data.manifest import AudioMeta, ManifestError, find_audio_files, load_manifest
from jasco.data.music_dataset import MusicInfo, SidecarError
from jasco.files import write_text_atomic

logger = logging.getLogger(__name__)
TRACKS_FILE = "tracks.jsonl"
SILENCE_PEAK = 1e-4  # peak amplitude below which a track counts as silent
FULL_SCALE = 0.999  # |sample| at or above this counts as clipped
CLIPPED_FRACTION = 1e-3  # warn when more than this fraction of samples is clipped


def length_tolerance(duration: float) -> float:
    """How far (s) two lengths of one track may disagree before prepare reports it: 0.1 s or 1 %."""
    return max(0.1, 0.01 * duration)


class PrepareInputError(ValueError):
    """An input of one track (audio or side file) is invalid; `file` names the file at fault."""

    def __init__(self, message: str, file: str | Path | None = None) -> None:
        super().__init__(message)
        self.file = None if file is None else str(file)
# Side fields an input manifest may carry; prepare reuses and validates them.
INPUT_SIDE_FIELDS = ("info_path", "chords_path", "salience_path", "drums_path")


@dataclass
class Track:
    """One audio file to prepare.

    Attributes:
        id: file-name-safe unique id (relative path without suffix, `/` -> `__`).
        path: absolute audio path.
        duration, sample_rate, amplitude: as probed (amplitude = peak, decoded once).
        split: `train` or `valid` (a stable hash of the id; the manifests may move one track so that
            neither split is empty).
        size, mtime: of the audio file when probed (a change triggers a new probe).
        sides: input side files (`info_path`, `chords_path`, ...) given by the input manifest.
        header_duration: the length its header declares (`duration` is the decoded length).
        channels: channel count.
        notes: probe warnings (clipping, silence, length mismatch), reported on every run.
    """

    id: str
    path: str
    duration: float
    sample_rate: int
    amplitude: float | None
    split: str = "train"
    size: int = 0
    mtime: float = 0.0
    sides: dict[str, str] = field(default_factory=dict)
    header_duration: float | None = None
    channels: int = 1
    notes: list[str] = field(default_factory=list)


def track_id(path: Path, base: Path) -> str:
    """Stable id from the path relative to `base` (the input root or the manifest's folder)."""
    try:
        rel = path.resolve().relative_to(base.resolve())
    except ValueError:
        rel = Path(path.name)
    text = rel.with_suffix("").as_posix().replace("/", "__")
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def split_of(track: str, valid_fraction: float) -> str:
    """`valid` for a stable hash fraction of ids, else `train` (adding tracks never moves others)."""
    digest = int(hashlib.sha1(track.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "valid" if digest < valid_fraction else "train"


def list_inputs(source: str | Path, exclude: str | Path | None = None
                ) -> tuple[list[tuple[Path, dict[str, str]]], Path]:
    """Audio files (with input side fields) from a folder or a manifest, and the base for ids.

    Args:
        source: an audio folder (scanned recursively) or a manifest (file, or folder holding one).
        exclude: a folder whose files are never inputs (the output folder, when inside `source`).

    Raises:
        ManifestError: the manifest is invalid, or there is no audio to prepare.
    """
    source = Path(source)
    if source.is_dir() and not any((source / n).exists() for n in ("data.jsonl", "data.jsonl.gz")):
        skip = Path(exclude).resolve() if exclude is not None else None
        files = [p for p in find_audio_files(source) if skip is None or skip not in p.resolve().parents]
        if not files:
            raise ManifestError(f"{source} holds no audio file (looked for {', '.join(sorted(AUDIO_EXTENSIONS))}, "
                                "recursively): give the folder of your music, or a manifest (.jsonl)")
        return [(p, {}) for p in files], source
    if source.is_file() and not source.name.endswith((".jsonl", ".jsonl.gz")):
        raise ManifestError(f"{source} is neither a folder nor a manifest (.jsonl / .jsonl.gz): give the folder "
                            "of your music or a manifest")
    metas = load_manifest(source)
    if not metas:
        raise ManifestError(f"manifest {source} has no entries: add one line per audio file")
    base = source if source.is_dir() else source.parent
    common = Path(os.path.commonpath([str(Path(m.path).parent) for m in metas])) if metas else base
    out = []
    for meta in metas:
        sides = {name: meta.get_path(name) for name in INPUT_SIDE_FIELDS if meta.get_path(name) is not None}
        out.append((Path(meta.path), sides))
    return out, common


def load_tracks(out_dir: Path) -> dict[str, Track]:
    """The cached track list of a previous run, by audio path (an unreadable cache is ignored: re-probe)."""
    path = out_dir / TRACKS_FILE
    if not path.exists():
        return {}
    known = {f.name for f in fields(Track)}
    tracks = {}
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                data = json.loads(line)
                track = Track(**{k: v for k, v in data.items() if k in known})
                tracks[track.path] = track
    except (OSError, ValueError, TypeError) as exc:
        logger.warning("ignoring the cached track list %s (%s): every file is probed again", path, exc)
        return {}
    return tracks


def save_tracks(out_dir: Path, tracks: list[Track]) -> None:
    """Write the track list atomically (unique temp file, then rename)."""
    write_text_atomic(out_dir / TRACKS_FILE, "".join(json.dumps(asdict(t)) + "\n" for t in tracks))


def input_sides(audio: Path, sides: dict[str, str]) -> dict[str, str]:
    """The side files of an input: those its manifest line names, plus a `<stem>.json` sidecar next to it."""
    sides = dict(sides)
    sidecar = Path(audio).with_suffix(".json")
    if sidecar.is_file():
        sides.setdefault("info_path", str(sidecar))
    return sides


def check_sidecar(path: str | Path) -> None:
    """Validate a `.json` metadata sidecar as the dataset will read it.

    Raises:
        PrepareInputError: unreadable, not JSON, not an object, or a wrongly typed value (names the file).
    """
    meta = AudioMeta(path=str(path), duration=1.0, sample_rate=1)
    try:
        MusicInfo.from_sidecar(SegmentInfo(meta=meta, seek_time=0.0, n_frames=0, total_frames=0, sample_rate=1,
                                           channels=1), path)
    except SidecarError as exc:
        raise PrepareInputError(f"{exc} Fix or remove it (the dataset would fail on it at training time).",
                                path) from exc


def _audio_notes(wav: torch.Tensor, sample_rate: int, header_duration: float, path: Path) -> list[str]:
    """Warnings about decoded audio `[C, N]`: beyond full scale, clipped, silent, length vs header."""
    notes = []
    peak = float(wav.abs().max())
    duration = wav.shape[-1] / sample_rate
    if abs(duration - header_duration) > length_tolerance(header_duration):
        notes.append(f"its header says {header_duration:.2f} s but it decodes to {duration:.2f} s (truncated or "
                     "damaged file?): the manifest uses the decoded length")
    if peak > 1.0:
        notes.append(f"samples beyond full scale (peak {peak:.4g} > 1.0): the codec sees them unscaled; "
                     "normalise the file (e.g. to a peak of -1 dBFS)")
    clipped = float((wav.abs() >= FULL_SCALE).float().mean())
    if clipped > CLIPPED_FRACTION:
        notes.append(f"clipped: {100 * clipped:.2f} % of its samples sit at full scale")
    if peak < SILENCE_PEAK:
        notes.append(f"silent (peak {peak:.2e} < {SILENCE_PEAK:g}): kept, but it teaches nothing; remove it if "
                     "it is a broken export")
    return notes


def probe_track(path: str, base: str, sides: dict[str, str], valid_fraction: float) -> dict[str, Any]:
    """Probe and validate one file (worker function): the Track as a dict, its warnings in `notes`.

    Raises:
        AudioReadError: the file cannot be read or decoded.
        PrepareInputError: non-finite samples (NaN/inf) in the audio.
    """
    audio = Path(path).resolve()
    info = audio_info(audio)
    wav, sample_rate = audio_read(audio)
    finite = torch.isfinite(wav)
    if not bool(finite.all()):
        first = int((~finite).any(0).nonzero()[0, 0]) / sample_rate
        raise PrepareInputError(f"audio file {audio} has {int((~finite).sum())} non-finite samples (NaN/inf, the "
                                f"first at {first:.2f} s): re-export it; latents of it would be NaN", audio)
    ident = track_id(audio, Path(base))
    sides = input_sides(audio, sides)
    stat = audio.stat()
    track = Track(id=ident, path=str(audio), duration=wav.shape[-1] / sample_rate, sample_rate=sample_rate,
                  amplitude=float(wav.abs().max()), split=split_of(ident, valid_fraction), size=stat.st_size,
                  mtime=stat.st_mtime, sides=sides, header_duration=info.duration, channels=int(wav.shape[0]),
                  notes=_audio_notes(wav, sample_rate, info.duration, audio))
    return asdict(track)


def balance_splits(tracks: list[Track], valid_fraction: float) -> dict[str, str]:
    """Split of each track id, so that with a positive valid fraction and 2+ tracks neither split is empty.

    Tracks keep their hash split; when one split is empty, the track of the other split with the
    smallest id hash moves over, and valid never holds more than `max(1, round(fraction * n))`
    tracks: in a small dataset the hash may put most tracks in valid, and those with the largest
    id hash move to train (deterministic, and only what is needed).
    """
    splits = {t.id: t.split for t in tracks}
    if valid_fraction <= 0 or len(tracks) < 2:
        return splits
    cap = max(1, round(valid_fraction * len(tracks)))
    valid = sorted((t for t in tracks if splits[t.id] == "valid"),
                   key=lambda t: hashlib.sha1(t.id.encode("utf-8")).hexdigest())
    for track in valid[cap:]:
        splits[track.id] = "train"
    for empty in ("valid", "train"):
        if empty not in splits.values():
            other = [t for t in tracks if splits[t.id] != empty]
            moved = min(other, key=lambda t: hashlib.sha1(t.id.encode("utf-8")).hexdigest())
            splits[moved.id] = empty
    return splits


def dedupe_ids(tracks: list[Track]) -> None:
    """Make ids unique (two inputs can map to one id, e.g. `a.wav` and `a.flac`) by suffixing `-N`."""
    seen: dict[str, int] = {}
    for track in sorted(tracks, key=lambda t: t.path):
        if track.id in seen:
            seen[track.id] += 1
            track.id = f"{track.id}-{seen[track.id]}"
        else:
            seen[track.id] = 0
