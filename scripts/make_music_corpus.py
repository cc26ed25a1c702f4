"""Render a small multi-instrument music corpus with known chords, melody and drums.

Each track is written as MIDI (`mido`) and rendered through a General MIDI soundfont with
FluidSynth: a chord progression (bass + pad / piano / guitar comping), a monophonic lead melody
(MIDI 43..95), a GM drum kit (channel 10) and a tempo. The tracks vary what real users' folders
hold: wav / mp3 / flac, 22050 / 44100 / 48000 Hz, mono and stereo, names with spaces and accents
in a sub-folder, with and without sidecars, drum stems, chord and salience files. The ground truth
of every track (chords, melody notes, drum onsets, the MIDI and the solo lead) is kept apart in
`truth/`, so `audio/` looks like a user's own music. Same seed and soundfont -> same samples.

Usage: `python scripts/make_music_corpus.py [--out egs/music] [--tracks 8] [--seconds 10]
[--seed 0] [--soundfont PATH] [--if-missing]`. Needs the Debian packages `fluidsynth` and
`timgm6mb-soundfont` and the pip package `mido` (`pip install -e '.[corpus]'`).
Layout: egs/README.md.

Shapes: `C` channels, `N` samples, `F` salience frames (50 per second).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf

if TYPE_CHECKING:
    import mido

try:
    from jasco.controls.chords.progression import write_chord_file
    from jasco.controls.chords.symbols import ROOT_NAMES, ChordSymbol
    from jasco.controls.chords.vocabulary import ChordVocabulary
    from jasco.controls.melody.salience import notes_to_salience, write_salience
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from jasco.controls.chords.progression import write_chord_file
    from jasco.controls.chords.symbols import ROOT_NAMES, ChordSymbol
    from jasco.controls.chords.vocabulary import ChordVocabulary
    from jasco.controls.melody.salience import notes_to_salience, write_salience

GENERATOR_VERSION = 1
FRAME_RATE = 50  # salience frames per second; track lengths are whole frames
TICKS = 480  # MIDI ticks per quarter note
DRUM_CHANNEL = 9  # GM channel 10
SOUNDFONTS = ("/usr/share/sounds/sf2/TimGM6mb.sf2", "/usr/share/sounds/sf2/default-GM.sf2",
              "/usr/share/sounds/sf2/FluidR3_GM.sf2", "/usr/share/soundfonts/default.sf2")
MAJOR, MINOR = (0, 2, 4, 5, 7, 9, 11), (0, 2, 3, 5, 7, 8, 10)
DEGREE_QUALITIES = {  # scale degree -> qualities it may take (all in the builtin vocabulary)
    "major": {1: ["", "maj7", "6"], 2: ["m", "m7"], 3: ["m", "m7"], 4: ["", "maj7", "6"],
              5: ["", "7"], 6: ["m", "m7"], 7: ["dim", "m7b5"]},
    "minor": {1: ["m", "m7", "m6"], 2: ["dim", "m7b5"], 3: ["", "maj7"], 4: ["m", "m7"],
              5: ["", "7"], 6: ["", "maj7"], 7: ["", "7"]},
}
PATTERNS = {"major": [[1, 5, 6, 4], [1, 6, 2, 5], [1, 4, 5, 1], [6, 4, 1, 5], [1, 3, 4, 5]],
            "minor": [[1, 6, 3, 7], [1, 4, 5, 1], [1, 7, 6, 5], [1, 4, 7, 3]]}
RHYTHMS = [[2, 2, 2, 2], [1, 1, 2, 2, 2], [3, 1, 2, 2], [4, 2, 2], [2, 1, 1, 4], [4, 4]]  # eighths
# GM programs of the lead and the MIDI range each plays in (inside the salience range 43..95).
LEADS = {73: (67, 91), 80: (60, 84), 71: (55, 82), 65: (56, 80), 56: (58, 82), 11: (60, 84),
         68: (60, 84), 81: (55, 79), 40: (62, 88), 42: (45, 69), 57: (46, 70), 75: (67, 91)}
DRUM_NAMES = {36: "kick", 37: "side_stick", 38: "snare", 42: "hihat_closed", 44: "hihat_pedal",
              46: "hihat_open", 49: "crash", 51: "ride"}
KITS = {  # GM note -> steps of a 16-step bar
    "pop": {36: [0, 8, 10], 38: [4, 12], 42: [0, 2, 4, 6, 8, 10, 12, 14]},
    "rock": {36: [0, 6, 8], 38: [4, 12], 42: [0, 2, 4, 6, 8, 10, 12, 14], 49: []},
    "funk": {36: [0, 3, 10], 38: [4, 12], 42: [s for s in range(16) if s != 14], 46: [14]},
    "jazz": {36: [0], 51: [0, 4, 7, 8, 12, 15], 44: [4, 12], 37: [12]},
    "ballad": {36: [0, 8], 37: [12], 42: [0, 4, 8, 12]},
}
STYLES = {
    "pop": dict(bpm=(96, 124), pads=[0, 4], comps=["beats", "arp"], basses=[33, 34],
                bass_patterns=["half", "eighths"], leads=[73, 80, 71], kit="pop", bars_per_chord=1,
                moods=["upbeat", "bright"], keywords=["pop", "catchy"]),
    "rock": dict(bpm=(108, 140), pads=[27, 25], comps=["beats", "hold"], basses=[34, 33],
                 bass_patterns=["eighths"], leads=[81, 56, 57], kit="rock", bars_per_chord=1,
                 moods=["energetic", "driving"], keywords=["rock", "guitar"]),
    "jazz": dict(bpm=(84, 120), pads=[4, 0], comps=["hold", "beats"], basses=[32],
                 bass_patterns=["half"], leads=[65, 56, 11], kit="jazz", bars_per_chord=1,
                 moods=["relaxed", "smooth"], keywords=["jazz", "swing", "keys"]),
    "ambient": dict(bpm=(70, 96), pads=[89, 48], comps=["hold"], basses=[38, 39],
                    bass_patterns=["whole"], leads=[73, 68, 75], kit="ballad", bars_per_chord=2,
                    moods=["calm", "dreamy"], keywords=["ambient", "pad"]),
    "funk": dict(bpm=(96, 118), pads=[16, 7], comps=["offbeats", "beats"], basses=[36, 33],
                 bass_patterns=["octaves", "eighths"], leads=[81, 57, 80], kit="funk",
                 bars_per_chord=1, moods=["groovy", "tight"], keywords=["funk", "groove"]),
    "ballad": dict(bpm=(66, 90), pads=[0, 48], comps=["arp", "hold"], basses=[32, 33],
                   bass_patterns=["whole", "half"], leads=[40, 42, 71], kit="ballad",
                   bars_per_chord=1, moods=["tender", "sad"], keywords=["ballad", "strings"]),
}
PROGRAM_NAMES = {0: "piano", 4: "electric piano", 7: "clavinet", 11: "vibraphone",
                 16: "organ", 25: "acoustic guitar", 27: "clean electric guitar",
                 32: "upright bass", 33: "fingered bass", 34: "picked bass", 36: "slap bass",
                 38: "synth bass", 39: "synth bass", 40: "violin", 42: "cello", 48: "strings",
                 56: "trumpet", 57: "trombone", 65: "alto sax", 68: "oboe", 71: "clarinet",
                 73: "flute", 75: "pan flute", 80: "square lead", 81: "saw lead", 89: "warm pad"}
TITLES = ["Nuit étoilée", "Mañana", "Blue Hour", "Kaffeehaus", "Tidal Lines", "Señales",
          "Over the Ridge", "Après minuit"]


@dataclass(frozen=True)
class Profile:
    """How a track is delivered: format, rate, channels and which side files come with it."""

    fmt: str  # "wav" | "flac" | "mp3"
    subtype: str  # soundfile subtype (wav / flac) or mp3 bit rate ("128k")
    sample_rate: int
    channels: int
    folder: str  # sub-folder of audio/ ("" or "Side B")
    sidecar: bool
    drums: str | None  # drum stem suffix ("wav" | "flac") or None
    chords: bool
    salience: bool


# Track i uses PROFILES[i % 8]: the default 8 tracks cover every format, rate, layout and side file.
PROFILES = (
    Profile("wav", "PCM_16", 44100, 2, "", True, "wav", True, True),
    Profile("mp3", "192k", 44100, 2, "", True, "flac", True, False),
    Profile("flac", "PCM_16", 48000, 1, "", False, "flac", False, True),
    Profile("wav", "PCM_24", 22050, 1, "", True, None, True, True),
    Profile("mp3", "128k", 48000, 1, "Side B", False, None, False, False),
    Profile("flac", "PCM_24", 22050, 2, "Side B", True, "wav", True, True),
    Profile("wav", "PCM_16", 48000, 2, "Side B", False, None, True, False),
    Profile("mp3", "128k", 22050, 2, "Side B", True, "wav", False, True),
)


class MissingDependencyError(RuntimeError):
    """A program, soundfont or package the corpus needs is not installed."""


def find_soundfont(path: str | Path | None = None) -> Path:
    """The GM soundfont to render with: `path`, `$JASCO_SOUNDFONT`, or a Debian location."""
    candidates = [path] if path else [os.environ.get("JASCO_SOUNDFONT") or None, *SOUNDFONTS]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise MissingDependencyError(
        f"No General MIDI soundfont at {path or ', '.join(SOUNDFONTS)}: install the Debian package "
        "timgm6mb-soundfont (apt-get install timgm6mb-soundfont) or pass --soundfont PATH.")


def check_dependencies(soundfont: str | Path | None = None) -> Path:
    """Raise MissingDependencyError (one line, naming the package) unless everything is there."""
    if shutil.which("fluidsynth") is None:
        raise MissingDependencyError("fluidsynth not found on PATH: install the Debian package "
                                     "fluidsynth (apt-get install fluidsynth).")
    if importlib.util.find_spec("mido") is None:
        raise MissingDependencyError("The pip package mido is missing: pip install mido (or "
                                     "pip install -e '.[corpus]').")
    return find_soundfont(soundfont)


def seconds_per_tick(bpm: int) -> float:
    """Seconds of one MIDI tick at the integer tempo (µs per quarter) that the MIDI file stores."""
    return int(round(60e6 / bpm)) / 1e6 / TICKS


def _chord_at(changes: list[tuple[int, ChordSymbol | None]], tick: int) -> ChordSymbol | None:
    return [c for t, c in changes if t <= tick][-1]


def compose(rng: np.random.Generator, style_name: str, n_ticks: int) -> dict:
    """Draw key, tempo, instruments, chords, melody and drums of one track (times in ticks)."""
    style = STYLES[style_name]
    tonic, mode = int(rng.integers(12)), ("major" if rng.random() < 0.6 else "minor")
    scale = MAJOR if mode == "major" else MINOR
    pattern = PATTERNS[mode][rng.integers(len(PATTERNS[mode]))]
    bar, intro = 4 * TICKS, int(rng.random() < 0.3)  # intro: one bar of drums alone (chord N)

    def chord(degree: int) -> ChordSymbol:
        root = (tonic + scale[degree - 1]) % 12
        quality = str(rng.choice(DEGREE_QUALITIES[mode][degree]))
        bass = None
        if quality == "" and rng.random() < 0.25:
            bass = (root + (4 if rng.random() < 0.6 else 7)) % 12  # first / second inversion
        elif quality == "7" and rng.random() < 0.3:
            bass = (root + 4) % 12
        return ChordSymbol(root, quality, bass)

    changes: list[tuple[int, ChordSymbol | None]] = [(0, None)] if intro else []
    span = style["bars_per_chord"] * bar
    for k, start in enumerate(range(intro * bar, n_ticks, span)):
        changes.append((start, chord(pattern[k % len(pattern)])))
        if span == bar and rng.random() < 0.2 and start + bar // 2 < n_ticks:
            changes.append((start + bar // 2, chord(int(rng.integers(1, 8)))))
    changes = [c for i, c in enumerate(changes) if i == 0 or c[1] != changes[i - 1][1]]

    lead = int(rng.choice(style["leads"]))
    low, high = LEADS[lead]
    scale_pcs = {(tonic + i) % 12 for i in scale}
    melody, prev = [], int(rng.integers(low + 6, high - 5))
    for bar_start in range(intro * bar, n_ticks, bar):
        position = 0
        for length in RHYTHMS[rng.integers(len(RHYTHMS))]:
            start, position = bar_start + position * TICKS // 2, position + length
            end = start + int(0.9 * length * TICKS // 2)
            if end > n_ticks - TICKS // 8 or rng.random() < 0.15:
                continue  # past the end, or a rest
            strong = (start - bar_start) % (2 * TICKS) == 0
            pcs = set(_chord_at(changes, start).pitch_classes()) if strong else scale_pcs
            allowed = np.array([m for m in range(low, high + 1) if m % 12 in pcs])
            centre = (low + high) / 2
            weights = np.exp(-np.abs(allowed - prev) / 2.5 - np.abs(allowed - centre) / 12)
            prev = int(rng.choice(allowed, p=weights / weights.sum()))
            melody.append((start, end, prev))

    drums = []
    for bar_start in range(0, n_ticks, bar):
        for note, steps in KITS[style["kit"]].items():
            hits = [0] if note == 49 and bar_start == intro * bar else steps  # crash on the 1
            ticks = [bar_start + s * TICKS // 4 for s in hits]  # 16th-note steps
            drums += [(t, note) for t in ticks if t < n_ticks]
    drums.sort()
    return dict(tonic=tonic, mode=mode, changes=changes, melody=melody, drums=drums, lead=lead,
                pad=int(rng.choice(style["pads"])), comp=str(rng.choice(style["comps"])),
                bass=int(rng.choice(style["basses"])),
                bass_pattern=str(rng.choice(style["bass_patterns"])),
                pan=int(rng.choice([36, 44, 84, 92])), reverb=int(rng.integers(20, 70)),
                velocity_seed=int(rng.integers(2**31)))


def _accompaniment(song: dict, n_ticks: int) -> tuple[list, list]:
    """Pad and bass notes `(start, end, midi, velocity)` from the chord changes."""
    pad, bass = [], []
    ends = [t for t, _ in song["changes"][1:]] + [n_ticks]
    for (a, chord), b in zip(song["changes"], ends):
        if chord is None:
            continue
        voicing = sorted(52 + (pc - 52) % 12 for pc in chord.pitch_classes())
        steps = {"hold": [(a, b - 20)],
                 "beats": [(t, t + 400) for t in range(a, b, TICKS)],
                 "offbeats": [(t + TICKS // 2, t + TICKS - 40) for t in range(a, b, TICKS)],
                 "arp": [(t, t + 220) for t in range(a, b, TICKS // 2)]}[song["comp"]]
        for k, (s, e) in enumerate(x for x in steps if x[0] < b - 20):
            notes = [voicing[k % len(voicing)]] if song["comp"] == "arp" else voicing
            pad += [(s, min(e, b), m, 80) for m in notes]
        root = 36 + ((chord.bass if chord.bass is not None else chord.root) - 36) % 12
        step = {"whole": b - a, "half": 2 * TICKS, "eighths": TICKS // 2,
                "octaves": TICKS // 2}[song["bass_pattern"]]
        for k, t in enumerate(range(a, b, step)):
            up = 12 if song["bass_pattern"] == "octaves" and k % 2 else 0
            bass.append((t, min(t + int(step * 0.85), b), root + up, 90))
    return pad, bass


def write_midi(path: Path | None, parts: dict[str, tuple[int, int, list, dict[int, int]]],
               bpm: int, n_ticks: int) -> mido.MidiFile:
    """A type-1 MIDI file: one track per part `name -> (channel, program, [(start, end, midi,
    velocity)], {controller: value})`, ending at `n_ticks`. Returns the `mido.MidiFile` (saved
    when `path` is set)."""
    import mido

    midi = mido.MidiFile(type=1, ticks_per_beat=TICKS)
    conductor = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=int(round(60e6 / bpm))),
                                mido.MetaMessage("time_signature", numerator=4, denominator=4)])
    conductor.append(mido.MetaMessage("end_of_track", time=n_ticks))
    midi.tracks.append(conductor)
    for name, (channel, program, notes, controls) in parts.items():
        setup = [mido.MetaMessage("track_name", name=name)]
        if channel != DRUM_CHANNEL:
            setup.append(mido.Message("program_change", channel=channel, program=program))
        setup += [mido.Message("control_change", channel=channel, control=c, value=v)
                  for c, v in controls.items()]  # 10 pan, 91 reverb send
        if any(e <= s for s, e, _, _ in notes):
            raise RuntimeError(f"Generator bug: a {name} note ends before it starts.")
        events = sorted([(s, 1, m, v) for s, _, m, v in notes]
                        + [(e, 0, m, 0) for _, e, m, _ in notes])
        track, now = mido.MidiTrack(setup), 0
        for tick, on, note, velocity in events:  # note-offs sort before note-ons at one tick
            kind = "note_on" if on else "note_off"
            track.append(mido.Message(kind, channel=channel, note=note, velocity=velocity,
                                      time=tick - now))
            now = tick
        # All sound off at the end: a stuck voice would keep fluidsynth rendering forever.
        track.append(mido.Message("control_change", channel=channel, control=120, value=0,
                                  time=max(0, n_ticks - now)))
        track.append(mido.MetaMessage("end_of_track", time=0))
        midi.tracks.append(track)
    if path is not None:
        midi.save(str(path))
    return midi


def render_midi(midi: mido.MidiFile, sample_rate: int, soundfont: Path, n_samples: int
                ) -> np.ndarray:
    """Render a `mido.MidiFile` with FluidSynth: float32 stereo `[2, N]`, cropped/padded to N."""
    with tempfile.TemporaryDirectory() as tmp:
        mid, raw = Path(tmp) / "part.mid", Path(tmp) / "part.raw"
        midi.save(str(mid))
        cmd = ["fluidsynth", "-n", "-i", "-q", "-g", "0.4", "-r", str(sample_rate), "-O", "float",
               "-T", "raw", "-E", "little", "-F", str(raw), str(soundfont), str(mid)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"fluidsynth did not finish in 120 s: {' '.join(cmd)}") from None
        if done.returncode != 0 or not raw.is_file():
            raise RuntimeError(f"fluidsynth failed ({' '.join(cmd)}): {done.stderr.strip()}")
        data = np.fromfile(raw, dtype="<f4").reshape(-1, 2).T  # interleaved L/R -> [2, N]
    out = np.zeros((2, n_samples), dtype=np.float32)
    out[:, : min(n_samples, data.shape[1])] = data[:, :n_samples]
    return out


def encode_mp3(path: Path, wav: np.ndarray, sample_rate: int, bit_rate: int = 128000) -> None:
    """Encode float `[C, N]` (C = 1 or 2) as mp3 with PyAV's libmp3lame (ffmpeg CLI fallback)."""
    import av

    layout = "mono" if wav.shape[0] == 1 else "stereo"
    try:
        av.codec.Codec("libmp3lame", "w")
    except Exception:  # PyAV built without lame: use the ffmpeg program when there is one
        if shutil.which("ffmpeg") is None:
            raise MissingDependencyError("mp3 encoding needs PyAV with libmp3lame or the ffmpeg "
                                         "program (apt-get install ffmpeg).") from None
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "in.wav"
            sf.write(str(src), wav.T, sample_rate, subtype="FLOAT")
            subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(src), "-b:a",
                            str(bit_rate), str(path)], check=True)
        return
    with av.open(str(path), "w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=sample_rate, layout=layout)
        stream.bit_rate = bit_rate
        block = 1152 * 8
        for i in range(0, wav.shape[1], block):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(wav[:, i:i + block], dtype=np.float32), format="fltp",
                layout=layout)
            frame.sample_rate, frame.pts = sample_rate, i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def write_audio(path: Path, wav: np.ndarray, sample_rate: int, subtype: str) -> None:
    """Write float `[C, N]` as wav / flac (soundfile `subtype`) or mp3 (`subtype` = "128k")."""
    if path.suffix == ".mp3":
        encode_mp3(path, wav, sample_rate, int(subtype.rstrip("k")) * 1000)
    else:
        sf.write(str(path), wav.T, sample_rate, subtype=subtype)


