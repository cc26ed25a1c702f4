"""Chord symbols, the chord vocabulary, chord files and per-frame chord indices.

A chord label is parsed into a `ChordSymbol` (root pitch class, canonical quality, bass pitch
class), so that spellings of the same chord share one vocabulary entry: `Db/F`, `C#/E#` and
`C#:maj/3` are the same chord. Labels that do not parse, or parse to a chord outside the vocabulary,
map to `UNK` with a warning; a chord label never raises.

No-chord labels: `N`, `NC`, `N.C.` map to `N` (silence / no harmony). Harte's `X` ("a chord is
sounding but cannot be named") maps to `UNK` without a warning, since that is what it says.

Chord file (`<stem>.chords.json`): a JSON list `[[start_s, "label"], ...]` sorted by start.

Shapes: `T` frames.
"""
from __future__ import annotations

import io
import json
import math
import pickle
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

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


def _identity(label: str) -> object:
    """Key under which two spellings of one chord compare equal."""
    if is_no_chord(label):
        return NO_CHORD
    if label.strip() in (UNKNOWN_CHORD, "X"):
        return UNKNOWN_CHORD
    symbol = parse_chord(label)
    return symbol if symbol is not None else ("raw", label.strip())


class _DictOnlyUnpickler(pickle.Unpickler):
    """Unpickler that builds only plain dicts, strings and ints (never arbitrary classes)."""

    _ALLOWED = {("builtins", "dict"), ("builtins", "str"), ("builtins", "int")}

    def find_class(self, module: str, name: str) -> object:
        """Allow only the three builtins a label->index dict needs."""
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


