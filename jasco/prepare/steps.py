"""Per-track work of each `jasco.prepare` step, run inside worker processes.

Each `do_<step>(track, settings)` returns `{"outputs": {manifest_field: path}, "warnings": [...]}`
and raises on failure (the runner lists the reason in failures.jsonl). `done_<step>` tells whether
a previous run already produced a valid output, so the step can be skipped for that track.
Models (codec, melody network, Demucs) are loaded once per worker process.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jasco.audio.io import audio_read
from jasco.controls.chords.progression import read_chord_file, write_chord_file
from jasco.controls.chords.vocabulary import ChordVocabulary
from jasco.controls.drums.stems import find_drum_stem, separate_drums
from jasco.controls.melody.salience import N_MELODY_BINS, read_salience, write_salience
from jasco.data.side_files import CHORDS_SUFFIXES, SALIENCE_SUFFIXES, find_side_file

STEPS = ("manifest", "chords", "melody", "drums", "latents")
_CACHE: dict[tuple, Any] = {}  # per-process models, keyed by what they were built from


def _cached(key: tuple, build) -> Any:
    if key not in _CACHE:
        _CACHE[key] = build()
    return _CACHE[key]


def vocabulary(spec: str) -> ChordVocabulary:
    """`builtin` or `published:PATH` (or a PATH) -> ChordVocabulary."""
    return _cached(("vocab", spec), lambda: ChordVocabulary.from_spec(spec))


def codec(spec: str):
    """The training codec: `debug`, a hub id such as `facebook/encodec_32khz`, or a folder."""
    from jasco.models.builders import get_compression_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return _cached(("codec", spec), lambda: get_compression_model({"compression_model_checkpoint": spec}).to(device))


def out_paths(out_dir: Path, track_id: str) -> dict[str, Path]:
    """Where each step writes for one track."""
    from jasco.data.latents import latent_path

    return {"chords_path": out_dir / "chords" / f"{track_id}.chords.json",
            "salience_path": out_dir / "melody" / f"{track_id}.salience.npz",
            "drums_path": out_dir / "drums" / f"{track_id}.drums.flac",
            "drum_codes_path": out_dir / "drum_codes" / f"{track_id}.npy",
            "latents_path": latent_path(out_dir / "latents", track_id)}


def expected_frames(duration: float, frame_rate: float = 50.0) -> int:
    """Latent frames of a whole track (the codec's ceil framing)."""
    return math.ceil(duration * frame_rate - 1e-6)


def _frames_ok(found: int, duration: float) -> bool:
    # Resampling may change the length by a sample, which can move the ceil by one frame.
    return abs(found - expected_frames(duration)) <= 1


def _input_side(track: dict, field: str, suffixes: tuple[str, ...]) -> Path | None:
    return find_side_file(track["path"], field, suffixes, track["sides"].get(field))


# ---------------------------------------------------------------- chords
def done_chords(track: dict, out: dict[str, Path], settings: dict) -> bool:
    """A readable chord file exists."""
    try:
        read_chord_file(out["chords_path"])
        return True
    except (OSError, ValueError):
        return False


def do_chords(track: dict, out: dict[str, Path], settings: dict) -> dict[str, Any]:
    """Validate and copy an existing chord file, else recognise chords from the audio."""
    vocab = vocabulary(settings["vocabulary"])
    warnings: list[str] = []
    existing = _input_side(track, "chords_path", CHORDS_SUFFIXES)
    if existing is not None:
        progression = read_chord_file(existing)
        source = f"chord file {existing}"
    else:
        from jasco.controls.chords.recognition import recognize_chords

        wav, sr = audio_read(track["path"])
        progression = recognize_chords(wav, sr, backend=settings["chords_backend"], vocabulary=vocab)
        source = f"{settings['chords_backend']} recogniser"
    unknown = sorted({label for _, label in progression if vocab.index(label) == vocab.unk_index
                      and label != "UNK"})
    if unknown:
        warnings.append(f"{source}: labels outside the vocabulary map to UNK: {', '.join(unknown)}")
    out["chords_path"].parent.mkdir(parents=True, exist_ok=True)
    write_chord_file(out["chords_path"], progression)
    return {"outputs": {"chords_path": str(out["chords_path"])}, "warnings": warnings}


# ---------------------------------------------------------------- melody
def done_melody(track: dict, out: dict[str, Path], settings: dict) -> bool:
    """A readable `[53, F]` salience file exists."""
    try:
        salience, _ = read_salience(out["salience_path"])
    except (OSError, ValueError):
        return False
    return salience.shape[0] == N_MELODY_BINS


def do_melody(track: dict, out: dict[str, Path], settings: dict) -> dict[str, Any]:
    """Validate and copy an existing salience file, else extract salience (deepsalience multif0)."""
    existing = _input_side(track, "salience_path", SALIENCE_SUFFIXES)
    if existing is not None:
        salience, rate = read_salience(existing, default_frame_rate=settings["melody_frame_rate"])
        if salience.shape[0] != N_MELODY_BINS:
            raise ValueError(f"salience file {existing} has {salience.shape[0]} bins; expected {N_MELODY_BINS} "
                             "(MIDI 43..95): regenerate it or remove it to extract salience from the audio")
    else:
        if not settings.get("melody_weights"):
            raise ValueError("no salience file and no --melody-weights (path or URL of deepsalience multif0.h5)")
        from jasco.controls.melody.extraction import extract_salience, resolve_weights
        from jasco.controls.melody.network import MultiF0Salience

        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = _cached(("melody", settings["melody_weights"]), lambda: MultiF0Salience.from_keras_h5(
            resolve_weights(settings["melody_weights"])).to(device))
        wav, sr = audio_read(track["path"])
        salience, rate = extract_salience(wav, sr, model=model, device=device), 50.0
    write_salience(out["salience_path"], salience, rate)
    warnings = ["salience is all zero (no voiced frame)"] if not bool(salience.any()) else []
    return {"outputs": {"salience_path": str(out["salience_path"])}, "warnings": warnings}


# ---------------------------------------------------------------- drums
def _drum_stem(track: dict, out: dict[str, Path]) -> Path | None:
    explicit = track["sides"].get("drums_path")
    if explicit is not None:
        return Path(explicit)
    found = find_drum_stem(track["path"])
    if found is not None:
        return found
    return out["drums_path"] if out["drums_path"].is_file() else None


def done_drums(track: dict, out: dict[str, Path], settings: dict) -> bool:
    """A drum stem exists and its cached codes are valid."""
    from jasco.data.drum_codes import is_valid_drum_codes

    if _drum_stem(track, out) is None:
        return False
    if not is_valid_drum_codes(out["drum_codes_path"]):
        return False
    return _frames_ok(np.load(out["drum_codes_path"], mmap_mode="r").shape[0], track["duration"])


def do_drums(track: dict, out: dict[str, Path], settings: dict) -> dict[str, Any]:
    """Use an existing stem or separate one with Demucs, then cache its codebook-0 codes."""
    from jasco.audio.io import audio_write
    from jasco.data.drum_codes import write_drum_codes
    from jasco.models.track_encoding import compute_drum_codes

    stem_path = _drum_stem(track, out)
    if stem_path is None:
        wav, sr = audio_read(track["path"])
        stem = separate_drums(wav, sr, model=settings["demucs_model"])
        tmp = out["drums_path"].with_name(out["drums_path"].stem + ".part.flac")
        audio_write(tmp, stem, sr, normalize=False)
        shutil.move(tmp, out["drums_path"])
        stem_path = out["drums_path"]
    else:
        stem, sr = audio_read(stem_path)
    model = codec(settings["codec"])
    codes = compute_drum_codes(model, stem, sr, settings["latent_window"], settings["latent_overlap"])
    write_drum_codes(out["drum_codes_path"], codes, model.cardinality)
    return {"outputs": {"drums_path": str(stem_path), "drum_codes_path": str(out["drum_codes_path"])},
            "warnings": []}


# ---------------------------------------------------------------- latents
def done_latents(track: dict, out: dict[str, Path], settings: dict) -> bool:
    """A `[T, 128]` latents file of the track's length exists."""
    from jasco.data.latents import is_valid_latents

    path = out["latents_path"]
    return is_valid_latents(path) and _frames_ok(np.load(path, mmap_mode="r").shape[0], track["duration"])


def do_latents(track: dict, out: dict[str, Path], settings: dict) -> dict[str, Any]:
    """Encode the whole track once with the training codec (windowed) and store RAW latents."""
    from jasco.data.latents import write_latents
    from jasco.models.track_encoding import encode_track

    wav, sr = audio_read(track["path"])
    latents = encode_track(codec(settings["codec"]), wav, sr, settings["latent_window"], settings["latent_overlap"])
    write_latents(out["latents_path"], latents, settings["latent_dtype"])
    return {"outputs": {"latents_path": str(out["latents_path"])}, "warnings": []}


DONE = {"chords": done_chords, "melody": done_melody, "drums": done_drums, "latents": done_latents}
DO = {"chords": do_chords, "melody": do_melody, "drums": do_drums, "latents": do_latents}
