"""Side files of a track: chords, melody salience, drum stem and caches, found next to the audio
or named by its manifest line (docs/DATA_FORMATS.md).
"""
from __future__ import annotations

from pathlib import Path

from jasco.controls.drums.stems import STEM_SUFFIXES

SALIENCE_SUFFIXES = (".salience.npz", ".salience.npy")
CHORDS_SUFFIXES = (".chords.json",)
DRUMS_SUFFIXES = STEM_SUFFIXES  # `<stem>.drums.wav|.flac` next to the audio


class SideFileError(ValueError):
    """A side file (chords, salience, drums, latents) is missing where declared or is invalid."""


def find_side_file(audio_path: str | Path, field_name: str, suffixes: tuple[str, ...],
                   explicit: str | Path | None = None) -> Path | None:
    """`explicit` (the path a manifest line gives in `field_name`), else the first existing
    `<audio stem><suffix>` next to the audio, else None.

    Raises:
        SideFileError: `explicit` is given and does not exist.
    """
    if explicit is not None:
        path = Path(explicit)
        if not path.exists():
            raise SideFileError(f"'{field_name}' of {audio_path} points to {path}, which does not exist; "
                                "fix or remove that field of the manifest line.")
        return path
    stem = Path(audio_path).with_suffix("")
    return next((c for s in suffixes if (c := stem.parent / (stem.name + s)).is_file()), None)