class ChordVocabulary:
    """Chord label -> index map (0..card-1) with `N` and `UNK` members; null index = card.

    Args:
        mapping: label -> index, indices contiguous from 0, containing `'N'` and `'UNK'`.
    """

    def __init__(self, mapping: dict[str, int]) -> None:
        if not isinstance(mapping, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
            for k, v in mapping.items()
        ):
            raise ValueError("A chord vocabulary must be a dict of label (str) -> index (int).")
        if sorted(mapping.values()) != list(range(len(mapping))):
            raise ValueError(
                f"Chord vocabulary indices must be exactly 0..{len(mapping) - 1}, each used once.")
        for required in (NO_CHORD, UNKNOWN_CHORD):
            if required not in mapping:
                raise ValueError(f"Chord vocabulary lacks the required label {required!r}.")
        self._mapping = dict(mapping)
        self._labels = sorted(mapping, key=mapping.__getitem__)
        self._by_identity: dict[object, int] = {}
        for label in self._labels:  # lowest index wins when two labels spell one chord
            self._by_identity.setdefault(_identity(label), mapping[label])
        self._cache: dict[str, int] = {}
        self._warned: set[str] = set()

    @classmethod
    def from_file(cls, path: str | Path) -> "ChordVocabulary":
        """Read the published `chord_to_index_mapping.pkl` or our `.json` (`{"label": index}`)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Chord vocabulary file {path} does not exist.")
        try:
            if path.suffix == ".pkl":
                mapping = _DictOnlyUnpickler(io.BytesIO(path.read_bytes())).load()
            elif path.suffix == ".json":
                mapping = json.loads(path.read_text(encoding="utf-8"))
            else:
                raise ValueError("expected a .pkl or .json file")
            return cls(mapping)
        except (pickle.UnpicklingError, json.JSONDecodeError, ValueError, EOFError) as err:
            raise ValueError(
                f"Cannot read chord vocabulary {path}: {err}. Expected a plain label->index dict "
                "as .pkl (published chord_to_index_mapping.pkl) or .json.") from err

    @classmethod
    def builtin(cls) -> "ChordVocabulary":
        """Our 194-label vocabulary: `N`=0, 120 basic chords, 72 slash chords, `UNK`=193.

        Order: `N`; for each root in ROOT_NAMES, the qualities in BASIC_QUALITIES order
        (`C, Cm, C7, Cmaj7, Cm7, C6, Cm6, Cdim, Caug, Cm7b5, C#, ...`); then for each slash type
        (major/3rd, major/5th, 7/3rd, major/b7, major/2nd, m7b5/b7), for each root: `C/E, C#/E#,
        ..., B/D#, C/G, ...` (basses spelled by degree); then `UNK`. It holds the same 194 labels
        as the published vocabulary, in another order: a model trained on one cannot use the
        other's indices.
        """
        labels = [NO_CHORD]
        labels += [root + quality for root in ROOT_NAMES for quality in BASIC_QUALITIES]
        for quality, bass_interval in (("", 4), ("", 7), ("7", 4), ("", 10), ("", 2), ("m7b5", 10)):
            labels += [ChordSymbol(r, quality, (r + bass_interval) % 12).label for r in range(12)]
        labels.append(UNKNOWN_CHORD)
        return cls({label: i for i, label in enumerate(labels)})

    @classmethod
    def from_progressions(
        cls, progressions: Iterable[Sequence[tuple[float, str]]], max_size: int | None = None,
    ) -> "ChordVocabulary":
        """Build a vocabulary from extracted progressions, most frequent chords first.

        Args:
            progressions: progressions of `(start_s, label)` changes; spellings of one chord are
                merged under the Chordino spelling; no-chord, `X`, `UNK` and unparsable labels are
                not counted (they map to `N` / `UNK`).
            max_size: total number of labels including `N` and `UNK` (the config's `card`).
        """
        counts: Counter[str] = Counter()
        for progression in progressions:
            for _, label in _as_start_label(progression, "progression"):
                identity = _identity(label)
                if isinstance(identity, ChordSymbol):
                    counts[identity.label] += 1
        if max_size is not None and max_size < 2:
            raise ValueError(f"max_size must be >= 2 (N and UNK), got {max_size}.")
        ranked = sorted(counts, key=lambda label: (-counts[label], label))
        if max_size is not None:
            ranked = ranked[: max_size - 2]
        labels = [NO_CHORD, *ranked, UNKNOWN_CHORD]
        return cls({label: i for i, label in enumerate(labels)})

    def save_json(self, path: str | Path) -> None:
        """Write the vocabulary as `{"label": index}` JSON in index order."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=0, ensure_ascii=False) + "\n",
                              encoding="utf-8")

    def to_dict(self) -> dict[str, int]:
        """A copy of the label -> index mapping."""
        return {label: self._mapping[label] for label in self._labels}

    @property
    def labels(self) -> list[str]:
        """Labels in index order."""
        return list(self._labels)

    @property
    def card(self) -> int:
        """Number of labels (indices 0..card-1)."""
        return len(self._labels)

    @property
    def null_index(self) -> int:
        """Index of the null (dropped / absent) chord: card, one past the last label."""
        return self.card

    @property
    def no_chord_index(self) -> int:
        """Index of `N`."""
        return self._mapping[NO_CHORD]

    @property
    def unk_index(self) -> int:
        """Index of `UNK`."""
        return self._mapping[UNKNOWN_CHORD]

    def __len__(self) -> int:
        return self.card

    def __contains__(self, label: object) -> bool:
        """True when `label`, in any spelling, names a vocabulary entry."""
        if not isinstance(label, str):
            return False
        return label in self._mapping or _identity(label) in self._by_identity

    def label(self, index: int) -> str:
        """The label of an index (`'NULL'` for the null index)."""
        if index == self.null_index:
            return "NULL"
        return self._labels[index]

    def index(self, label: str) -> int:
        """Index of a chord label, normalising its spelling; unknown labels give `unk_index`."""
        cached = self._cache.get(label)
        if cached is not None:
            return cached
        if label in self._mapping:
            result = self._mapping[label]
        else:
            result = self._by_identity.get(_identity(label)) if isinstance(label, str) else None
            if result is None:
                result = self.unk_index
                if label not in self._warned:
                    self._warned.add(label)
                    why = "is not in" if isinstance(label, str) and parse_chord(label) else (
                        "cannot be parsed as a chord and is not in")
                    warnings.warn(f"Chord label {label!r} {why} the chord vocabulary; using "
                                  f"UNK ({self.unk_index}).", stacklevel=2)
        self._cache[label] = result
        return result


