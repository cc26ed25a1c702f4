"""Write a corpus of BAD inputs, one folder per case, indexed by a machine-readable `cases.json`.

Each case is what a user's folder may really hold: a truncated mp3, a 0.2 s clip, NaN / Inf
samples, a peak of 900, digital silence, an empty file, text saved as audio, a broken sidecar,
chord files with bad rows, salience of the wrong shape, drum stems of the wrong length or rate,
a manifest line with a wrong duration. The script only writes the files and says what is wrong
with them; what jasco should do with each is for the tests that use it. Needs numpy, soundfile
and PyAV (no fluidsynth). Same seed -> same samples.

Usage: `python scripts/make_bad_inputs.py [--out egs/bad_inputs] [--seed 0] [--if-missing]`.

`cases.json`: `{"generator": {...}, "cases": {name: {"files": [...], "bad_file": path,
"audio": path | null, "kind": "audio" | "sidecar" | "chords" | "salience" | "drums" |
"manifest", "problem": sentence, "facts": {...}}}}`; paths are relative to cases.json.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_music_corpus import encode_mp3, write_json  # noqa: E402  (sibling script)

GENERATOR_VERSION = 1
SR = 32000  # rate of the bad cases' (otherwise good) audio
SECONDS = 4.0


def tune(rng: np.random.Generator, seconds: float = SECONDS, sr: int = SR) -> np.ndarray:
    """A plain, valid mono clip `[1, N]`: a C major triad with a few harmonics and noise hits."""
    t = np.arange(int(round(seconds * sr))) / sr
    x = sum(0.12 * 0.5 ** h * np.sin(2 * np.pi * f * (h + 1) * t)
            for f in (261.63, 329.63, 392.0) for h in range(3))
    for onset in np.arange(0.0, seconds, 0.5):
        a = int(onset * sr)
        m = min(2000, len(t) - a)
        x[a:a + m] += 0.2 * rng.standard_normal(m) * np.exp(-np.arange(m) / 300)
    return (0.8 * x / np.abs(x).max())[None].astype(np.float32)


def _wav(path: Path, wav: np.ndarray, sr: int = SR, subtype: str = "PCM_16") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wav.T, sr, subtype=subtype)


def _decoded_seconds(path: Path) -> tuple[float, float]:
    """(header-declared duration, decodable duration) of a compressed file, read with PyAV."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        declared = float(stream.duration * stream.time_base) if stream.duration else \
            container.duration / av.time_base
        samples = 0
        try:
            for frame in container.decode(stream):
                samples += frame.samples
        except av.error.FFmpegError:
            pass  # decoding stops at the cut
        return declared, samples / stream.codec_context.sample_rate


