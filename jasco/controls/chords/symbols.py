"""Chord symbols: parsing a chord label into root, canonical quality and bass.

A chord label is parsed into a `ChordSymbol` (root pitch class, canonical quality, bass pitch
class), so that spellings of the same chord compare equal: `Db/F`, `C#/E#` and `C#:maj/3` are the
same chord. No-chord labels (`N`, `NC`, `N.C.`) mean silence / no harmony; Harte's `X` ("a chord
is sounding but cannot be named") is the unknown chord `UNK`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

NO_CHORD = "N"
UNKNOWN_CHORD = "UNK"
# Chordino's spelling of the 12 pitch classes (index = pitch class, C = 0).
ROOT_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
# The ten qualities of the published vocabulary, in the order of the builtin vocabulary.
BASIC_QUALITIES = ("", "m", "7", "maj7", "m7", "6", "m6", "dim", "aug", "m7b5")
# Canonical quality -> intervals (semitones above the root) of its chord tones.
CHORD_INTERVALS: dict[str, tuple[int, ...]] = {
    "": (0, 4, 7), "m": (0, 3, 7), "7": (0, 4, 7, 10), "maj7": (0, 4, 7, 11),
    "m7": (0, 3, 7, 10), "6": (0, 4, 7, 9), "m6": (0, 3, 7, 9), "dim": (0, 3, 6),
    "aug": (0, 4, 8), "m7b5": (0, 3, 6, 10), "dim7": (0, 3, 6, 9), "sus2": (0, 2, 7),
    "sus4": (0, 5, 7), "7sus4": (0, 5, 7, 10), "9": (0, 4, 7, 10, 2), "maj9": (0, 4, 7, 11, 2),
    "m9": (0, 3, 7, 10, 2), "mmaj7": (0, 3, 7, 11), "5": (0, 7),
}
# Spelling -> canonical quality. Case matters (`M7` is major seventh, `m7` minor seventh).
_QUALITY_ALIASES: dict[str, str] = {
    "": "", "maj": "", "M": "", "major": "",
    "m": "m", "min": "m", "-": "m", "mi": "m", "minor": "m",
    "7": "7", "dom7": "7",
    "maj7": "maj7", "M7": "maj7", "Δ": "maj7", "Δ7": "maj7", "ma7": "maj7", "j7": "maj7",
    "m7": "m7", "min7": "m7", "-7": "m7", "mi7": "m7",
    "6": "6", "maj6": "6", "M6": "6",
    "m6": "m6", "min6": "m6", "-6": "m6",
    "dim": "dim", "o": "dim", "°": "dim",
    "aug": "aug", "+": "aug",
    "m7b5": "m7b5", "ø": "m7b5", "ø7": "m7b5", "hdim7": "m7b5", "hdim": "m7b5",
    "min7b5": "m7b5", "-7b5": "m7b5", "mi7b5": "m7b5",
    "dim7": "dim7", "o7": "dim7", "°7": "dim7",
    "sus2": "sus2", "sus4": "sus4", "sus": "sus4", "7sus4": "7sus4", "7sus": "7sus4",
    "9": "9", "maj9": "maj9", "M9": "maj9", "m9": "m9", "min9": "m9",
    "mmaj7": "mmaj7", "minmaj7": "mmaj7", "m(maj7)": "mmaj7", "mM7": "mmaj7", "5": "5",
}
# Word-like spellings may come in any case (`MAJ7`, `Min`); one-letter ones may not.
_QUALITY_ALIASES_LOWER = {k.lower(): v for k, v in _QUALITY_ALIASES.items() if len(k) >= 3}
_NO_CHORD_SPELLINGS = {"N", "NC", "N.C.", "N.C", "NOCHORD", "NO CHORD"}
_NOTE_RE = re.compile(r"^([A-G])([#♯b♭]?)")
# Harte bass degrees (`C:min/b3`): degree -> semitones above the root.
_DEGREE_SEMITONES = {1: 0, 2: 2, 3: 4, 4: 5, 5: 7, 6: 9, 7: 11, 9: 2, 11: 5, 13: 9}
_DEGREE_RE = re.compile(r"^([#♯b♭]?)(\d{1,2})$")
_LETTER_PC = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_ACCIDENTAL = {"": 0, "#": 1, "♯": 1, "b": -1, "♭": -1}


@dataclass(frozen=True)
class ChordSymbol:
    """A parsed chord: root and bass pitch classes (C = 0) and a canonical quality.

    Attributes:
        root: root pitch class 0..11.
        quality: canonical quality (`''` major, `'m'`, `'7'`, `'maj7'`, ...; see CHORD_INTERVALS
            for the known ones; an unrecognised spelling is kept verbatim).
        bass: bass pitch class when it differs from the root, else None.
    """

    root: int
    quality: str
    bass: int | None = None

    @property
    def label(self) -> str:
        """The Chordino-style spelling, e.g. `C#m7/B`."""
        name = ROOT_NAMES[self.root] + self.quality
        return name if self.bass is None else f"{name}/{_spell_bass(self.root, self.bass)}"

    def pitch_classes(self) -> tuple[int, ...]:
        """Chord-tone pitch classes, bass first when there is one; raises for unknown qualities."""
        if self.quality not in CHORD_INTERVALS:
            raise ValueError(f"No chord tones known for quality {self.quality!r}.")
        tones = tuple((self.root + i) % 12 for i in CHORD_INTERVALS[self.quality])
        if self.bass is None:
            return tones
        return (self.bass,) + tuple(pc for pc in tones if pc != self.bass)


def _spell_bass(root: int, bass: int) -> str:
    """Spell a bass by its degree above the root's letter (`C#/E#`, `Ab/Gb`) when one accidental
    suffices, else with the root spellings."""
    root_name = ROOT_NAMES[root]
    steps = (0, 1, 1, 2, 2, 3, 4, 4, 5, 5, 6, 6)[(bass - root) % 12]
    letter = "CDEFGAB"[("CDEFGAB".index(root_name[0]) + steps) % 7]
    accidental = (bass - _LETTER_PC[letter] + 6) % 12 - 6
    if abs(accidental) > 1:
        return ROOT_NAMES[bass]
    return letter + {0: "", 1: "#", -1: "b"}[accidental]


def _parse_note(text: str) -> tuple[int, str] | None:
    """Parse a leading note name; returns (pitch class, rest of the string) or None."""
    match = _NOTE_RE.match(text)
    if match is None:
        return None
    letter, accidental = match.groups()
    rest = text[match.end():]
    if rest[:1] in ("#", "♯", "b", "♭") and accidental:
        return None  # double sharps and flats are not chord roots anyone writes
    return (_LETTER_PC[letter] + _ACCIDENTAL[accidental]) % 12, rest


def _parse_bass(text: str, root: int) -> int | None:
    """Parse a bass after `/`: a note name or a Harte degree; None if it does not parse."""
    note = _parse_note(text)
    if note is not None and note[1] == "":
        return note[0]
    match = _DEGREE_RE.match(text)
    if match is None or int(match.group(2)) not in _DEGREE_SEMITONES:
        return None
    return (root + _DEGREE_SEMITONES[int(match.group(2))] + _ACCIDENTAL[match.group(1)]) % 12


def is_no_chord(label: str) -> bool:
    """True for the no-chord spellings (`N`, `NC`, `N.C.`)."""
    return label.strip().upper() in _NO_CHORD_SPELLINGS


def parse_chord(label: str) -> ChordSymbol | None:
    """Parse a chord label (`Db/F`, `C:maj7`, `Am7b5`, `C:min/b3`); None when it does not parse.

    No-chord and `X` labels are not chords: they return None too (see `ChordVocabulary.index`).
    """
    text = label.strip()
    note = _parse_note(text)
    if note is None:
        return None
    root, rest = note
    quality_text, bass_text = rest, None
    if "/" in rest:
        quality_text, bass_text = rest.split("/", 1)
    quality_text = quality_text[1:] if quality_text.startswith(":") else quality_text
    quality = _QUALITY_ALIASES.get(quality_text)
    if quality is None:
        quality = _QUALITY_ALIASES_LOWER.get(quality_text.lower(), quality_text)
    if "/" in quality or ":" in quality:
        return None
    bass = None
    if bass_text is not None:
        bass = _parse_bass(bass_text.strip(), root)
        if bass is None:
            return None
    return ChordSymbol(root, quality, None if bass == root else bass)


def chord_identity(label: str) -> object:
    """Key under which two spellings of one chord compare equal."""
    if is_no_chord(label):
        return NO_CHORD
    if label.strip() in (UNKNOWN_CHORD, "X"):
        return UNKNOWN_CHORD
    symbol = parse_chord(label)
    return symbol if symbol is not None else ("raw", label.strip())
