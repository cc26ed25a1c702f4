"""The synthesised example dataset (`egs/example`): pads, bass, melody and drums with exact controls.

Every clip comes with exact controls (chord file, melody salience, drum stem) and a ground-truth
file, so that training runs end to end on CPU and control-adherence metrics can be checked against
known answers. Same seed -> byte-identical files. `ensure_example_dataset` builds it on first use
(what `dora run solver=jasco/debug` does when the folder is missing); the command line is
`scripts/make_example_dataset.py` (`make example`). Layout and formats: egs/README.md.

Shapes: `N` samples, `F` salience frames (50 per second), `K` notes x harmonics.
"""
from __future__ import annotations

import io
import json
import math
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import soundfile as sf

from jasco.controls.chords.progression import write_chord_file
from jasco.controls.chords.symbols import ROOT_NAMES, ChordSymbol
from jasco.controls.chords.vocabulary import ChordVocabulary
from jasco.controls.melody.salience import notes_to_salience

GENERATOR_VERSION = 1
SAMPLE_RATE = 32000
FRAME_RATE = 50
HOP = SAMPLE_RATE // FRAME_RATE  # clip lengths are whole salience / latent frames
MAJOR, MINOR = (0, 2, 4, 5, 7, 9, 11), (0, 2, 3, 5, 7, 8, 10)
# Scale degree (1-based) -> qualities it may take, per mode.
DEGREE_QUALITIES = {
    "major": {1: ["", "maj7", "6"], 2: ["m", "m7"], 3: ["m", "m7"], 4: ["", "maj7", "6"],
              5: ["", "7"], 6: ["m", "m7"], 7: ["dim", "m7b5"]},
    "minor": {1: ["m", "m7", "m6"], 2: ["dim", "m7b5"], 3: ["", "maj7", "aug"], 4: ["m", "m7"],
              5: ["", "7"], 6: ["", "maj7"], 7: ["", "7"]},
}
PATTERNS = {"major": [[1, 5, 6, 4], [1, 6, 2, 5], [2, 5, 1, 1], [1, 4, 5, 1], [6, 4, 1, 5]],
            "minor": [[1, 6, 3, 7], [1, 4, 5, 1], [1, 7, 6, 5], [2, 5, 1, 1]]}
# Melody rhythms, in eighth notes per bar of 4/4.
RHYTHMS = [[2, 2, 2, 2], [1, 1, 2, 2, 2], [3, 1, 2, 2], [4, 2, 2], [2, 1, 1, 4], [1, 1, 1, 1, 2, 2]]
STYLES = [
    dict(genre="jazz", moods=["calm", "relaxed"], instrument="piano pad", drums="soft",
         keywords=["jazz", "pad", "brushes"], harmonics=5, rolloff=0.5, kick=[0, 10],
         hats=list(range(0, 16, 2)), gains=(0.5, 0.5, 0.45, 0.5)),
    dict(genre="pop", moods=["upbeat", "happy"], instrument="synth pad", drums="punchy",
         keywords=["pop", "synth", "catchy"], harmonics=7, rolloff=0.7, kick=[0, 4, 8, 12],
         hats=list(range(2, 16, 4)), gains=(0.45, 0.6, 0.5, 0.8)),
    dict(genre="lo-fi", moods=["mellow", "dreamy"], instrument="electric piano", drums="laid-back",
         keywords=["lofi", "chill", "keys"], harmonics=4, rolloff=0.4, kick=[0, 7, 10],
         hats=list(range(0, 16, 2)), gains=(0.55, 0.55, 0.4, 0.6)),
    dict(genre="funk", moods=["groovy", "energetic"], instrument="organ", drums="tight",
         keywords=["funk", "groove", "organ"], harmonics=8, rolloff=0.8, kick=[0, 3, 8, 11],
         hats=list(range(16)), gains=(0.4, 0.7, 0.45, 0.75)),
]


def _envelope(n: int, attack_s: float, release_s: float) -> np.ndarray:
    """Linear attack / sustain / linear release over n samples `[N]`."""
    t = np.arange(n) / SAMPLE_RATE
    return np.clip(np.minimum(t / attack_s, (n / SAMPLE_RATE - t) / release_s), 0.0, 1.0)


