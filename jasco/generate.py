"""`jasco-generate`: generate one piece of music from a text, with optional chords, drums and melody.

    jasco-generate --model facebook/jasco-chords-drums-400M --chords-mapping chord_to_index_mapping.pkl \
        --text "80s pop with synth" --chords "C@0 D@2 F@4 Ab@6 Bb@7 C@8" --drums drums.wav --out out.wav --plot

Chords: inline `LABEL@START` changes separated by spaces, or a file: `.json` `[[start_s, "label"],
...]` (our chord files), or text with one change per line (`LABEL@START`, `START LABEL` or
`LABEL START`; `#` comments after a space). See docs/INFERENCE.md.

Exit status: 0 on success; 2 on a user error (a bad option value, a missing or unreadable file, a
control the model lacks), reported as ONE line `jasco-generate: error: ...` on stderr naming the
option; anything else is an internal error, with its traceback.
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import torch

from jasco.audio.io import SOUNDFILE_EXTENSIONS, AudioReadError, audio_read, audio_write
from jasco.controls.chords.progression import read_chord_file
from jasco.controls.chords.vocabulary import ChordVocabulary
from jasco.controls.melody.salience import read_salience, salience_segment
from jasco.models import flow
from jasco.models.adapters import AdapterError
from jasco.models.arguments import (
    MAX_CFG_COEF,
    MAX_DURATION,
    MAX_SEED,
    InvalidInputError,
    int_problem,
    real_problem,
)
from jasco.models.jasco import JASCO
from jasco.models.loaders import ChordVocabularyError, ModelLoadError

logger = logging.getLogger(__name__)
DEFAULT_MODEL = "facebook/jasco-chords-drums-400M"
PROG = "jasco-generate"
USAGE_ERROR = 2  # exit status of a user error
# generate_music / set_generation_params argument -> the option that sets it.
OPTION_OF = {"cfg_coef_all": "--cfg-all", "cfg_coef_txt": "--cfg-text", "euler_steps": "--steps", "steps": "--steps",
             "solver": "--solver", "time_grid": "--time-grid", "sway_coef": "--sway-coef",
             "duration": "--duration", "overlap": "--overlap", "seed": "--seed", "descriptions": "--text",
             "chords": "--chords", "drums_wav": "--drums", "drums_sample_rate": "--drums",
             "melody_salience_matrix": "--melody"}


class UsageError(Exception):
    """A user error: printed as one line `jasco-generate: error: MESSAGE`, exit status 2."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def _number(low: float | None = None, high: float | None = None, low_open: bool = False,
            high_open: bool = False) -> Callable[[str], float]:
    """argparse type: a finite float in range."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = None
        problem = real_problem(value, low, high, low_open, high_open)
        if problem is not None:
            raise argparse.ArgumentTypeError(f"{problem}, got {text!r}")
        return value
    return parse


def _integer(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """argparse type: an int in range."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        problem = int_problem(value, low, high)
        if problem is not None:
            raise argparse.ArgumentTypeError(f"{problem}, got {text!r}")
        return value
    return parse


@contextmanager
def _option(option: str, *errors: type[BaseException]) -> Iterator[None]:
    """Turn `errors` raised inside into a UsageError naming `option`."""
    try:
        yield
    except errors as err:
        raise UsageError(f"{option}: {_one_line(err)}") from err


def _is_number(text: str) -> bool:
    return re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", text) is not None


def parse_change(token: str, where: str) -> tuple[float, str]:
    """`LABEL@START`, `START LABEL` or `LABEL START` → `(start_s, label)`."""
    if "@" in token:
        label, _, start = token.rpartition("@")
        parts = [label.strip(), start.strip()]
    else:
        parts = token.split()
    if len(parts) == 2:
        if _is_number(parts[1]) and parts[0] and not _is_number(parts[0]):
            return float(parts[1]), parts[0]
        if _is_number(parts[0]) and not _is_number(parts[1]):
            return float(parts[0]), parts[1]
    raise ValueError(f"{where}: cannot read chord change {token!r}; write LABEL@START (e.g. C@0 Am@2.5), "
                     "START LABEL or LABEL START.")


