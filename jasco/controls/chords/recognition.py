"""Chord recognition from audio: Chordino (through `chord-extractor`) or our chroma templates.

`recognize_chords(wav, sample_rate, backend=...)` returns `(start_s, label)` at each change, with
labels in the vocabulary's spelling (Chordino style: `C`, `Ebm7`, `C#/E#`; `N` for no chord).

- `"chordino"`: the Chordino Vamp plugin (`nnls-chroma`) bundled by `chord-extractor`, the
  extractor of the published JASCO data. Optional extra: `make install-chords` (docs/CHORDS.md).
- `"templates"`: ours, torch only. Treble and bass chroma (`jasco.audio.chroma`), one template per
  vocabulary chord (chord tones plus their decaying harmonics), a bass term that separates
  inversions and same-note chords (`C6` / `Am7`), `N` for quiet frames, and Viterbi smoothing with
  a penalty per chord change.

CLI: `python -m jasco.prepare.chords` (chord files for a folder, chord vocabularies).

Shapes: `N` samples, `F` frames, `S` chord states (N first).
"""
from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from jasco.audio.chroma import ChromaFeatures, chroma_features, db
from jasco.audio.convert import convert_audio, to_mono
from jasco.controls.chords.progression import normalize_progression
from jasco.controls.chords.symbols import CHORD_INTERVALS, NO_CHORD, ChordSymbol, is_no_chord, parse_chord
from jasco.controls.chords.vocabulary import ChordVocabulary

BACKENDS = ("chordino", "templates")
INSTALL_HINT = ("Chordino needs the optional extra `jasco[chords]`; install it with "
                "`make install-chords` (see docs/CHORDS.md for the manual pip steps), or use "
                "backend='templates'.")
# Major/minor reduction: qualities whose third is major -> maj, minor third -> min.
_MAJOR_QUALITIES = {"", "7", "maj7", "6", "aug", "9", "maj9", "sus2", "sus4", "7sus4", "5"}


def reduce_majmin(label: str) -> str:
    """`'C#'` / `'C#m'` from any label by the third of its quality; `N` stays `N`, else `X`.

    7, maj7, 6, aug (and sus/power chords, which have no third) reduce to major; m, m7, m6, dim,
    m7b5, dim7, mmaj7 to minor. The slash bass is dropped. Unparsable labels give `X`.
    """
    if is_no_chord(label):
        return NO_CHORD
    symbol = parse_chord(label)
    if symbol is None or symbol.quality not in CHORD_INTERVALS:
        return "X"
    return ChordSymbol(symbol.root, "" if symbol.quality in _MAJOR_QUALITIES else "m").label


def _same_chord(a: str, b: str) -> bool:
    """Exact-label equality up to spelling (`C#/E#` == `Db/F`)."""
    if is_no_chord(a) or is_no_chord(b):
        return is_no_chord(a) and is_no_chord(b)
    sa, sb = parse_chord(a), parse_chord(b)
    return sa is not None and sa == sb


def labels_at(progression: Sequence, times: Sequence[float]) -> list[str]:
    """Label sounding at each time: the last change at or before it (`N` before the first)."""
    rows = normalize_progression(progression)
    starts = np.array([s for s, _ in rows], dtype=np.float64)
    index = np.searchsorted(starts, np.asarray(times, dtype=np.float64) + 1e-6, side="right") - 1
    return [rows[i][1] if i >= 0 else NO_CHORD for i in index]


def frame_accuracy(reference: Sequence, estimate: Sequence, duration: float,
                   frame_rate: float = 10.0) -> dict[str, float]:
    """Frame accuracy of an estimated progression against a reference over `[0, duration)`.

    Returns `{"majmin": ..., "exact": ..., "frames": F}`: majmin compares `reduce_majmin` labels,
    exact compares chords up to spelling (quality and slash bass included).
    """
    times = np.arange(int(math.floor(duration * frame_rate + 1e-9))) / frame_rate
    ref, est = labels_at(reference, times), labels_at(estimate, times)
    majmin = sum(reduce_majmin(r) == reduce_majmin(e) for r, e in zip(ref, est))
    exact = sum(_same_chord(r, e) for r, e in zip(ref, est))
    n = max(1, len(times))
    return {"majmin": majmin / n, "exact": exact / n, "frames": float(len(times))}


