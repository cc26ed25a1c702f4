"""CLI: `python -m jasco.prepare ROOT_OR_MANIFEST OUT_DIR [--steps ...]` (see docs/DATA.md)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from jasco.controls.chords.vocabulary import ChordVocabulary
from jasco.prepare.runner import prepare
from jasco.prepare.steps import STEPS

logger = logging.getLogger("jasco.prepare")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m jasco.prepare",
                                description="Prepare a JASCO training dataset folder (chords, melody, drums, latents).")
    p.add_argument("source", type=Path, help="audio folder (scanned recursively) or manifest (.jsonl or its folder)")
    p.add_argument("out_dir", type=Path, help="dataset folder to write (dset/datasource can point at it)")
    p.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    p.add_argument("--workers", type=int, default=2, help="worker processes per step (1 = in-process)")
    p.add_argument("--chords-backend", default="chordino", choices=["chordino", "templates"])
    p.add_argument("--vocabulary", default="builtin", help="builtin | published:PATH (chord_to_index_mapping.pkl) | PATH (.json or .pkl)")
    p.add_argument("--melody-weights", default=None, help="path or URL of deepsalience multif0.h5")
    p.add_argument("--melody-frame-rate", type=float, default=86.0, help="frame rate of existing .npy salience files")
    p.add_argument("--codec", default="facebook/encodec_32khz", help="debug | facebook/encodec_32khz | DIR")
    p.add_argument("--demucs-model", default="htdemucs")
    p.add_argument("--latent-window", type=float, default=20.0, help="encoding window in seconds")
    p.add_argument("--latent-overlap", type=float, default=4.0, help="overlap of encoding windows in seconds")
    p.add_argument("--latent-dtype", default="float16", choices=["float16", "float32"])
    p.add_argument("--segment-check", type=float, default=10.0, help="warn about tracks shorter than this (s)")
    p.add_argument("--shard", type=int, default=0)
    p.add_argument("--num-shards", type=int, default=1)
    p.add_argument("--valid-fraction", type=float, default=0.1)
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> dict:
    """Validated settings dict (what workers receive and prepare.json records)."""
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise ValueError(f"--steps: unknown step(s) {unknown}; choose from {','.join(STEPS)}")
    if not 0 <= args.shard < args.num_shards:
        raise ValueError(f"--shard {args.shard} must be in [0, --num-shards={args.num_shards})")
    if not 0 <= args.valid_fraction < 1:
        raise ValueError(f"--valid-fraction must be in [0, 1), got {args.valid_fraction}")
    try:
        ChordVocabulary.from_spec(args.vocabulary)
    except (OSError, ValueError) as err:
        raise ValueError(f"--vocabulary {args.vocabulary}: {err}") from err
    return {"steps": steps, "workers": max(1, args.workers), "chords_backend": args.chords_backend,
            "vocabulary": args.vocabulary, "melody_weights": args.melody_weights,
            "melody_frame_rate": args.melody_frame_rate, "codec": args.codec, "demucs_model": args.demucs_model,
            "latent_window": args.latent_window, "latent_overlap": args.latent_overlap,
            "latent_dtype": args.latent_dtype, "segment_check": args.segment_check, "shard": args.shard,
            "num_shards": args.num_shards, "valid_fraction": args.valid_fraction,
            "progress": not args.no_progress}


def main(argv: list[str] | None = None) -> int:
    """Run the preparation; exit code 0 when every track succeeded, 1 with failures, 2 on usage errors."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        settings = settings_from(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.source.exists():
        print(f"error: {args.source} does not exist (give an audio folder or a manifest)", file=sys.stderr)
        return 2
    report = prepare(args.source, args.out_dir, settings)
    for row in report.warnings:
        logger.warning("%s [%s]: %s", row["track"], row["step"], row["message"])
    for row in report.failures:
        logger.error("%s [%s]: %s", row["track"], row["step"], row["reason"])
    logger.info("done %s, skipped (already valid) %s, manifests %s, %d failure(s) listed in %s",
                report.done, report.skipped, report.manifest_counts, len(report.failures),
                args.out_dir / "failures.jsonl")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