def _partials(freqs: np.ndarray, amps: np.ndarray, n: int, vibrato: float = 0.0) -> np.ndarray:
    """Sum of sinusoids `freqs [K]` with amplitudes `amps [K]` over n samples `[N]`."""
    t = np.arange(n) / SAMPLE_RATE
    wobble = 1.0 + vibrato * np.sin(2 * np.pi * 5.0 * t) * np.clip(t / 0.3, 0.0, 1.0)  # [N]
    phase = 2 * np.pi * np.cumsum(freqs[:, None] * wobble[None, :], axis=1) / SAMPLE_RATE  # [K, N]
    return (amps[:, None] * np.sin(phase)).sum(axis=0)


def _hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69) / 12)


def _make_progression(rng: np.random.Generator, tonic: int, mode: str, n_bars: int,
                      bar_s: float) -> list[tuple[float, ChordSymbol]]:
    """Chord changes on bars or half bars, with sevenths and inversions from the scale."""
    scale = MAJOR if mode == "major" else MINOR
    pattern = PATTERNS[mode][rng.integers(len(PATTERNS[mode]))]

    def chord(degree: int) -> ChordSymbol:
        root = (tonic + scale[degree - 1]) % 12
        options = DEGREE_QUALITIES[mode][degree]
        quality = options[rng.integers(len(options))]
        bass = None
        if quality == "" and rng.random() < 0.3:
            bass = (root + (4 if rng.random() < 0.6 else 7)) % 12  # first / second inversion
        elif quality == "7" and rng.random() < 0.4:
            bass = (root + 4) % 12
        return ChordSymbol(root, quality, bass)

    changes = []
    for bar in range(n_bars):
        changes.append((bar * bar_s, chord(pattern[bar % len(pattern)])))
        if rng.random() < 0.25:
            changes.append(((bar + 0.5) * bar_s, chord(int(rng.integers(1, 8)))))
    # A repeated chord is one chord held on, as a chord extractor would report it.
    return [c for i, c in enumerate(changes) if i == 0 or c[1] != changes[i - 1][1]]


def _chord_at(changes: list[tuple[float, ChordSymbol]], time: float) -> ChordSymbol:
    return [c for s, c in changes if s <= time + 1e-9][-1]


def _make_melody(rng: np.random.Generator, tonic: int, mode: str, changes: list, n_bars: int,
                 bar_s: float) -> list[tuple[float, float, int]]:
    """Notes `(start_s, end_s, midi)` in MIDI 55..84: chord tones on beats, scale steps between."""
    scale_pcs = {(tonic + i) % 12 for i in (MAJOR if mode == "major" else MINOR)}
    eighth, prev, notes = bar_s / 8, 67, []
    candidates = np.arange(55, 85)
    for bar in range(n_bars):
        position = 0
        for length in RHYTHMS[rng.integers(len(RHYTHMS))]:
            start = bar * bar_s + position * eighth
            position += length
            if rng.random() < 0.15:
                continue  # a rest
            pcs = set(_chord_at(changes, start).pitch_classes()) if position - length in (0, 4) \
                else scale_pcs
            allowed = candidates[[int(m) % 12 in pcs for m in candidates]]
            weights = np.exp(-np.abs(allowed - prev) / 2.5 - np.abs(allowed - 69) / 12.0)
            prev = int(rng.choice(allowed, p=weights / weights.sum()))
            notes.append((round(start, 6), round(start + 0.9 * length * eighth, 6), prev))
    return notes


def _render_drums(rng: np.random.Generator, style: dict, n_bars: int, bar_s: float,
                  n: int) -> tuple[np.ndarray, dict[str, list[float]]]:
    """Kick, snare and hi-hat hits on a 16-step grid; returns the stem `[N]` and onsets."""
    step = bar_s / 16
    grid = {"kick": style["kick"], "snare": [4, 12], "hihat": style["hats"]}
    onsets = {name: [round((bar * 16 + s) * step, 6) for bar in range(n_bars) for s in steps]
              for name, steps in grid.items()}
    out = np.zeros(n)
    for name, times in onsets.items():
        for time in times:
            if name == "kick":
                m = int(0.35 * SAMPLE_RATE)
                t = np.arange(m) / SAMPLE_RATE
                sweep = 45.0 + 105.0 * np.exp(-t / 0.03)  # pitched-down sine burst
                hit = np.sin(2 * np.pi * np.cumsum(sweep) / SAMPLE_RATE) * np.exp(-t / 0.12)
            elif name == "snare":
                m = int(0.25 * SAMPLE_RATE)
                t = np.arange(m) / SAMPLE_RATE
                hit = (0.6 * rng.standard_normal(m) * np.exp(-t / 0.06)
                       + 0.5 * np.sin(2 * np.pi * 185.0 * t) * np.exp(-t / 0.08))
            else:
                m = int(0.06 * SAMPLE_RATE)
                t = np.arange(m) / SAMPLE_RATE
                bright = np.diff(rng.standard_normal(m + 2), n=2) / 4  # crude high-pass
                hit = 0.35 * bright * np.exp(-t / 0.015)
            begin = int(round(time * SAMPLE_RATE))
            stop = min(n, begin + m)
            out[begin:stop] += hit[: stop - begin] * rng.uniform(0.8, 1.0)
    return out, onsets


