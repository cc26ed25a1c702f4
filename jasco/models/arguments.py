"""Checking generation arguments: one `InvalidInputError` naming the argument, the accepted range
and what was given (used by the `JASCO` API and `jasco-generate`).
"""
from __future__ import annotations

import math
import numbers
from typing import Any

# Guidance weights are in [0, MAX_CFG_COEF]: far past the useful range (1..10) the velocity only
# saturates into noise, and inf / nan would give NaN audio.
MAX_CFG_COEF = 100.0
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes seeds in [0, 2**64)
# All windows of a generation form one batch: an hour (360 published 10 s windows) is far past memory.
MAX_DURATION = 3600.0


class InvalidInputError(ValueError):
    """A generation argument or control is invalid.

    Attributes:
        argument: the parameter at fault, as `set_generation_params` / `generate_music` name it
            (e.g. `cfg_coef_all`, `overlap`, `chords`, `drums_wav`, `melody_salience_matrix`).
    """

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(message)
        self.argument = argument


def _span(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    """`in [0, 100]`, `> 0`, ... (empty without bounds)."""
    def text(bound: float) -> str:
        return str(bound) if isinstance(bound, int) else f"{bound:g}"

    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{text(low)}, {text(high)}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {text(low)}"
    if high is not None:
        return f" {'<' if high_open else '<='} {text(high)}"
    return ""


def real_problem(value: Any, low: float | None = None, high: float | None = None, low_open: bool = False,
                 high_open: bool = False) -> str | None:
    """What a value that must be a finite real number in a range lacks (`must be ...`), or None if it is fine."""
    want = f"must be a finite number{_span(low, high, low_open, high_open)}"
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        return want
    if low is not None and (value < low or (low_open and value == low)):
        return want
    if high is not None and (value > high or (high_open and value == high)):
        return want
    return None


def int_problem(value: Any, low: int | None = None, high: int | None = None) -> str | None:
    """What a value that must be an integer in `[low, high]` lacks (`must be ...`), or None if it is fine."""
    want = f"must be an integer{_span(low, high, False, False)}"
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        return want
    if (low is not None and value < low) or (high is not None and value > high):
        return want
    return None


def check_real(name: str, value: Any, low: float | None = None, high: float | None = None, low_open: bool = False,
               high_open: bool = False, hint: str = "") -> float:
    """`value` as a float; InvalidInputError naming `name` when it is not finite or out of range."""
    problem = real_problem(value, low, high, low_open, high_open)
    if problem is not None:
        raise InvalidInputError(name, f"{name} {problem}, got {value!r}{hint}.")
    return float(value)


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None, hint: str = "") -> int:
    """`value` as an int; InvalidInputError naming `name` when it is not an integer in range."""
    problem = int_problem(value, low, high)
    if problem is not None:
        raise InvalidInputError(name, f"{name} {problem}, got {value!r}{hint}.")
    return int(value)
