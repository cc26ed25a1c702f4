"""The web page's inputs as plain values: chord text checked against a vocabulary, drum and melody files.

Every problem a user can cause is an `AppInputError` whose message is one line naming the field
and the fix; the page shows it in `#error`. Nothing here imports gradio.

Shapes: `C` audio channels, `N` samples, `K` melody bins (53), `T` latent frames.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from jasco.audio.io import AUDIO_EXTENSIONS, AudioReadError, audio_read
from jasco.controls.chords.progression import normalize_progression
from jasco.controls.chords.symbols import UNKNOWN_CHORD, is_no_chord, parse_chord
from jasco.controls.chords.vocabulary import ChordVocabulary
from jasco.controls.melody.salience import MELODY_FRAME_RATE, read_salience
from jasco.generate import parse_change

SALIENCE_EXTENSIONS = frozenset({".npz", ".npy"})


class AppInputError(ValueError):
    """A bad input on the page: its message is one line naming the field and the fix."""


def one_line(text: object) -> str:
    """`text` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(text).split())


@dataclass
class ChordCheck:
    """The result of checking chord text: the changes, and one note per label worth telling.

    Attributes:
        changes: `(start_s, label)` changes sorted by start, labels as typed.
        notes: e.g. `Db → C#` (a spelling normalised to the vocabulary's), `Csus2 → UNK`.
        unknown: the labels the vocabulary lacks (they play as `UNK`).
    """

    changes: list[tuple[float, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the page, e.g. `4 chord changes; Db → C#; Csus2 → UNK (not in the vocabulary)`."""
        if not self.changes:
            return "no chords"
        count = f"{len(self.changes)} chord change{'s' if len(self.changes) > 1 else ''}"
        return "; ".join([count, *self.notes])


def parse_chord_text(text: str) -> list[tuple[float, str]]:
    """Inline chord changes `LABEL@START` separated by spaces (`jasco-generate --chords` syntax).

    Unlike `--chords`, text here is never read as a file path: a web page must not open server files.
    """
    try:
        return normalize_progression([parse_change(token, "chords") for token in text.split()])
    except ValueError as err:
        raise AppInputError(one_line(err).replace("Chord progression", "chords")) from err


def check_chords(text: str, vocabulary: ChordVocabulary | None, duration: float,
                 controls: list[str] | None = None) -> ChordCheck:
    """Parse chord text and check it against a model's vocabulary and the duration.

    Args:
        text: `C@0 Am@2 F@4 G@6` (empty: no chords).
        vocabulary: the model's chord vocabulary (None: labels are only parsed).
        duration: seconds to generate; every change must start before it.
        controls: the model's controls (None: not checked).

    Raises:
        AppInputError: unreadable text, unsorted or negative starts, a start at or after the end,
            a label that is not a chord, or chords for a model without a chords control.
    """
    if not text.strip():
        return ChordCheck()
    if controls is not None and "chords" not in controls:
        raise AppInputError(f"chords: this model has no chords control (its controls: {', '.join(controls) or 'text'}"
                            "); clear the chords field or pick a model trained with chords.")
    check = ChordCheck(changes=parse_chord_text(text))
    for start, label in check.changes:
        if start >= duration:
            raise AppInputError(f"chords: {label}@{start:g} starts at or after the end of the {duration:g} s piece; "
                                "drop it or raise the duration.")
        if not (is_no_chord(label) or label in (UNKNOWN_CHORD, "X") or parse_chord(label) is not None):
            raise AppInputError(f"chords: {label!r} is not a chord label; write e.g. C, Am, F#m7, Bbmaj7, D/F#, "
                                "A:min or N (no chord).")
        if vocabulary is None:
            continue
        if label not in vocabulary:
            check.unknown.append(label)
            check.notes.append(f"{label} → {UNKNOWN_CHORD} (not in the model's vocabulary)")
            continue
        known = vocabulary.label(vocabulary.index(label))
        if known != label and f"{label} → {known}" not in check.notes:
            check.notes.append(f"{label} → {known}")
    return check


def _suffix_problem(path: Path, allowed: frozenset[str], field_name: str, what: str) -> None:
    if path.suffix.lower() not in allowed:
        raise AppInputError(f"{field_name}: {path.name} is not {what}; upload one of "
                            f"{', '.join(sorted(allowed))}.")


def read_drums(path: str | Path) -> tuple[torch.Tensor, int]:
    """A drum stem upload as `([C, N] float, sample_rate)`; AppInputError for a wrong or unreadable file."""
    path = Path(path)
    _suffix_problem(path, AUDIO_EXTENSIONS, "drums", "an audio file")
    try:
        wav, sample_rate = audio_read(path)
    except (AudioReadError, ValueError, OSError) as err:
        raise AppInputError(f"drums: cannot read {path.name} ({one_line(err)[:200]}); upload a drums-only audio "
                            "stem.") from err
    if not torch.isfinite(wav).all():
        raise AppInputError(f"drums: {path.name} has NaN or infinite samples; export it again.")
    return wav, sample_rate


def read_salience_upload(path: str | Path) -> tuple[torch.Tensor, float]:
    """A salience file upload `.npz`/`.npy` as `([K, F], frame_rate)`; AppInputError when it is not one."""
    path = Path(path)
    _suffix_problem(path, SALIENCE_EXTENSIONS, "melody salience", "a salience file")
    try:
        salience, rate = read_salience(path)
    except (ValueError, OSError) as err:
        raise AppInputError(f"melody salience: {one_line(err)[:300]}") from err
    if not torch.isfinite(salience).all():
        raise AppInputError(f"melody salience: {path.name} has NaN or infinite values; extract it again "
                            "(jasco.controls.melody.extraction).")
    return salience, rate


Extractor = Callable[[torch.Tensor, int], torch.Tensor]  # (wav [C, N], sample_rate) -> melody [K, T] at 50 fps


def melody_from_audio(path: str | Path, extract: Extractor | None) -> tuple[torch.Tensor, float]:
    """The melody of an uploaded clip, extracted on the fly: `([K, T], 50.0)`.

    `extract` is None when no deepsalience weights were configured: a clear AppInputError then.
    """
    path = Path(path)
    _suffix_problem(path, AUDIO_EXTENSIONS, "melody audio", "an audio file")
    if extract is None:
        raise AppInputError("melody audio: extracting a melody needs the deepsalience weights; start jasco-app with "
                            "--melody-weights PATH_OR_URL of multif0.h5 (pip install 'jasco[melody]'), or upload a "
                            "salience file (.npz/.npy) instead.")
    try:
        wav, sample_rate = audio_read(path)
    except (AudioReadError, ValueError, OSError) as err:
        raise AppInputError(f"melody audio: cannot read {path.name} ({one_line(err)[:200]}).") from err
    return extract(wav, sample_rate), float(MELODY_FRAME_RATE)