def _as_start_label(progression: Sequence, source: str) -> list[tuple[float, str]]:
    """Validate a progression of `(start_s, label)` rows; `source` names it in errors."""
    rows = []
    for i, row in enumerate(progression):
        if not isinstance(row, (list, tuple)) or len(row) != 2:
            raise ValueError(f"{source}: row {i} is {row!r}; expected [start_s, label].")
        start, label = row
        if isinstance(start, str) and _is_number(label):
            raise ValueError(f"{source}: row {i} is {list(row)!r}, which looks like "
                             "[label, start]; rows must be [start_s, label].")
        if not _is_number(start) or not isinstance(label, str):
            raise ValueError(f"{source}: row {i} is {list(row)!r}; expected [start_s (number), "
                             "label (string)].")
        if not math.isfinite(start) or start < 0:
            raise ValueError(
                f"{source}: row {i} has start {start!r}; starts must be finite and >= 0.")
        if rows and start < rows[-1][0]:
            raise ValueError(f"{source}: row {i} starts at {start} before the previous row "
                             f"({rows[-1][0]}); rows must be sorted by start.")
        rows.append((float(start), label))
    return rows


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_chord_file(path: str | Path) -> list[tuple[float, str]]:
    """Read a chord file `[[start_s, "label"], ...]` into `(start_s, label)` tuples."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"Chord file {path} does not exist.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"Chord file {path} is not valid JSON ({err}); expected "
                         '[[start_s, "label"], ...].') from err
    if not isinstance(data, list):
        raise ValueError(f"Chord file {path} holds a {type(data).__name__}; expected a JSON list "
                         '[[start_s, "label"], ...].')
    return _as_start_label(data, f"Chord file {path}")


def write_chord_file(path: str | Path, progression: Sequence[tuple[float, str]]) -> None:
    """Write `(start_s, label)` changes as a chord file, one change per line."""
    rows = _as_start_label(progression, f"Progression for {path}")
    lines = ",\n".join(" " + json.dumps([s, label], ensure_ascii=False) for s, label in rows)
    Path(path).write_text("[\n" + lines + "\n]\n" if rows else "[]\n", encoding="utf-8")


def normalize_progression(progression: Sequence) -> list[tuple[float, str]]:
    """Accept `(start_s, label)` or, as in the published API, `(label, start_s)` rows.

    The order is told apart by types, so it is unambiguous; all rows must use the same order.
    """
    rows = list(progression)
    swapped = [isinstance(r, (list, tuple)) and len(r) == 2 and isinstance(r[0], str) for r in rows]
    if rows and all(swapped):
        rows = [(start, label) for label, start in rows]
    elif any(swapped):
        raise ValueError("Chord progression mixes (label, start) and (start, label) rows; use "
                         "one order throughout.")
    return _as_start_label(rows, "Chord progression")


def frame_chords(
    progression: Sequence, vocabulary: ChordVocabulary, n_frames: int,
    frame_rate: float = 50.0, offset_s: float = 0.0,
) -> torch.Tensor:
    """Chord index per frame `[T]` (int64): frame f at `offset_s + f / frame_rate` takes the last
    change starting at or before it; frames before the first change take `N`.

    Args:
        progression: `(start_s, label)` (or `(label, start_s)`) changes sorted by start.
        vocabulary: maps labels to indices.
        n_frames: T.
        frame_rate: frames per second.
        offset_s: time of frame 0 in the progression's time line (segment start).
    """
    if n_frames < 0:
        raise ValueError(f"n_frames must be >= 0, got {n_frames}.")
    rows = normalize_progression(progression)
    if not rows:
        return torch.full((n_frames,), vocabulary.no_chord_index, dtype=torch.long)
    starts = torch.tensor([start for start, _ in rows], dtype=torch.float64)  # [C]
    indices = torch.tensor([vocabulary.index(label) for _, label in rows], dtype=torch.long)
    # A change within a microsecond before a frame counts as at it: float error of offset + f/rate.
    times = offset_s + torch.arange(n_frames, dtype=torch.float64) / frame_rate + 1e-6  # [T]
    last = torch.searchsorted(starts, times, right=True) - 1  # [T], -1 before the first change
    no_chord = torch.full_like(last, vocabulary.no_chord_index)
    return torch.where(last >= 0, indices[last.clamp(min=0)], no_chord)


def __getattr__(name: str):
    # `jasco.data.chords.recognize_chords` is the documented entry point; the recogniser lives in
    # its own module (it imports this one), so it is resolved lazily here.
    if name == "recognize_chords":
        from jasco.data.chord_recognition import recognize_chords
        return recognize_chords
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
