"""Per-track work of each `jasco.prepare` step, run inside worker processes.

Each `do_<step>(track, out, settings)` returns `{"outputs": {manifest_field: path}, "warnings": [...]}`
and raises on failure (the runner lists the reason in failures.jsonl). An optional control whose
input and tool are both missing (melody: no salience file and no weights; drums: no stem and no
Demucs) returns `{"outputs": {}, "warnings": [why], "null": True}`: the track keeps a null
condition instead of being dropped. `done_<step>` tells whether a previous run already produced a
valid output, so the step can be skipped for that track. Inputs are validated against the track
(parse, shape, sample rate, length) and errors name the file (`PrepareInputError`).
Models (codec, melody network, Demucs) are loaded once per worker process.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jasco.audio.convert import convert_audio
from jasco.audio.io import AudioReadError, audio_info, audio_read, audio_write
from jasco.controls.chords.progression import read_chord_file, write_chord_file
from jasco.controls.chords.vocabulary import ChordVocabulary
from jasco.controls.drums.stems import find_drum_stem, separate_drums
from jasco.controls.melody.salience import N_MELODY_BINS, SalienceError, read_salience, write_salience
from jasco.data.side_files import CHORDS_SUFFIXES, SALIENCE_SUFFIXES, find_side_file
from jasco.files import atomic_path
from jasco.prepare.tracks import PrepareInputError

STEPS = ("manifest", "transcode", "chords", "melody", "drums", "latents")
DEFAULT_STEPS = ("manifest", "chords", "melody", "drums", "latents")  # transcode: with --transcode
OPTIONAL_CONTROLS = ("melody", "drums")  # steps whose missing input + tool may leave a null condition
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
    from transformers.utils import logging as hf_logging

    from jasco.models.builders import get_compression_model

    def build():
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Loading weights" bar per worker; restored below
        try:
            return get_compression_model({"compression_model_checkpoint": spec}).to(device)
        finally:
            if bars:
                hf_logging.enable_progress_bar()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return _cached(("codec", spec), build)


def out_paths(out_dir: Path, track_id: str) -> dict[str, Path]:
    """Where each step writes for one track."""
    from jasco.data.latents import latent_path

    return {"transcoded_path": out_dir / "audio" / f"{track_id}.flac",
            "chords_path": out_dir / "chords" / f"{track_id}.chords.json",
            "salience_path": out_dir / "melody" / f"{track_id}.salience.npz",
            "drums_path": out_dir / "drums" / f"{track_id}.drums.flac",
            "drum_codes_path": out_dir / "drum_codes" / f"{track_id}.npy",
            "latents_path": latent_path(out_dir / "latents", track_id)}


def expected_frames(duration: float, frame_rate: float = 50.0) -> int:
    """Latent frames of a whole track (the codec's ceil framing)."""
    return math.ceil(duration * frame_rate - 1e-6)


def side_tolerance(duration: float) -> float:
    """How far (s) a side file's length (drum stem, salience) may differ from the track's: 0.5 s or 2 %."""
    return max(0.5, 0.02 * duration)


def _frames_ok(found: int, duration: float) -> bool:
    # Resampling may change the length by a sample, which can move the ceil by one frame.
    return abs(found - expected_frames(duration)) <= 1


def _input_side(track: dict, field: str, suffixes: tuple[str, ...]) -> Path | None:
    return find_side_file(track["path"], field, suffixes, track["sides"].get(field))


def _check_finite(array: torch.Tensor, what: str, path: Path) -> None:
    bad = int((~torch.isfinite(array)).sum())
    if bad:
        raise PrepareInputError(f"{what} {path} has {bad} non-finite values (NaN/inf): regenerate it, or remove it "
                                "to compute it from the audio", path)


# ---------------------------------------------------------------- transcode
def done_transcode(track: dict, out: dict[str, Path], settings: dict) -> bool:
    """The training-rate copy exists with the right rate, channels and length."""
    try:
        info = audio_info(out["transcoded_path"])
    except AudioReadError:
        return False
    return (info.sample_rate == settings["transcode_rate"] and info.channels == settings["transcode_channels"]
            and abs(info.duration - track["duration"]) < 0.02)


def do_transcode(track: dict, out: dict[str, Path], settings: dict) -> dict[str, Any]:
    """Write the track at the codec's rate and channel count (16-bit FLAC), so training never resamples."""
    wav, sr = audio_read(track["path"])
    wav = convert_audio(wav, sr, settings["transcode_rate"], settings["transcode_channels"])
    warnings = []
    if float(wav.abs().max()) > 1.0:
        warnings.append(f"samples beyond full scale clamped to [-1, 1] in the transcoded copy {out['transcoded_path']}")
        wav = wav.clamp(-1.0, 1.0)
    with atomic_path(out["transcoded_path"]) as tmp:
        audio_write(tmp, wav, settings["transcode_rate"], normalize=False, subtype="PCM_16")
    return {"outputs": {"transcoded_path": str(out["transcoded_path"])}, "warnings": warnings}


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
        try:
            progression = read_chord_file(existing)
        except (OSError, ValueError) as exc:
            raise PrepareInputError(f"{exc} Fix it, or remove it to recognise chords from the audio.", existing) from exc
        limit = track["duration"] + side_tolerance(track["duration"])
        late = [start for start, _ in progression if start > limit]
        if late:
            warnings.append(f"chord file {existing} has {len(late)} change(s) after the end of the track (from "
                            f"{late[0]:.2f} s; the track lasts {track['duration']:.2f} s): they are never used; "
                            "is it for another version of the file?")
        if not progression:
            warnings.append(f"chord file {existing} is empty: no chord (N) throughout")
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
    write_chord_file(out["chords_path"], progression)
    return {"outputs": {"chords_path": str(out["chords_path"])}, "warnings": warnings}


# ---------------------------------------------------------------- melody
NO_MELODY = ("no salience file and no --melody-weights: no melody condition for this track (pass --melody-weights "
             "PATH_OR_URL of deepsalience multif0.h5 to extract it, or put <stem>.salience.npz next to the audio)")


def done_melody(track: dict, out: dict[str, Path], settings: dict) -> bool:
    """A readable `[53, F]` salience file exists."""
    try:
        salience, _ = read_salience(out["salience_path"])
    except (OSError, ValueError):
        return False
    return salience.shape[0] == N_MELODY_BINS


def _check_salience(salience: torch.Tensor, rate: float, track: dict, path: Path) -> list[str]:
    """Finite values covering the track's length (within `side_tolerance`); returns warnings.

    Shorter than the track is an error (the dataset would read the rest as unvoiced); longer is a
    warning (the extra frames are never read).
    """
    _check_finite(salience, "salience file", path)
    covered = salience.shape[1] / rate
    what = (f"salience file {path} covers {covered:.2f} s ({salience.shape[1]} frames at {rate:g} frames/s) but the "
            f"track lasts {track['duration']:.2f} s")
    if covered < track["duration"] - side_tolerance(track["duration"]):
        raise PrepareInputError(f"{what}: is it for another file (or, for .npy, another --melody-frame-rate)? "
                                "Regenerate it, or remove it to extract salience from the audio.", path)
    if covered > track["duration"] + side_tolerance(track["duration"]):
        return [f"{what}: the extra frames are never used; is it for another version of the file?"]
    return []


def do_melody(track: dict, out: dict[str, Path], settings: dict) -> dict[str, Any]:
    """Validate and copy an existing salience file, else extract salience (deepsalience multif0).

    Without a salience file and without `--melody-weights` the track gets no melody (null result).
    """
    existing = _input_side(track, "salience_path", SALIENCE_SUFFIXES)
    if existing is not None:
        try:
            salience, rate = read_salience(existing, default_frame_rate=settings["melody_frame_rate"])
        except SalienceError as exc:
            raise PrepareInputError(f"{exc} Regenerate it, or remove it to extract salience from the audio.",
                                    existing) from exc
        warnings = _check_salience(salience, rate, track, existing)
    elif settings["melody_weights"]:
        from jasco.controls.melody.extraction import extract_salience, resolve_weights
        from jasco.controls.melody.network import MultiF0Salience

        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = _cached(("melody", settings["melody_weights"]), lambda: MultiF0Salience.from_keras_h5(
            resolve_weights(settings["melody_weights"])).to(device))
        wav, sr = audio_read(track["path"])
        salience, rate, warnings = extract_salience(wav, sr, model=model, device=device), 50.0, []
    else:
        return {"outputs": {}, "warnings": [NO_MELODY], "null": True}
    write_salience(out["salience_path"], salience, rate)
    if not bool(salience.any()):
        warnings.append("salience is all zero (no voiced frame)")
    return {"outputs": {"salience_path": str(out["salience_path"])}, "warnings": warnings}


# ---------------------------------------------------------------- drums
NO_DRUMS = ("no drum stem and Demucs is not installed: no drum condition for this track (`pip install "
            "'jasco[drums]'` to separate one, or put <stem>.drums.wav / .flac next to the audio)")


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


def _check_stem(stem: torch.Tensor, sr: int, path: Path, track: dict) -> list[str]:
    """A given drum stem must be finite and as long as its mix (within `side_tolerance`); returns warnings."""
    _check_finite(stem, "drum stem", path)
    length = stem.shape[-1] / sr
    if abs(length - track["duration"]) > side_tolerance(track["duration"]):
        hint = ""
        if sr != track["sample_rate"]:
            hint = (f"; it is at {sr} Hz and the mix at {track['sample_rate']} Hz: was it written with the wrong "
                    "sample rate?")
        raise PrepareInputError(
            f"drum stem {path} lasts {length:.2f} s but its mix {track['path']} lasts {track['duration']:.2f} s{hint} "
            "Its sample i must be the mix's sample i: re-export it, or remove it to separate the drums with Demucs.",
            path)
    if sr != track["sample_rate"]:
        return [f"drum stem {path} is at {sr} Hz, the mix at {track['sample_rate']} Hz: resampled"]
    return []


def _fit_codes(codes: torch.Tensor, n_frames: int) -> torch.Tensor:
    """Crop, or pad by repeating the last code, to the track's frame count."""
    if codes.shape[0] >= n_frames:
        return codes[:n_frames]
    return torch.cat([codes, codes[-1:].expand(n_frames - codes.shape[0])])


def do_drums(track: dict, out: dict[str, Path], settings: dict) -> dict[str, Any]:
    """Use an existing stem or separate one with Demucs, then cache its codebook-0 codes.

    Without a stem and without Demucs the track gets no drums (null result).
    """
    from jasco.data.drum_codes import write_drum_codes
    from jasco.models.track_encoding import compute_drum_codes

    warnings: list[str] = []
    stem_path = _drum_stem(track, out)
    if stem_path is None:
        if not settings["demucs_available"]:
            return {"outputs": {}, "warnings": [NO_DRUMS], "null": True}
        wav, sr = audio_read(track["path"])
        stem = separate_drums(wav, sr, model=settings["demucs_model"]).clamp(-1.0, 1.0)
        with atomic_path(out["drums_path"]) as tmp:
            audio_write(tmp, stem, sr, normalize=False)
        stem_path = out["drums_path"]
    else:
        stem, sr = audio_read(stem_path)
        warnings += _check_stem(stem, sr, stem_path, track)
    model = codec(settings["codec_source"])
    codes = compute_drum_codes(model, stem, sr, settings["latent_window"], settings["latent_overlap"])
    write_drum_codes(out["drum_codes_path"], _fit_codes(codes, expected_frames(track["duration"])), model.cardinality)
    return {"outputs": {"drums_path": str(stem_path), "drum_codes_path": str(out["drum_codes_path"])},
            "warnings": warnings}


# ---------------------------------------------------------------- latents
def done_latents(track: dict, out: dict[str, Path], settings: dict) -> bool:
    """A `[T, 128]` latents file of the track's length exists."""
    from jasco.data.latents import is_valid_latents

    path = out["latents_path"]
    return is_valid_latents(path) and _frames_ok(np.load(path, mmap_mode="r").shape[0], track["duration"])


def do_latents(track: dict, out: dict[str, Path], settings: dict) -> dict[str, Any]:
    """Encode the whole track once with the training codec (windowed) and store RAW latents.

    With `--transcode` the training-rate copy is encoded, so the cache matches what the codec would
    see at training time.
    """
    from jasco.data.latents import write_latents
    from jasco.models.track_encoding import encode_track

    source = track["path"]
    if "transcode" in settings["steps"] and done_transcode(track, out, settings):
        source = str(out["transcoded_path"])
    wav, sr = audio_read(source)
    latents = encode_track(codec(settings["codec_source"]), wav, sr, settings["latent_window"],
                           settings["latent_overlap"])
    write_latents(out["latents_path"], latents, settings["latent_dtype"])  # refuses non-finite latents
    return {"outputs": {"latents_path": str(out["latents_path"])}, "warnings": []}


DONE = {"transcode": done_transcode, "chords": done_chords, "melody": done_melody, "drums": done_drums,
        "latents": done_latents}
DO = {"transcode": do_transcode, "chords": do_chords, "melody": do_melody, "drums": do_drums, "latents": do_latents}
