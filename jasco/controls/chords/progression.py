"""Chord progressions: `(start_s, label)` changes, their validation and the chord file format.

Chord file (`<stem>.chords.json`): a JSON list `[[start_s, "label"], ...]` sorted by start
(docs/DATA_FORMATS.md).
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from jasco.files import write_text_atomic


def validate_progression(progression: Sequence, source: str) -> list[tuple[float, str]]:
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
    return validate_progression(data, f"Chord file {path}")


def write_chord_file(path: str | Path, progression: Sequence[tuple[float, str]]) -> None:
    """Write `(start_s, label)` changes as a chord file, one change per line (atomically)."""
    rows = validate_progression(progression, f"Progression for {path}")
    lines = ",\n".join(" " + json.dumps([s, label], ensure_ascii=False) for s, label in rows)
    write_text_atomic(path, "[\n" + lines + "\n]\n" if rows else "[]\n")


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
    return validate_progression(rows, "Chord progression")