def write_json(path: Path, obj: object, indent: int | None = 1) -> None:
    """UTF-8 JSON with a final newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")


def make_track(out: Path, index: int, seconds: float, seed: int, soundfont: Path) -> dict:
    """Compose, render and write track `index` and its truth; returns its corpus.json entry."""
    rng = np.random.default_rng([seed, index])
    profile = PROFILES[index % len(PROFILES)]
    order = np.random.default_rng(seed).permutation(sorted(STYLES))  # every style in 6 tracks
    style_name = str(order[index % len(order)])
    style = STYLES[style_name]
    bpm = int(rng.integers(style["bpm"][0], style["bpm"][1] + 1))
    n_frames = int(round(rng.uniform(0.8, 1.2) * seconds * FRAME_RATE))
    duration = n_frames / FRAME_RATE  # every rate here is a multiple of 50: whole samples
    tick_s = seconds_per_tick(bpm)
    n_ticks = int(duration / tick_s)
    song = compose(rng, style_name, n_ticks)
    vel = np.random.default_rng(song["velocity_seed"])
    pad, bass = _accompaniment(song, n_ticks)
    lead = [(s, e, m, int(vel.integers(92, 112))) for s, e, m in song["melody"]]
    drum_velocity = {36: (100, 118), 38: (92, 112), 37: (70, 90), 49: (90, 105)}
    drums = [(t, t + TICKS // 8, n, int(vel.integers(*drum_velocity.get(n, (55, 80)))))
             for t, n in song["drums"]]
    pan, reverb = song["pan"], song["reverb"]
    parts = {"pad": (0, song["pad"], pad, {10: pan, 91: reverb}),
             "bass": (1, song["bass"], bass, {10: 64, 91: reverb // 3}),
             "lead": (2, song["lead"], lead, {10: 64 + (64 - pan) // 2, 91: reverb}),
             "drums": (DRUM_CHANNEL, 0, drums, {10: 64, 91: reverb // 2})}

    title = TITLES[index % len(TITLES)]
    name = f"{index:02d} {title}" if profile.folder else f"track_{index:02d}"
    audio_dir = out / "audio" / profile.folder if profile.folder else out / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    truth_id = f"track_{index:02d}"
    midi = write_midi(out / "truth" / f"{truth_id}.mid", parts, bpm, n_ticks)
    n = n_frames * profile.sample_rate // FRAME_RATE
    rendered = {}
    for group, names in (("band", ("pad", "bass")), ("lead", ("lead",)), ("drums", ("drums",))):
        only = [midi.tracks[0]] + [t for t in midi.tracks[1:] if t.name in names]
        solo = type(midi)(type=1, ticks_per_beat=TICKS, tracks=only)
        rendered[group] = render_midi(solo, profile.sample_rate, soundfont, n)
    if profile.channels == 1:
        rendered = {k: v.mean(axis=0, keepdims=True) for k, v in rendered.items()}
    fade = np.clip((n - 1 - np.arange(n)) / (0.03 * profile.sample_rate), 0, 1)  # 30 ms at the end
    mix = (rendered["band"] + rendered["lead"] + rendered["drums"]) * fade
    gain = float(rng.uniform(0.5, 0.9)) / max(float(np.abs(mix).max()), 1e-9)
    stem = audio_dir / name
    write_audio(stem.with_suffix(f".{profile.fmt}"), mix * gain, profile.sample_rate,
                profile.subtype)
    files = {"audio": f"{stem.name}.{profile.fmt}"}
    if profile.drums:
        files["drums"] = f"{stem.name}.drums.{profile.drums}"
        sf.write(str(audio_dir / files["drums"]), (rendered["drums"] * fade * gain).T,
                 profile.sample_rate, subtype="PCM_16")
    sf.write(str(out / "truth" / f"{truth_id}.lead.flac"), (rendered["lead"].mean(0) * fade * gain),
             profile.sample_rate, subtype="PCM_16")

    def sec(tick: int) -> float:
        return round(tick * tick_s, 6)

    chords = [(sec(t), c.label if c is not None else "N") for t, c in song["changes"]]
    vocabulary = ChordVocabulary.builtin()
    if any(label not in vocabulary.to_dict() for _, label in chords):
        raise RuntimeError(f"Generator bug: a chord of {chords} is not in the builtin vocabulary.")
    notes = [(sec(s), sec(e), m) for s, e, m, _ in lead]
    key = f"{ROOT_NAMES[song['tonic']]} {song['mode']}"
    if profile.chords:
        files["chords"] = f"{stem.name}.chords.json"
        write_chord_file(audio_dir / files["chords"], chords)
    if profile.salience:
        files["salience"] = f"{stem.name}.salience.npz"
        write_salience(audio_dir / files["salience"], notes_to_salience(notes, n_frames), FRAME_RATE)
    instruments = [PROGRAM_NAMES[song[p]] for p in ("pad", "bass", "lead")]
    if profile.sidecar:
        files["sidecar"] = f"{stem.name}.json"
        moods = style["moods"] if index % 2 == 0 else ", ".join(style["moods"])  # both forms
        write_json(audio_dir / files["sidecar"], {
            "title": title, "artist": "jasco music corpus", "key": key,
            "bpm": bpm if index % 4 != 1 else str(bpm), "genre": style_name, "moods": moods,
            "keywords": style["keywords"], "instrument": instruments[2],
            "description": f"{style['moods'][0]} {style_name} with {instruments[0]}, "
                           f"{instruments[1]} and a {instruments[2]} lead, in {key} at {bpm} bpm"})
    folder = f"audio/{profile.folder}/" if profile.folder else "audio/"
    files = {k: folder + v for k, v in files.items()}
    entry = {"id": truth_id, **files, "format": profile.fmt, "subtype": profile.subtype,
             "sample_rate": profile.sample_rate, "channels": profile.channels,
             "duration": duration, "samples": n, "style": style_name, "bpm": bpm, "key": key}
    write_json(out / "truth" / f"{truth_id}.json", {
        **entry, "meter": [4, 4], "seconds_per_tick": tick_s, "midi": f"truth/{truth_id}.mid",
        "lead_stem": f"truth/{truth_id}.lead.flac",
        "programs": {"pad": song["pad"], "bass": song["bass"], "lead": song["lead"]},
        "comp": song["comp"], "bass_pattern": song["bass_pattern"],
        "chords": [list(c) for c in chords], "melody": [list(x) for x in notes],
        "drums": {DRUM_NAMES[k]: [sec(t) for t, n in song["drums"] if n == k]
                  for k in sorted({n for _, n in song["drums"]})},
    }, indent=None)
    return entry


def _stamp(seed: int, tracks: int, seconds: float, soundfont: Path) -> dict:
    return {"generator_version": GENERATOR_VERSION, "seed": seed, "tracks": tracks,
            "seconds": seconds, "soundfont": soundfont.name,
            "soundfont_bytes": soundfont.stat().st_size}


def make_music_corpus(out: str | Path, tracks: int = 8, seconds: float = 10.0, seed: int = 0,
                      soundfont: str | Path | None = None) -> Path:
    """Render `tracks` tracks of about `seconds` s (0.8x..1.2x) under `out`; see egs/README.md."""
    if tracks < 1 or seconds < 2:
        raise ValueError(f"Need tracks >= 1 and seconds >= 2, got {tracks} and {seconds}.")
    font = check_dependencies(soundfont)
    out = Path(out)
    stamp = out / "corpus.json"
    if stamp.is_file():  # ours: rebuild from scratch
        stamp.unlink()
        for sub in ("audio", "truth"):
            shutil.rmtree(out / sub, ignore_errors=True)
    elif any((out / sub).exists() and any((out / sub).iterdir()) for sub in ("audio", "truth")):
        raise FileExistsError(f"{out} holds audio/ or truth/ files not made by this script "
                              "(no corpus.json); choose another --out.")
    (out / "truth").mkdir(parents=True, exist_ok=True)
    entries = [make_track(out, i, seconds, seed, font) for i in range(tracks)]
    write_json(stamp, {**_stamp(seed, tracks, seconds, font), "tracks_index": entries})  # last
    return out


def ensure_music_corpus(out: str | Path, tracks: int = 8, seconds: float = 10.0, seed: int = 0,
                        soundfont: str | Path | None = None) -> Path:
    """Build the corpus at `out` unless a complete one with these settings is already there."""
    out = Path(out)
    try:
        done = json.loads((out / "corpus.json").read_text(encoding="utf-8"))
        done.pop("tracks_index")
        if done == _stamp(seed, tracks, seconds, find_soundfont(soundfont)):
            return out
    except (OSError, ValueError, KeyError, MissingDependencyError):
        pass  # missing, unreadable or other settings: build
    return make_music_corpus(out, tracks=tracks, seconds=seconds, seed=seed, soundfont=soundfont)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("egs/music"))
    parser.add_argument("--tracks", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="mean track length; each track lasts 0.8x..1.2x this")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--soundfont", type=Path, default=None,
                        help="GM .sf2 (default: $JASCO_SOUNDFONT or the Debian TimGM6mb)")
    parser.add_argument("--if-missing", action="store_true",
                        help="do nothing when a complete corpus with these settings is there")
    args = parser.parse_args()
    build = ensure_music_corpus if args.if_missing else make_music_corpus
    try:
        out = build(args.out, tracks=args.tracks, seconds=args.seconds, seed=args.seed,
                    soundfont=args.soundfont)
    except (MissingDependencyError, FileExistsError, ValueError) as err:
        sys.exit(f"make_music_corpus: {err}")
    print(f"Music corpus ({args.tracks} tracks) in {out}: audio/ (the music), truth/ (answers)")


if __name__ == "__main__":
    main()