def _template_bank(vocabulary: ChordVocabulary, harmonic_decay: float
                   ) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Vocabulary chords with known tones: labels `[S-1]`, treble templates `[S-1, 12]` (unit
    norm) and expected bass pitch class `[S-1]`."""
    labels, templates, basses = [], [], []
    # Harmonic h of a tone sounds at +round(12 log2 h) semitones: octaves, fifths, thirds.
    shifts = [round(12 * math.log2(h)) % 12 for h in range(1, 7)]
    for label in vocabulary.labels:
        symbol = parse_chord(label)
        if symbol is None or symbol.quality not in CHORD_INTERVALS:
            continue  # N, UNK and qualities without known tones are never emitted
        template = torch.zeros(12)
        for pc in symbol.pitch_classes():
            for h, shift in enumerate(shifts):
                template[(pc + shift) % 12] += harmonic_decay ** h
        labels.append(label)
        templates.append(template / template.norm())
        basses.append(symbol.bass if symbol.bass is not None else symbol.root)
    if not labels:
        raise ValueError("The chord vocabulary has no chord with known chord tones; "
                         "recognition needs labels such as 'C', 'Am7', 'G/B'.")
    return labels, torch.stack(templates), torch.tensor(basses)


def chord_scores(features: ChromaFeatures, vocabulary: ChordVocabulary,
                 bass_weight: float = 0.6, slash_penalty: float = 0.0,
                 no_chord_score: float = 0.55, silence_db: float = -50.0,
                 relative_silence_db: float = -40.0, harmonic_decay: float = 0.2
                 ) -> tuple[list[str], torch.Tensor]:
    """Per-frame score of each state: labels `[S]` (`N` first) and scores `[S, F]`.

    A chord scores the cosine between treble chroma and its template plus `bass_weight` times
    the (max-normalised) bass chroma at its bass note; slash chords may pay `slash_penalty`
    (0 by default: on egs/example any penalty lost more inversions than it saved). `N` scores `no_chord_score`, and wins outright on frames
    quieter than `silence_db` dBFS or `relative_silence_db` below the loudest frame.
    """
    labels, templates, basses = _template_bank(vocabulary, harmonic_decay)
    treble = features.treble / features.treble.norm(dim=0, keepdim=True).clamp(min=1e-8)
    bass = features.bass / features.bass.max(dim=0, keepdim=True).values.clamp(min=1e-8)
    scores = templates @ treble + bass_weight * bass[basses]  # [S-1, F]
    is_slash = torch.tensor([parse_chord(x).bass is not None for x in labels])
    scores = scores - slash_penalty * is_slash[:, None].float()
    level = db(features.rms)
    top = level.max() if level.numel() else torch.tensor(0.0)
    silent = (level < silence_db) | (level < top + relative_silence_db) | (
        features.treble.sum(0) <= 1e-8)  # [F]
    no_chord = torch.full((1, features.num_frames), no_chord_score)
    scores = torch.cat([no_chord, scores])  # [S, F]
    scores[:, silent] = 0.0
    scores[0, silent] = 10.0
    return [NO_CHORD, *labels], scores


def viterbi(scores: torch.Tensor, change_penalty: float) -> torch.Tensor:
    """Best state path `[F]` maximising summed scores `[S, F]` minus a penalty per change."""
    num_states, num_frames = scores.shape
    if num_frames == 0:
        return torch.zeros(0, dtype=torch.long)
    best = scores[:, 0].clone()  # [S]
    stay = torch.empty(num_frames, num_states, dtype=torch.bool)
    leader = torch.empty(num_frames, dtype=torch.long)
    for f in range(1, num_frames):
        top, arg = best.max(0)
        # Every switch costs the same, so the best predecessor is either itself or the leader.
        switch = top - change_penalty
        stay[f] = best >= switch
        leader[f] = arg
        best = torch.where(stay[f], best, switch) + scores[:, f]
    path = torch.empty(num_frames, dtype=torch.long)
    path[-1] = int(best.argmax())
    for f in range(num_frames - 1, 0, -1):
        path[f - 1] = path[f] if stay[f, path[f]] else leader[f]
    return path


def _to_changes(path: torch.Tensor, labels: list[str], frame_rate: float) -> list[tuple[float, str]]:
    """Collapse a per-frame state path into `(start_s, label)` changes; frame 0 starts at 0."""
    changes: list[tuple[float, str]] = []
    for f, state in enumerate(path.tolist()):
        if not changes or changes[-1][1] != labels[state]:
            # A window centred at f / rate first sees a new chord about half a window earlier
            # than the majority of it does; the midpoint between frames is the unbiased change.
            start = 0.0 if f == 0 else (f - 0.5) / frame_rate
            changes.append((round(start, 4), labels[state]))
    return changes


def recognize_templates(wav: torch.Tensor, sample_rate: int, vocabulary: ChordVocabulary,
                        frame_rate: float = 20.0, change_penalty: float = 2.0,
                        **score_kwargs: float) -> list[tuple[float, str]]:
    """Our recogniser: chroma, chord templates and Viterbi smoothing (see module docstring)."""
    features = chroma_features(wav, sample_rate, frame_rate=frame_rate)
    if features.num_frames == 0:
        return [(0.0, NO_CHORD)]
    labels, scores = chord_scores(features, vocabulary, **score_kwargs)
    return _to_changes(viterbi(scores, change_penalty), labels, features.frame_rate)


def _import_vamp():
    """Import `vamp` with Chordino's plugin folder on VAMP_PATH; clear error when missing."""
    spec = importlib.util.find_spec("chord_extractor")
    if spec is None or spec.origin is None or importlib.util.find_spec("vamp") is None:
        raise ImportError(INSTALL_HINT)
    plugin_dir = Path(spec.origin).parent / "_lib"
    if not os.environ.get("VAMP_PATH") and (plugin_dir / "nnls-chroma.so").is_file():
        # What chord_extractor does on import, without its pkg_resources dependency.
        os.environ["VAMP_PATH"] = str(plugin_dir)
    try:
        import vamp
    except ImportError as err:
        raise ImportError(f"{INSTALL_HINT} (importing vamp failed: {err})") from err
    return vamp


