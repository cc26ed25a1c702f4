"""The chord vocabulary (label -> index) and per-frame chord indices.

Labels are matched by their parsed chord (`jasco.controls.chords.symbols`), so spellings of one
chord share one entry. Labels that do not parse, or parse to a chord outside the vocabulary, map
to `UNK` with a warning; a chord label never raises.

Shapes: `T` frames.
"""
from __future__ import annotations

import io
import json
import pickle
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from jasco.controls.chords.progression import (
    normalize_progression,
    validate_progression,
)
from jasco.controls.chords.symbols import (
    BASIC_QUALITIES,
    NO_CHORD,
    ROOT_NAMES,
    UNKNOWN_CHORD,
    ChordSymbol,
    chord_identity,
    parse_chord,
)

BUILTIN_VOCABULARY = "builtin"
# The published models' chord order (the label order of the published chord_to_index_mapping.pkl),
# shipped as plain JSON inside the package: `vocabularies/published.json`.
PUBLISHED_VOCABULARY = "published"
VOCABULARIES_DIR = Path(__file__).resolve().parent / "vocabularies"


def vocabulary_file(spec: str | Path) -> Path | None:
    """The file a vocabulary spec names: the packaged JSON for `published`, the file of
    `published:PATH` or PATH, None for `builtin`."""
    text = str(spec)
    if text == BUILTIN_VOCABULARY:
        return None
    if text == PUBLISHED_VOCABULARY:
        return VOCABULARIES_DIR / f"{PUBLISHED_VOCABULARY}.json"
    return Path(text.removeprefix("published:")).expanduser()


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
            self._by_identity.setdefault(chord_identity(label), mapping[label])
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
    def from_spec(cls, spec: str | Path) -> "ChordVocabulary":
        """The vocabulary a `chords_vocabulary` value names: `builtin`, `published` (the published
        models' order, shipped with jasco), `published:PATH` or PATH (a `.pkl` or `.json` file)."""
        path = vocabulary_file(spec)
        return cls.builtin() if path is None else cls.from_file(path)

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
            for _, label in validate_progression(progression, "progression"):
                identity = chord_identity(label)
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
        return label in self._mapping or chord_identity(label) in self._by_identity

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
            result = self._by_identity.get(chord_identity(label)) if isinstance(label, str) else None
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
