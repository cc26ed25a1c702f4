"""Side files of a track: chords, melody salience, drum stem and caches, found next to the audio
or named by its manifest line (docs/DATA_FORMATS.md).
"""
from __future__ import annotations

from pathlib import Path

from jasco.controls.drums.stems import STEM_SUFFIXES
from jasco.data.manifest import AudioMeta

SALIENCE_SUFFIXES = (".salience.npz", ".salience.npy")
CHORDS_SUFFIXES = (".chords.json",)
DRUMS_SUFFIXES = STEM_SUFFIXES  # `<stem>.drums.wav|.flac` next to the audio


class SideFileError(ValueError):
    """A side file (chords, salience, drums, latents) is missing where declared or is invalid."""


def find_side_file(meta: AudioMeta, field_name: str, suffixes: tuple[str, ...]) -> Path | None:
    """The side file named in the manifest line, else the first `<stem><suffix>` that exists."""
    explicit = meta.get_path(field_name)
    if explicit is not None:
        path = Path(explicit)
        if not path.exists():
            raise SideFileError(f"'{field_name}' of {meta.path} points to {path}, which does not exist; "
                                "fix or remove that field of the manifest line.")
        return path
    audio = Path(meta.path)
    stem = audio.with_suffix("")
    for suffix in suffixes:
        candidate = stem.parent / (stem.name + suffix)
        if candidate.exists():
            return candidate
    return None