def make_cases(out: Path, rng: np.random.Generator) -> dict[str, dict]:
    """Write every case under `out/<case>/`; returns the `cases` table of cases.json."""
    cases: dict[str, dict] = {}

    def case(name: str, kind: str, bad: str, problem: str, files: list[str],
             audio: str | None = "clip.wav", **facts: object) -> None:
        cases[name] = {"files": [f"{name}/{f}" for f in files], "bad_file": f"{name}/{bad}",
                       "audio": f"{name}/{audio}" if audio else None, "kind": kind,
                       "problem": problem, "facts": facts}

    good = tune(rng)
    d = out / "truncated_mp3"
    d.mkdir(parents=True)
    encode_mp3(d / "full.mp3", np.repeat(tune(rng, 6.0, 44100), 2, axis=0), 44100, 128000)
    data = (d / "full.mp3").read_bytes()
    (d / "clip.mp3").write_bytes(data[: len(data) // 2])
    (d / "full.mp3").unlink()
    declared, decodable = _decoded_seconds(d / "clip.mp3")
    case("truncated_mp3", "audio", "clip.mp3", "mp3 cut to half its bytes: the header (Xing/Info) "
         "declares 6 s, only about half of it decodes", ["clip.mp3"], "clip.mp3",
         sample_rate=44100, channels=2, declared_duration=round(declared, 4),
         decodable_duration=round(decodable, 4), bytes_kept=len(data) // 2, bytes_full=len(data))

    _wav(out / "too_short" / "clip.wav", good[:, : int(0.2 * SR)])
    case("too_short", "audio", "clip.wav", "a 0.2 s clip, shorter than any training segment",
         ["clip.wav"], duration=0.2, sample_rate=SR, channels=1)

    bad = good.copy()
    nan_at, inf_at, ninf_at = int(0.5 * SR), int(1.5 * SR), int(2.5 * SR)
    bad[0, nan_at:nan_at + 100] = np.nan
    bad[0, inf_at], bad[0, ninf_at] = np.inf, -np.inf
    _wav(out / "nan_inf" / "clip.wav", bad, subtype="FLOAT")
    case("nan_inf", "audio", "clip.wav", "float wav with NaN samples and +Inf / -Inf samples",
         ["clip.wav"], sample_rate=SR, duration=SECONDS, nan_samples=100, inf_samples=2,
         first_nan_s=nan_at / SR, inf_at_s=[inf_at / SR, ninf_at / SR])

    _wav(out / "peak_900" / "clip.wav", good * (900.0 / np.abs(good).max()), subtype="FLOAT")
    case("peak_900", "audio", "clip.wav", "float wav with peak 900 (never normalised)",
         ["clip.wav"], sample_rate=SR, duration=SECONDS, peak=900.0)

    _wav(out / "silent" / "clip.wav", np.zeros_like(good))
    case("silent", "audio", "clip.wav", "digital silence (every sample 0)", ["clip.wav"],
         sample_rate=SR, duration=SECONDS, peak=0.0)

    (out / "empty_file").mkdir()
    (out / "empty_file" / "clip.wav").write_bytes(b"")
    case("empty_file", "audio", "clip.wav", "an empty file (0 bytes) named .wav", ["clip.wav"],
         size=0)

    (out / "not_audio_mp3").mkdir()
    (out / "not_audio_mp3" / "clip.mp3").write_text(
        "<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n<body>The requested "
        "file was not found on this server.</body></html>\n", encoding="utf-8")
    case("not_audio_mp3", "audio", "clip.mp3", "an HTML error page saved as .mp3", ["clip.mp3"],
         "clip.mp3")
    (out / "not_audio_wav").mkdir()
    (out / "not_audio_wav" / "clip.wav").write_text("title,artist\nBlue Hour,someone\n",
                                                    encoding="utf-8")
    case("not_audio_wav", "audio", "clip.wav", "a CSV text file named .wav", ["clip.wav"])

    _wav(out / "invalid_sidecar" / "clip.wav", good)
    (out / "invalid_sidecar" / "clip.json").write_text(
        '{"description": "calm piano", "bpm": 120, "genre": ', encoding="utf-8")
    case("invalid_sidecar", "sidecar", "clip.json", "sidecar is not valid JSON (cut short)",
         ["clip.wav", "clip.json"])
    _wav(out / "sidecar_wrong_types" / "clip.wav", good)
    write_json(out / "sidecar_wrong_types" / "clip.json",
               {"description": "calm piano", "bpm": "fast", "moods": 5, "title": {"a": 1}})
    case("sidecar_wrong_types", "sidecar", "clip.json", "valid JSON, wrongly typed values: "
         "bpm 'fast', moods 5, title an object", ["clip.wav", "clip.json"],
         bad_keys=["bpm", "moods", "title"])

    chord_cases = {
        "chords_bad_rows": ([[0.0, "C"], [2.0], [3.0, 7], [-1.0, "F"], [4.0, "G", "x"]],
                            "rows that are not [start_s, label]: one element, a numeric label, a "
                            "negative start, three elements", {"first_bad_row": 1}),
        "chords_label_first": ([["C", 0.0], ["G", 2.0]], "rows written [label, start]",
                               {"first_bad_row": 0}),
        "chords_unsorted": ([[0.0, "C"], [2.0, "G"], [1.0, "Am"]], "rows not sorted by start",
                            {"first_bad_row": 2}),
        "chords_unknown_labels": ([[0.0, "C"], [1.0, "Hmaj"], [2.0, "C13#11"], [3.0, "G"]],
                                  "well-formed rows with labels outside the chord vocabulary "
                                  "(one does not parse)", {"unknown_labels": ["Hmaj", "C13#11"]}),
        "chords_object": ({"0.0": "C", "2.0": "G"}, "a JSON object, not a list of rows", {}),
    }
    for name, (rows, problem, facts) in chord_cases.items():
        _wav(out / name / "clip.wav", good)
        write_json(out / name / "clip.chords.json", rows, indent=None)
        case(name, "chords", "clip.chords.json", problem, ["clip.wav", "clip.chords.json"], **facts)
    _wav(out / "chords_not_json" / "clip.wav", good)
    (out / "chords_not_json" / "clip.chords.json").write_text("0.0\t2.0\tC\n2.0\t4.0\tG\n",
                                                              encoding="utf-8")
    case("chords_not_json", "chords", "clip.chords.json", "a tab-separated .lab file named "
         ".chords.json", ["clip.wav", "clip.chords.json"])

    frames = int(SECONDS * 50)
    for name, arrays, problem in (
            ("salience_wrong_shape", {"salience": np.zeros((40, frames), np.float32),
                                      "frame_rate": np.float64(50)},
             f"salience of shape [40, {frames}]: 40 pitch bins instead of 53"),
            ("salience_3d", {"salience": np.zeros((2, 53, frames), np.float32),
                             "frame_rate": np.float64(50)}, "3-D salience [2, 53, F]"),
            ("salience_missing_array", {"pitch": np.zeros((53, frames), np.float32)},
             "an .npz without a 'salience' array")):
        _wav(out / name / "clip.wav", good)
        with open(out / name / "clip.salience.npz", "wb") as f:
            np.savez(f, **arrays)
        case(name, "salience", "clip.salience.npz", problem, ["clip.wav", "clip.salience.npz"],
             shape=list(next(iter(arrays.values())).shape))

    _wav(out / "drums_wrong_length" / "clip.wav", good)
    _wav(out / "drums_wrong_length" / "clip.drums.wav", good[:, : int(2.5 * SR)])
    case("drums_wrong_length", "drums", "clip.drums.wav", "drum stem 2.5 s long, mix 4 s",
         ["clip.wav", "clip.drums.wav"], mix_duration=SECONDS, stem_duration=2.5, sample_rate=SR)
    _wav(out / "drums_wrong_rate" / "clip.wav", good)
    _wav(out / "drums_wrong_rate" / "clip.drums.wav", tune(rng, SECONDS, 16000), sr=16000)
    case("drums_wrong_rate", "drums", "clip.drums.wav", "drum stem at 16000 Hz, mix at 32000 Hz "
         "(same 4 s)", ["clip.wav", "clip.drums.wav"], mix_sample_rate=SR, stem_sample_rate=16000,
         duration=SECONDS)

    d = out / "manifest_wrong_duration"
    _wav(d / "good.wav", good)
    _wav(d / "clip.wav", good)
    lines = [{"path": name, "duration": duration, "sample_rate": SR, "amplitude": None,
              "weight": None, "info_path": None}
             for name, duration in (("good.wav", SECONDS), ("clip.wav", 40.0))]
    (d / "data.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    case("manifest_wrong_duration", "manifest", "data.jsonl", "line 2 declares 40 s for a 4 s "
         "file (line 1 is right); paths are relative to the manifest",
         ["data.jsonl", "good.wav", "clip.wav"], bad_line=2, declared_duration=40.0,
         actual_duration=SECONDS)
    return cases


def make_bad_inputs(out: str | Path, seed: int = 0) -> Path:
    """Write every case under `out` and `out/cases.json` (last)."""
    out = Path(out)
    index = out / "cases.json"
    if index.is_file():  # ours: rebuild from scratch
        shutil.rmtree(out)
    elif out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty and has no cases.json; choose another --out.")
    out.mkdir(parents=True, exist_ok=True)
    cases = make_cases(out, np.random.default_rng(seed))
    write_json(index, {"generator": _stamp(seed), "cases": cases})
    return out


def _stamp(seed: int) -> dict:
    return {"name": "make_bad_inputs", "version": GENERATOR_VERSION, "seed": seed}


def ensure_bad_inputs(out: str | Path, seed: int = 0) -> Path:
    """Build the bad-input corpus unless a complete one with this seed is at `out`."""
    try:
        if json.loads((Path(out) / "cases.json").read_text(encoding="utf-8"))["generator"] == \
                _stamp(seed):
            return Path(out)
    except (OSError, ValueError, KeyError):
        pass
    return make_bad_inputs(out, seed)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("egs/bad_inputs"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--if-missing", action="store_true",
                        help="do nothing when a complete corpus with this seed is there")
    args = parser.parse_args()
    try:
        out = (ensure_bad_inputs if args.if_missing else make_bad_inputs)(args.out, args.seed)
    except FileExistsError as err:
        sys.exit(f"make_bad_inputs: {err}")
    cases = json.loads((out / "cases.json").read_text(encoding="utf-8"))["cases"]
    print(f"{len(cases)} bad-input cases in {out} (index: {out / 'cases.json'})")


if __name__ == "__main__":
    main()
