"""Condition attributes: what a dataset hands to the conditioners, one object per sample.

This is the contract between `jasco.data` (which produces it) and `jasco.modules.conditioners`
(which consumes it). `None` anywhere means "null condition": each conditioner knows its own null
value (no text, null chord index, all-zero melody, null drums).

Shapes: `C` audio channels, `N` samples, `T` latent frames (50 per second), `K` melody bins (53).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch


@dataclass
class WavCondition:
    """An audio condition for one sample (the drum stem), optionally with precomputed codes.

    Attributes:
        wav: audio `[C, N]` at `sample_rate`, or None for a null condition.
        sample_rate: sample rate of `wav`.
        path: file the audio was read from (for logs and caches), if any.
        seek_time: start of the segment inside `path`, in seconds.
        codes: precomputed codebook-0 codes `[T]` (int64) for this segment; when present the
            drums conditioner uses them instead of encoding `wav` (see the drum-code cache).
    """

    wav: torch.Tensor | None
    sample_rate: int
    path: str | None = None
    seek_time: float | None = None
    codes: torch.Tensor | None = None

    @property
    def is_null(self) -> bool:
        """True when there is neither audio nor codes."""
        return self.wav is None and self.codes is None


@dataclass
class ConditioningAttributes:
    """All conditions of one sample, grouped by kind.

    Attributes:
        text: name -> text (or None), e.g. `{'description': '80s pop with synth'}`.
        wav: name -> WavCondition, e.g. `{'self_wav': WavCondition(...)}`.
        symbolic: name -> tensor (or None): `chords` frame indices `[T]` int64, `melody`
            salience `[K, T]` float.
    """

    text: dict[str, str | None] = field(default_factory=dict)
    wav: dict[str, WavCondition] = field(default_factory=dict)
    symbolic: dict[str, torch.Tensor | None] = field(default_factory=dict)

    @property
    def attributes(self) -> dict[str, dict]:
        """The three groups by kind name (`text`, `wav`, `symbolic`)."""
        return {"text": self.text, "wav": self.wav, "symbolic": self.symbolic}

    def copy(self) -> "ConditioningAttributes":
        """A deep-enough copy: dicts are new, tensors are shared (they are never edited in place)."""
        return ConditioningAttributes(
            text=dict(self.text),
            wav={k: copy.copy(v) for k, v in self.wav.items()},
            symbolic=dict(self.symbolic),
        )

    def nullify(self, kind: str, name: str) -> None:
        """Replace one condition by its null value."""
        if kind == "text":
            self.text[name] = None
        elif kind == "wav":
            old = self.wav.get(name)
            sample_rate = old.sample_rate if old is not None else 0
            self.wav[name] = WavCondition(wav=None, sample_rate=sample_rate)
        elif kind == "symbolic":
            self.symbolic[name] = None
        else:
            raise ValueError(f"Unknown condition kind {kind!r}; expected text, wav or symbolic.")

    def nullify_all(self) -> None:
        """Replace every condition by its null value."""
        for kind, group in self.attributes.items():
            for name in list(group):
                self.nullify(kind, name)
