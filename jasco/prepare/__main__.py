"""CLI: `python -m jasco.prepare ROOT_OR_MANIFEST OUT_DIR [--steps ...]` (see docs/DATA.md).

Exit codes: 0 every track prepared (warnings allowed), 1 some tracks failed (listed in
OUT_DIR/failures.jsonl, the others are in the manifests), 2 a user error or a missing requirement
(one line each on stderr, nothing prepared), 130 interrupted (rerun to resume).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

from jasco.controls.chords.vocabulary import ChordVocabulary
from jasco.data.manifest import ManifestError
from jasco.prepare.requirements import RequirementsError
from jasco.prepare.runner import DEFAULT_SETTINGS, Report, prepare
from jasco.prepare.steps import OPTIONAL_CONTROLS, STEPS

logger = logging.getLogger("jasco.prepare")
SHOWN = 20  # failures / warnings printed at the end; the files hold all of them


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (exit 2), like every other user error of this CLI."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (defaults: `jasco.prepare.runner.DEFAULT_SETTINGS`)."""
    d = DEFAULT_SETTINGS
    p = _Parser(prog="python -m jasco.prepare", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                description="Prepare a JASCO training dataset folder (chords, melody, drums, latents); "
                            "see docs/DATA.md.")
    p.add_argument("source", type=Path, help="audio folder (scanned recursively) or manifest (.jsonl or its folder)")
    p.add_argument("out_dir", type=Path, help="dataset folder to write (dset/datasource can point at it)")
    p.add_argument("--steps", default=",".join(d["steps"]), help=f"comma-separated subset of {','.join(STEPS)}")
    p.add_argument("--transcode", action="store_true",
                   help="also write each track at the codec's rate and channels (32 kHz mono FLAC for EnCodec) "
                        "under OUT_DIR/audio and point the manifests' `path` at it (`original_path` keeps the "
                        "original), so training never resamples")
    p.add_argument("--optional", default=",".join(d["optional"]),
                   help=f"controls ({','.join(OPTIONAL_CONTROLS)}) that may be left null for a track whose input "
                        "and tool are both missing (recorded in warnings.jsonl); `none` makes them required "
                        "(then a missing requirement stops the run up front)")
    p.add_argument("--workers", type=int, default=d["workers"], help="worker processes (1 = in-process)")
    p.add_argument("--chords-backend", default=d["chords_backend"], choices=["auto", "chordino", "templates"],
                   help="auto: Chordino when installed, else templates (with a notice)")
    p.add_argument("--vocabulary", default=d["vocabulary"],
                   help="builtin | published:PATH (chord_to_index_mapping.pkl) | PATH (.json or .pkl)")
    p.add_argument("--melody-weights", default=d["melody_weights"],
                   help="path or URL of deepsalience multif0.h5 (without it, tracks with no salience file get no "
                        "melody)")
    p.add_argument("--melody-frame-rate", type=float, default=d["melody_frame_rate"],
                   help="frame rate of existing .npy salience files")
    p.add_argument("--codec", default=d["codec"], help="debug | a Hugging Face repo id | a codec folder")
    p.add_argument("--demucs-model", default=d["demucs_model"], help="Demucs model for tracks without a drum stem")
    p.add_argument("--latent-window", type=float, default=d["latent_window"], help="encoding window in seconds")
    p.add_argument("--latent-overlap", type=float, default=d["latent_overlap"],
                   help="overlap of encoding windows in seconds")
    p.add_argument("--latent-dtype", default=d["latent_dtype"], choices=["float16", "float32"],
                   help="dtype of the stored latents")
    p.add_argument("--segment-check", type=float, default=d["segment_check"],
                   help="warn about tracks shorter than this (s)")
    p.add_argument("--shard", type=int, default=d["shard"], help="this run's shard (see --num-shards)")
    p.add_argument("--num-shards", type=int, default=d["num_shards"],
                   help="split the tracks over this many runs; then run once without --shard for the manifests")
    p.add_argument("--valid-fraction", type=float, default=d["valid_fraction"],
                   help="fraction of tracks in the valid split (stable hash of the id)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def _list(text: str, flag: str, known: tuple[str, ...], allow_none: bool = False) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if allow_none and items == ["none"]:
        return []
    unknown = [s for s in items if s not in known]
    if unknown:
        raise ValueError(f"{flag}: unknown {', '.join(unknown)}; choose from {','.join(known)}")
    return items


def settings_from(args: argparse.Namespace) -> dict:
    """Validated settings dict (what workers receive and prepare.json records); ValueError names the flag."""
    steps = _list(args.steps, "--steps", STEPS)
    if args.transcode and "transcode" not in steps:
        steps.append("transcode")
    steps = [s for s in STEPS if s in steps]  # the order of STEPS, whatever the order given
    if not steps:
        raise ValueError(f"--steps: give at least one of {','.join(STEPS)}")
    optional = _list(args.optional, "--optional", OPTIONAL_CONTROLS, allow_none=True)
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1 (1 = in-process), got {args.workers}")
    if not 0 <= args.shard < args.num_shards:
        raise ValueError(f"--shard {args.shard} must be in [0, --num-shards={args.num_shards})")
    if not 0 <= args.valid_fraction < 1:
        raise ValueError(f"--valid-fraction must be in [0, 1), got {args.valid_fraction}")
    if args.latent_window <= 0 or not 0 <= args.latent_overlap < args.latent_window:
        raise ValueError(f"--latent-window ({args.latent_window}) must be > 0 and exceed --latent-overlap "
                         f"({args.latent_overlap}, >= 0)")
    if args.melody_frame_rate <= 0:
        raise ValueError(f"--melody-frame-rate must be > 0, got {args.melody_frame_rate}")
    try:
        ChordVocabulary.from_spec(args.vocabulary)
    except (OSError, ValueError) as err:
        raise ValueError(f"--vocabulary {args.vocabulary}: {err}") from err
    return {"steps": steps, "workers": args.workers, "chords_backend": args.chords_backend,
            "vocabulary": args.vocabulary, "melody_weights": args.melody_weights,
            "melody_frame_rate": args.melody_frame_rate, "codec": args.codec, "demucs_model": args.demucs_model,
            "latent_window": args.latent_window, "latent_overlap": args.latent_overlap,
            "latent_dtype": args.latent_dtype, "segment_check": args.segment_check, "shard": args.shard,
            "num_shards": args.num_shards, "valid_fraction": args.valid_fraction, "optional": optional,
            "progress": not args.no_progress}


def _check_paths(source: Path, out_dir: Path) -> None:
    """ValueError naming the path when the source is missing or the output folder cannot be written."""
    if not source.exists():
        raise ValueError(f"{source} does not exist: give your audio folder or a manifest (.jsonl)")
    if source.is_dir() and out_dir.resolve() == source.resolve():
        raise ValueError(f"output folder {out_dir} is the audio folder itself: give another folder (e.g. a new one "
                         "next to it)")
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output folder {out_dir} is a file: give a folder (it is created when missing)")
    parent = next((p for p in [out_dir, *out_dir.absolute().parents] if p.exists()), None)
    if parent is None or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"output folder {out_dir} cannot be written ({parent} is not writable): choose another")


