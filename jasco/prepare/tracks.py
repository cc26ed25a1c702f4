"""Track discovery for `jasco.prepare`: probe audio, give each track a stable id and split.

The track list is cached in `OUT/tracks.jsonl` (one JSON object per track); a file already probed
with the same size and modification time is not probed again.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jasco.data.manifest import build_meta, find_audio_files, load_manifest

TRACKS_FILE = "tracks.jsonl"
SILENCE_PEAK = 1e-4  # peak amplitude below which a track counts as silent
# Side fields an input manifest may carry; prepare reuses and validates them.
INPUT_SIDE_FIELDS = ("info_path", "chords_path", "salience_path", "drums_path")


@dataclass
class Track:
    """One audio file to prepare.

    Attributes:
        id: file-name-safe unique id (relative path without suffix, `/` -> `__`).
        path: absolute audio path.
        duration, sample_rate, amplitude: as probed (amplitude = peak, decoded once).
        split: `train` or `valid`.
        size, mtime: of the audio file when probed (a change triggers a new probe).
        sides: input side files (`info_path`, `chords_path`, ...) given by the input manifest.
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


def list_inputs(source: str | Path) -> tuple[list[tuple[Path, dict[str, str]]], Path]:
    """Audio files (with input side fields) from a folder or a manifest, and the base for ids."""
    source = Path(source)
    if source.is_dir() and not any((source / n).exists() for n in ("data.jsonl", "data.jsonl.gz")):
        return [(p, {}) for p in find_audio_files(source)], source
    metas = load_manifest(source)
    base = source if source.is_dir() else source.parent
    common = Path(os.path.commonpath([str(Path(m.path).parent) for m in metas])) if metas else base
    out = []
    for meta in metas:
        sides = {name: meta.get_path(name) for name in INPUT_SIDE_FIELDS if meta.get_path(name) is not None}
        out.append((Path(meta.path), sides))
    return out, common


def load_tracks(out_dir: Path) -> dict[str, Track]:
    """The cached track list of a previous run, by audio path."""
    path = out_dir / TRACKS_FILE
    if not path.exists():
        return {}
    tracks = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            track = Track(**json.loads(line))
            tracks[track.path] = track
    return tracks


def save_tracks(out_dir: Path, tracks: list[Track]) -> None:
    """Write the track list atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / (TRACKS_FILE + ".part")
    tmp.write_text("".join(json.dumps(asdict(t)) + "\n" for t in tracks), encoding="utf-8")
    tmp.replace(out_dir / TRACKS_FILE)


def probe_track(path: str, base: str, sides: dict[str, str], valid_fraction: float) -> dict[str, Any]:
    """Probe one file (worker function): the Track as a dict; raises on unreadable or silent audio."""
    audio = Path(path)
    meta = build_meta(audio, compute_amplitude=True)
    if meta.amplitude is not None and meta.amplitude < SILENCE_PEAK:
        raise ValueError(f"silent audio (peak {meta.amplitude:.2e} < {SILENCE_PEAK:g}); it is left out of the "
                         "dataset: remove it or replace it with the intended file")
    ident = track_id(audio, Path(base))
    sides = dict(sides)
    if meta.info_path is not None:
        sides.setdefault("info_path", meta.info_path)
    stat = audio.stat()
    track = Track(id=ident, path=str(audio.resolve()), duration=meta.duration, sample_rate=meta.sample_rate,
                  amplitude=meta.amplitude, split=split_of(ident, valid_fraction), size=stat.st_size,
                  mtime=stat.st_mtime, sides=sides)
    return asdict(track)


def ensure_valid_split(tracks: list[Track], valid_fraction: float) -> None:
    """With a positive valid fraction and 2+ tracks, make sure `valid` is not empty (training needs it)."""
    if valid_fraction <= 0 or len(tracks) < 2 or any(t.split == "valid" for t in tracks):
        return
    first = min(tracks, key=lambda t: hashlib.sha1(t.id.encode("utf-8")).hexdigest())
    first.split = "valid"


def dedupe_ids(tracks: list[Track]) -> None:
    """Make ids unique (two inputs can map to one id, e.g. `a.wav` and `a.flac`) by suffixing `-N`."""
    seen: dict[str, int] = {}
    for track in sorted(tracks, key=lambda t: t.path):
        if track.id in seen:
            seen[track.id] += 1
            track.id = f"{track.id}-{seen[track.id]}"
        else:
            seen[track.id] = 0