def parse_chords(text: str) -> list[tuple[float, str]]:
    """Chord changes `(start_s, label)` from an inline string or a chord file (.json or text lines)."""
    path = Path(text).expanduser()
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"chord file {path} does not exist.")
        if path.suffix == ".json":
            return read_chord_file(path)
        changes = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            line = re.split(r"(?:^|\s)#", line, maxsplit=1)[0].strip()  # `#` inside F#m7 is no comment
            if line:
                changes.append(parse_change(line, f"chord file {path}, line {n}"))
        return changes
    return [parse_change(token, "--chords") for token in text.split()]


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (its errors: one line on stderr, exit status 2)."""
    parser = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="hub repo id or exported folder (default %(default)s)")
    parser.add_argument("--text", default="", help="text description")
    parser.add_argument("--chords", help='"C@0 D@2 F@4" or a chord file (.json [[start, label], ...] or text lines)')
    parser.add_argument("--adapter", default=None,
                        help="LoRA adapter folder (jasco-export --adapter) applied to --model, its base model")
    parser.add_argument("--chords-mapping", help="chord vocabulary file (published: chord_to_index_mapping.pkl)")
    parser.add_argument("--drums", help="drum audio file (any rate/channels; cropped or padded to --duration)")
    parser.add_argument("--melody", help="melody salience .npz/.npy [53, frames] "
                                         "(e.g. from jasco.controls.melody.extraction)")
    parser.add_argument("--melody-frame-rate", type=_number(0, low_open=True), default=None,
                        help="frame rate of a .npy salience without its own (default 86, the published one)")
    parser.add_argument("--duration", type=_number(0, MAX_DURATION, low_open=True), default=10.0,
                        help=f"seconds, in (0, {MAX_DURATION:g}] (longer than the training segment: overlapping "
                             "windows; default 10)")
    parser.add_argument("--overlap", type=_number(0), default=2.0,
                        help="seconds shared by consecutive windows, in [0, training segment) (default 2)")
    parser.add_argument("--solver", choices=list(flow.ODE_SOLVERS), default=flow.DEFAULT_SOLVER,
                        help="ODE solver: fixed steps euler, midpoint, heun, rk4; adaptive dopri5 (the published "
                             "default), bosh3 (default %(default)s)")
    parser.add_argument("--steps", type=_integer(1), default=None,
                        help=f"steps of a fixed-step solver, >= 1 (default {flow.DEFAULT_STEPS})")
    parser.add_argument("--time-grid", choices=list(flow.TIME_GRIDS), default=flow.DEFAULT_TIME_GRID,
                        help="times of the fixed steps (default %(default)s; docs/MODEL.md, Sampling)")
    parser.add_argument("--sway-coef", type=_number(*flow.SWAY_COEF_RANGE, high_open=True),
                        default=flow.DEFAULT_SWAY_COEF,
                        help=f"s of the sway grid, in [-1, {flow.SWAY_COEF_RANGE[1]:.2f}) (default %(default)s)")
    parser.add_argument("--cfg-all", type=_number(0, MAX_CFG_COEF), default=5.0,
                        help=f"guidance weight of all conditions, in [0, {MAX_CFG_COEF:g}] (default 5.0)")
    parser.add_argument("--cfg-text", type=_number(0, MAX_CFG_COEF), default=0.0,
                        help=f"guidance weight of text alone, in [0, {MAX_CFG_COEF:g}] (default 0.0)")
    parser.add_argument("--seed", type=_integer(0, MAX_SEED), default=None, help="seed of the initial noise, >= 0")
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    parser.add_argument("--out", default="out.wav", help="output audio file (default %(default)s)")
    parser.add_argument("--plot", action="store_true", help="also write a PNG of the controls next to --out")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def check_device(text: str | None) -> str | None:
    """`--device` checked: None (automatic), or a torch device this machine has; else UsageError."""
    if text is None:
        return None
    try:
        device = torch.device(text)
    except RuntimeError as err:
        raise UsageError(f"--device {text}: not a device ({_one_line(err)}); use cpu, cuda or cuda:N.") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {text}: CUDA is not available on this machine; use --device cpu.")
    return text


def _run(args: argparse.Namespace) -> int:
    if args.solver in flow.ADAPTIVE_SOLVERS and args.steps is not None:
        logger.warning("--steps is ignored by the adaptive %s solver.", args.solver)
    device = check_device(args.device)
    out = Path(args.out).expanduser()
    if out.suffix and out.suffix.lower() not in SOUNDFILE_EXTENSIONS:
        raise UsageError(f"--out {out}: cannot write {out.suffix} files; use one of "
                         f"{', '.join(sorted(SOUNDFILE_EXTENSIONS))}.")
    # Files first: a typo fails in a second, not after loading the model.
    chords = None
    if args.chords:
        with _option("--chords", ValueError, OSError):
            chords = parse_chords(args.chords)
    if args.chords_mapping:
        with _option("--chords-mapping", ValueError, OSError):
            ChordVocabulary.from_file(args.chords_mapping)
    drums, drums_sr = None, 32000
    if args.drums:
        with _option("--drums", AudioReadError, ValueError, OSError):
            drums, drums_sr = audio_read(args.drums)
    salience = None
    if args.melody:
        with _option("--melody", ValueError, OSError):
            salience, salience_rate = (read_salience(args.melody) if args.melody_frame_rate is None
                                       else read_salience(args.melody, args.melody_frame_rate))
        if not torch.isfinite(salience).all():  # resampling and one-hot encoding would hide them
            raise UsageError(f"--melody {args.melody}: the salience has {int((~torch.isfinite(salience)).sum())} NaN "
                             "or infinite values; extract it again (jasco.controls.melody.extraction).")
    with _option("--chords-mapping", ChordVocabularyError), _option(
            f"--model {args.model}", ModelLoadError, FileNotFoundError, RuntimeError), _option(
            f"--adapter {args.adapter}", AdapterError):
        model = JASCO.get_pretrained(args.model, device=device, chords_mapping_path=args.chords_mapping,
                                     adapter=args.adapter)
    try:
        model.set_generation_params(cfg_coef_all=args.cfg_all, cfg_coef_txt=args.cfg_text, solver=args.solver,
                                    steps=args.steps if args.steps is not None else flow.DEFAULT_STEPS,
                                    time_grid=args.time_grid, sway_coef=args.sway_coef,
                                    duration=args.duration, overlap=args.overlap)
        melody = None
        if salience is not None:
            n_frames = round(args.duration * model.frame_rate)
            melody = salience_segment(salience, salience_rate, 0.0, n_frames, target_rate=model.frame_rate)  # [K, T]
        wav = model.generate_music([args.text], chords=chords, drums_wav=drums, drums_sample_rate=drums_sr,
                                   melody_salience_matrix=melody, progress=not args.no_progress, seed=args.seed)
    except InvalidInputError as err:
        raise UsageError(f"{OPTION_OF.get(err.argument, err.argument)}: {_one_line(err)}") from err
    with _option(f"--out {out}", ValueError, OSError):
        written = audio_write(out, wav[0].cpu(), model.sample_rate, strategy="loudness", loudness_compressor=True)
    logger.info("wrote %s (%.2f s)", written, wav.shape[-1] / model.sample_rate)
    if args.plot:
        from jasco.controls.plotting import plot_controls

        png = plot_controls(written.with_suffix(".png"), wav[0].cpu(), model.sample_rate, chords=chords,
                            melody=melody, drums=drums, drums_sample_rate=drums_sr, frame_rate=model.frame_rate,
                            title=args.text or None)
        logger.info("wrote %s", png)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 done, 2 user error reported on one line of stderr)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0), or an option error already reported on one line (2)
        return exit_.code if isinstance(exit_.code, int) else USAGE_ERROR
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _run(args)
    except UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
