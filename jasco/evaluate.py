"""`jasco-evaluate`: score a folder of generated audio against a folder of conditions, without training code.

    jasco-evaluate GENERATED CONDITIONS [--reference REAL] [--metrics chords,onsets,melody,fad,clap]

Each audio file `GENERATED/NAME.wav` (any audio suffix; drum stems `*.drums.*` are skipped) is
scored against the condition files of the same name in CONDITIONS, in the project's formats
(docs/DATA_FORMATS.md): `NAME.chords.json`, `NAME.drums.wav|.flac` (or `drums/NAME.wav`),
`NAME.salience.npz|.npy` and `NAME.json` (its `description`, for CLAP). FAD compares the whole
set with the audio files of `--reference`. Writes `metrics.csv` (one row per file) and
`summary.json` (means, unavailable metrics and why) to `--out` (default GENERATED) and prints the
means. See docs/EVALUATION.md.

Exit status: 0 on success; 2 on a user error (a missing folder or file, a file without conditions,
conditions shorter than the audio), reported as ONE line `jasco-evaluate: error: ...` on stderr.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from jasco.audio.io import AUDIO_EXTENSIONS, AudioReadError, audio_read
from jasco.controls.chords.progression import read_chord_file
from jasco.controls.drums.stems import find_drum_stem
from jasco.controls.melody.salience import (
    DEFAULT_SALIENCE_FRAME_RATE,
    SalienceError,
    read_salience,
)
from jasco.data.side_files import CHORDS_SUFFIXES, SALIENCE_SUFFIXES, find_side_file
from jasco.metrics import (
    METRIC_KEYS,
    WITH_CONTROLS,
    EvaluationSettings,
    EvaluationTable,
    SampleConditions,
    SampleScorer,
    metric_of,
    set_fad,
)

logger = logging.getLogger(__name__)
PROG = "jasco-evaluate"
USAGE_ERROR = 2
DEFAULT_METRICS = "chords,onsets,melody,fad"
LENGTH_TOLERANCE_S = 0.5  # a condition may be this much shorter than the audio it scores


class UsageError(Exception):
    """A user error: printed as one line `jasco-evaluate: error: MESSAGE`, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = _Parser(prog=PROG, description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("generated", type=Path, help="folder of generated audio files")
    parser.add_argument("conditions", type=Path, help="folder of condition files named after the audio files")
    parser.add_argument("--metrics", default=DEFAULT_METRICS,
                        help=f"comma-separated, of {', '.join(METRIC_KEYS)} (default {DEFAULT_METRICS}; "
                             "fad only with --reference)")
    parser.add_argument("--reference", type=Path, help="folder of real audio: the reference set of FAD")
    parser.add_argument("--out", type=Path, help="folder for metrics.csv and summary.json (default GENERATED)")
    parser.add_argument("--chords-backend", default="templates", choices=("templates", "chordino"))
    parser.add_argument("--onset-window", type=float, default=0.05, help="onset match tolerance, s (default 0.05)")
    parser.add_argument("--melody-weights", help="deepsalience multif0.h5 (path or URL): adds salience_accuracy")
    parser.add_argument("--fad-embedding", default="mel", help="mel (default), vggish or clap")
    parser.add_argument("--fad-weights", help="vggish weights: a local path or URL")
    parser.add_argument("--clap-model", help="CLAP checkpoint (default: the metrics library's)")
    parser.add_argument("--salience-rate", type=float, default=DEFAULT_SALIENCE_FRAME_RATE,
                        help="frames per second of .npy salience files (default %(default)s)")
    parser.add_argument("--cache-dir", type=Path, help="where FAD caches the reference statistics (default OUT)")
    return parser


def settings_of(args: argparse.Namespace) -> EvaluationSettings:
    """The metrics the options ask for, with their options (as the solver's `evaluate.metrics`)."""
    names = [name.strip() for name in args.metrics.split(",") if name.strip()]
    unknown = [name for name in names if name not in METRIC_KEYS]
    if unknown or not names:
        raise UsageError(f"--metrics {args.metrics!r}: choose among {', '.join(METRIC_KEYS)}")
    if args.metrics == DEFAULT_METRICS and args.reference is None:
        names.remove("fad")
    if "fad" in names and args.reference is None:
        raise UsageError("--metrics fad needs --reference REAL, a folder of real audio to compare the set with")
    if not args.onset_window > 0:
        raise UsageError(f"--onset-window {args.onset_window}: give seconds > 0")
    options = {"chords": {"backend": args.chords_backend}, "onsets": {"window_s": args.onset_window},
               "melody": {"weights": args.melody_weights}, "fad": {"embedding": args.fad_embedding, "weights": args.fad_weights},
               "clap": {"model": args.clap_model}}
    return EvaluationSettings(path="", drop_controls=False, metrics={name: options[name] for name in names})


def audio_files(folder: Path, option: str) -> list[Path]:
    """The audio files of `folder` (not recursive, sorted; drum stems left out)."""
    if not folder.is_dir():
        raise UsageError(f"{option} {folder}: no such folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS
                   and ".drums." not in p.name)
    if not files:
        raise UsageError(f"{option} {folder}: no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))}) in it")
    return files


def read_conditions(audio: Path, duration: float, folder: Path, settings: EvaluationSettings,
                    salience_rate: float) -> SampleConditions:
    """The condition files of `audio` in `folder` that the enabled metrics need.

    Raises:
        UsageError: no condition file at all for the enabled metrics, an unreadable one, or one shorter
            than the audio (by more than LENGTH_TOLERANCE_S).
    """
    name = audio.with_suffix("").name
    twin = folder / audio.name  # side files are found next to this (absent) file
    out = SampleConditions(name=name)
    metrics = settings.metrics
    try:
        if "chords" in metrics and (path := find_side_file(twin, "chords_path", CHORDS_SUFFIXES)):
            out.chords = read_chord_file(path)
        if "onsets" in metrics and (path := find_drum_stem(twin)):
            wav, rate = audio_read(path)
            _check_long_enough(path, wav.shape[-1] / rate, duration, audio)
            out.drums = (wav, rate)
        if "melody" in metrics and (path := find_side_file(twin, "salience_path", SALIENCE_SUFFIXES)):
            salience, rate = read_salience(path, default_frame_rate=salience_rate)
            _check_long_enough(path, salience.shape[-1] / rate, duration, audio)
            out.melody = (salience, rate)
        if "clap" in metrics and (path := folder / f"{name}.json").is_file():
            out.text = json.loads(path.read_text(encoding="utf-8")).get("description")
    except (OSError, ValueError, AudioReadError, SalienceError) as err:
        raise UsageError(f"conditions of {audio.name}: {' '.join(str(err).split())}") from err
    wanted = {"chords": out.chords, "onsets": out.drums, "melody": out.melody, "clap": out.text}
    if all(wanted[m] is None for m in metrics if m in wanted) and set(metrics) - {"fad"}:
        raise UsageError(f"{audio}: no condition file for it in {folder} (looked for {name}.chords.json, "
                         f"{name}.drums.wav|.flac, {name}.salience.npz|.npy, {name}.json); name the files alike")
    return out


def _check_long_enough(path: Path, seconds: float, duration: float, audio: Path) -> None:
    if seconds < duration - LENGTH_TOLERANCE_S:
        raise UsageError(f"{path} lasts {seconds:.2f} s but {audio} lasts {duration:.2f} s: it belongs to "
                         "another file; give the conditions the audio was generated from")


def evaluate_folder(args: argparse.Namespace) -> EvaluationTable:
    """Score every generated file; FAD against `--reference` when asked."""
    settings = settings_of(args)
    files = audio_files(args.generated, "GENERATED")
    if not args.conditions.is_dir():
        raise UsageError(f"CONDITIONS {args.conditions}: no such folder")
    references = audio_files(args.reference, "--reference") if "fad" in settings.metrics else []
    table = EvaluationTable()
    scorer = SampleScorer(settings)
    for path in files:
        try:
            wav, rate = audio_read(path)
        except AudioReadError as err:
            raise UsageError(" ".join(str(err).split())) from err
        conditions = read_conditions(path, wav.shape[-1] / rate, args.conditions, settings, args.salience_rate)
        values, unavailable = scorer(wav, rate, conditions)
        table.add(WITH_CONTROLS, conditions, values, unavailable, source=str(path))
    if "fad" in settings.metrics:
        set_fad(table, {WITH_CONTROLS: files}, references, settings.metrics["fad"],
                args.cache_dir or args.out or args.generated)
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        table = evaluate_folder(args)
    except UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return USAGE_ERROR
    csv_path, summary_path = table.write(args.out or args.generated)
    for metric, reason in table.unavailable(WITH_CONTROLS).items():
        print(f"{metric} is unavailable: {reason}")
    unavailable = table.unavailable(WITH_CONTROLS)
    for key, value in table.means(WITH_CONTROLS).items():
        print(f"{key}: {'unavailable' if metric_of(key) in unavailable and math.isnan(value) else f'{value:.4f}'}")
    print(f"{len(table.rows)} files; per file: {csv_path}; summary: {summary_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