def _print_rows(rows: list[dict], key: str, level: int, where: Path) -> None:
    for row in rows[:SHOWN]:
        logger.log(level, "%s [%s]: %s", row["track"], row["step"], row[key])
    if len(rows) > SHOWN:
        logger.log(level, "... and %d more in %s", len(rows) - SHOWN, where)


def report_run(report: Report, out_dir: Path) -> None:
    """Failures and warnings (the first few; the files hold all), then the one-line summary."""
    suffix = "" if report.settings.get("num_shards", 1) == 1 else (
        f".shard-{report.settings['shard']}-of-{report.settings['num_shards']}")
    _print_rows(report.warnings, "message", logging.WARNING, out_dir / f"warnings{suffix}.jsonl")
    _print_rows(report.failures, "reason", logging.ERROR, out_dir / f"failures{suffix}.jsonl")
    logger.info("%s | %d failure(s) in %s, %d warning(s) in %s", report.summary_line(), len(report.failures),
                out_dir / f"failures{suffix}.jsonl", len(report.warnings), out_dir / f"warnings{suffix}.jsonl")


def main(argv: list[str] | None = None) -> int:
    """Run the preparation; exit code 0 all good, 1 some tracks failed, 2 user error or missing requirement."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        settings = settings_from(args)
        _check_paths(args.source, args.out_dir)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        report = prepare(args.source, args.out_dir, settings)
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RequirementsError as exc:
        for message in exc.messages:
            print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: what was finished is kept; rerun the same command to resume", file=sys.stderr)
        return 130
    report_run(report, args.out_dir)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