def _render_tonal(style: dict, changes: list, melody: list, n: int, duration: float,
                  bar_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pads (harmonics of chord tones), bass (chord bass on half bars) and melody, each `[N]`."""
    pads, bass, lead = np.zeros(n), np.zeros(n), np.zeros(n)
    harmonics = np.arange(1, style["harmonics"] + 1)
    ends = [s for s, _ in changes[1:]] + [duration]
    for (start, chord), end in zip(changes, ends):
        a, b = int(round(start * SAMPLE_RATE)), int(round(end * SAMPLE_RATE))
        midis = [55 + (pc - 55) % 12 for pc in chord.pitch_classes()]
        freqs = np.array([_hz(m) * h * (1 + 0.001 * i) for i, m in enumerate(midis)
                          for h in harmonics])
        amps = np.array([0.2 * style["rolloff"] ** (h - 1) / h for _ in midis for h in harmonics])
        pads[a:b] += _partials(freqs, amps, b - a) * _envelope(b - a, 0.08, 0.12)
        root_midi = 36 + ((chord.bass if chord.bass is not None else chord.root) - 36) % 12
        half = bar_s / 2
        starts = np.arange(start, end - 1e-6, half)
        for s in starts:
            c, d = int(round(s * SAMPLE_RATE)), int(round(min(s + half, end) * SAMPLE_RATE))
            t = np.arange(d - c) / SAMPLE_RATE
            tone = _partials(np.array([1.0, 2.0, 3.0]) * _hz(root_midi), np.array([1, .5, .25]),
                             d - c)
            bass[c:d] += 0.5 * tone * np.exp(-t / 0.5) * _envelope(d - c, 0.005, 0.03)
    odd = np.array([1, 3, 5, 7])  # clarinet-like odd harmonics: a timbre apart from the pads
    for start, end, midi in melody:
        a, b = int(round(start * SAMPLE_RATE)), int(round(end * SAMPLE_RATE))
        tone = _partials(odd * _hz(midi), 0.4 / odd, b - a, vibrato=0.004)
        lead[a:b] += tone * _envelope(b - a, 0.02, 0.05)
    return pads, bass, lead


def _to_pcm16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16)


def _write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Like np.savez_compressed, but with fixed zip timestamps so the bytes are reproducible."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asanyarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue())


def _write_json(path: Path, obj: object, indent: int | None = 1) -> None:
    path.write_text(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")


def make_clip(out: Path, clip_id: str, rng: np.random.Generator) -> dict:
    """Synthesise one clip and its side files under `out`; returns its manifest entry."""
    vocabulary = ChordVocabulary.builtin()
    style = STYLES[rng.integers(len(STYLES))]
    bpm, tonic = int(rng.integers(90, 131)), int(rng.integers(12))
    mode = "major" if rng.random() < 0.6 else "minor"
    bar_s = 4 * 60.0 / bpm
    n_bars = int(rng.integers(math.ceil(12.05 / bar_s), math.floor(19.95 / bar_s) + 1))
    n = int(round(n_bars * bar_s * SAMPLE_RATE / HOP)) * HOP
    duration = n / SAMPLE_RATE
    changes = _make_progression(rng, tonic, mode, n_bars, bar_s)
    progression = [(round(s, 6), c.label) for s, c in changes]
    if any(label not in vocabulary.to_dict() for _, label in progression):
        raise RuntimeError(f"Generator bug: a chord of {progression} is not in the vocabulary.")
    melody = _make_melody(rng, tonic, mode, changes, n_bars, bar_s)
    pads, bass, lead = _render_tonal(style, changes, melody, n, duration, bar_s)
    drums, onsets = _render_drums(rng, style, n_bars, bar_s, n)
    g_pad, g_bass, g_lead, g_drums = style["gains"]
    drums = g_drums * drums
    mix = g_pad * pads + g_bass * bass + g_lead * lead + drums
    scale = 0.9 / np.abs(mix).max()  # same gain on the stem: it stays exactly the mix's drums
    mix_pcm, drums_pcm = _to_pcm16(mix * scale), _to_pcm16(drums * scale)

    audio = out / "audio"
    sf.write(audio / f"{clip_id}.wav", mix_pcm, SAMPLE_RATE, subtype="PCM_16")
    sf.write(audio / f"{clip_id}.drums.wav", drums_pcm, SAMPLE_RATE, subtype="PCM_16")
    write_chord_file(audio / f"{clip_id}.chords.json", progression)
    _write_npz(audio / f"{clip_id}.salience.npz", salience=notes_to_salience(melody, n // HOP),
               frame_rate=np.float32(FRAME_RATE))
    key = f"{ROOT_NAMES[tonic]} {mode}"
    mood = style["moods"][0]
    _write_json(audio / f"{clip_id}.json", {
        "title": f"{mood.capitalize()} {style['genre']} sketch {clip_id[-2:]}",
        "artist": "jasco example generator", "key": key, "bpm": bpm, "genre": style["genre"],
        "moods": style["moods"], "keywords": style["keywords"],
        "description": f"{mood} {style['genre']} {style['instrument']} with {style['drums']} "
                       f"drums at {bpm} bpm",
        "name": clip_id, "instrument": style["instrument"],
    })
    _write_json(out / "truth" / f"{clip_id}.json", {
        "id": clip_id, "bpm": bpm, "key": key, "meter": [4, 4], "duration": duration,
        "sample_rate": SAMPLE_RATE, "chords": [list(row) for row in progression],
        "melody": [list(note) for note in melody], "drums": onsets,
    }, indent=None)
    rel = f"../audio/{clip_id}"
    return {"path": f"{rel}.wav", "duration": duration, "sample_rate": SAMPLE_RATE,
            "amplitude": float(np.abs(mix_pcm.astype(np.int32)).max()) / 32768, "weight": 1.0,
            "info_path": f"{rel}.json", "chords_path": f"{rel}.chords.json",
            "salience_path": f"{rel}.salience.npz", "drums_path": f"{rel}.drums.wav"}


def _stamp(seed: int, num_clips: int) -> dict:
    return {"generator_version": GENERATOR_VERSION, "seed": seed, "num_clips": num_clips}


def make_example_dataset(out: str | Path, seed: int = 0, num_clips: int = 10) -> Path:
    """Write `num_clips` clips, their side files and train/valid manifests under `out`."""
    if num_clips < 2:
        raise ValueError(f"num_clips must be >= 2 (one train and one valid clip), got {num_clips}.")
    out = Path(out)
    (out / "generator.json").unlink(missing_ok=True)  # an interrupted rebuild must not look done
    for sub in ("audio", "truth", "train", "valid"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    # One generator per clip: clip i is the same whatever num_clips is.
    entries = [make_clip(out, f"clip_{i:02d}", np.random.default_rng([seed, i]))
               for i in range(num_clips)]
    n_valid = max(1, num_clips // 5)
    for split, rows in (("train", entries[:-n_valid]), ("valid", entries[-n_valid:])):
        lines = [json.dumps(row) + "\n" for row in rows]
        (out / split / "data.jsonl").write_text("".join(lines), encoding="utf-8")
    _write_json(out / "generator.json", _stamp(seed, num_clips))  # last: marks completion
    return out


def is_complete(path: str | Path, seed: int = 0, num_clips: int = 10) -> bool:
    """True when `path` holds a complete example dataset built with these settings."""
    path = Path(path)
    try:
        stamp = json.loads((path / "generator.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False  # missing or unreadable stamp
    return stamp == _stamp(seed, num_clips) and all((path / split / "data.jsonl").is_file()
                                                    for split in ("train", "valid"))


def ensure_example_dataset(path: str | Path, seed: int = 0, num_clips: int = 10) -> Path:
    """Build the example dataset at `path` unless a complete one with these settings is there.

    It is built in a temporary sibling folder, then renamed to `path` (the manifests hold relative
    paths): processes that start together (several ranks of one run) never see a half-written one,
    and the first to finish wins.
    """
    path = Path(path)
    if is_complete(path, seed, num_clips):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    building = path.with_name(f".{path.name}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    make_example_dataset(building, seed=seed, num_clips=num_clips)
    if path.exists() and not is_complete(path, seed, num_clips):
        shutil.rmtree(path, ignore_errors=True)  # a stale or interrupted build
    try:
        building.rename(path)
    except OSError:  # another process renamed its own build first
        if not is_complete(path, seed, num_clips):
            raise
        shutil.rmtree(building, ignore_errors=True)
    return path