def chordino_available() -> bool:
    """True when the Chordino backend can run (chord-extractor, vamp and the plugin found)."""
    try:
        return "nnls-chroma:chordino" in _import_vamp().list_plugins()
    except ImportError:
        return False


def recognize_chordino(wav: torch.Tensor, sample_rate: int, vocabulary: ChordVocabulary,
                       **params: float) -> list[tuple[float, str]]:
    """Chordino through vamp; `params` override its settings (`rollon`, `boostn`, ...)."""
    vamp = _import_vamp()
    if "nnls-chroma:chordino" not in vamp.list_plugins():
        raise ImportError(f"The Chordino plugin (nnls-chroma) is not on VAMP_PATH="
                          f"{os.environ.get('VAMP_PATH')!r}. {INSTALL_HINT}")
    mono = to_mono(wav)
    if mono.shape[-1] == 0:
        return [(0.0, NO_CHORD)]
    # Chordino's parameters were tuned at 44.1 kHz (the rate chord-extractor feeds it).
    audio = convert_audio(mono[None], sample_rate, 44100, 1)[0].numpy().astype(np.float32)
    settings = {"useNNLS": 1, "rollon": 1.0, "tuningmode": 0, "whitening": 1.0, "s": 0.7,
                "boostn": 0.1, **params}  # chord-extractor's defaults
    result = vamp.collect(audio, 44100, "nnls-chroma:chordino", parameters=settings)
    changes: list[tuple[float, str]] = []
    for item in result.get("list", []):
        label = _in_vocabulary(str(item["label"]), vocabulary)
        start = 0.0 if not changes else max(float(item["timestamp"]), changes[-1][0])
        if not changes or changes[-1][1] != label:
            changes.append((round(start, 4), label))
    return changes or [(0.0, NO_CHORD)]


def _in_vocabulary(label: str, vocabulary: ChordVocabulary) -> str:
    """A label in the vocabulary's spelling; a chord outside it falls back to its root position,
    then to `UNK` (with the vocabulary's warning)."""
    if is_no_chord(label):
        return NO_CHORD
    if label in vocabulary:
        return vocabulary.label(vocabulary.index(label))
    symbol = parse_chord(label)
    if symbol is not None and symbol.bass is not None:
        plain = ChordSymbol(symbol.root, symbol.quality).label
        if plain in vocabulary:
            return vocabulary.label(vocabulary.index(plain))
    return vocabulary.label(vocabulary.index(label))


def recognize_chords(wav: torch.Tensor, sample_rate: int, backend: str = "chordino",
                     vocabulary: ChordVocabulary | None = None,
                     **kwargs: float) -> list[tuple[float, str]]:
    """Chord changes `(start_s, label)` of a waveform `[N]` or `[C, N]`; the first starts at 0.

    Args:
        wav: float audio, channels first when 2-D (channels are averaged).
        sample_rate: its sample rate in Hz.
        backend: `"chordino"` (needs `make install-chords`) or `"templates"` (torch only).
        vocabulary: labels to emit and their spelling; default the builtin 194-label vocabulary
            (the published labels).
        **kwargs: backend settings (templates: `change_penalty`, `bass_weight`, ...; chordino:
            vamp parameters such as `boostn`).
    """
    vocabulary = vocabulary if vocabulary is not None else ChordVocabulary.builtin()
    if backend == "templates":
        return recognize_templates(wav, sample_rate, vocabulary, **kwargs)
    if backend == "chordino":
        return recognize_chordino(wav, sample_rate, vocabulary, **kwargs)
    raise ValueError(f"Unknown chord recognition backend {backend!r}; choose one of {BACKENDS}.")
