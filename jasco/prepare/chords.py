"""`python -m jasco.prepare.chords`: chord files from audio (`recognize`) and chord vocabularies (`vocab`).

`recognize AUDIO_OR_DIR [--backend templates]` writes `<stem>.chords.json` next to each file (or
under `--out`); `vocab CHORD_DIR OUT.json [--max-size 194 | --vocabulary published:PATH]` builds
the chord -> index map (docs/CHORDS.md).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from jasco.audio.io import audio_read
from jasco.controls.chords.progression import read_chord_file, write_chord_file
from jasco.controls.chords.recognition import BACKENDS, recognize_chords
from jasco.controls.chords.vocabulary import ChordVocabulary, vocabulary_file
from jasco.data.manifest import find_audio_files


def _audio_files(path: Path) -> list[Path]:
    """The audio file itself, or the audio files under a folder (side stems such as `.drums.wav` left out)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is neither an audio file nor a folder.")
    return find_audio_files(path)


def _cmd_recognize(args: argparse.Namespace) -> int:
    """Write `<stem>.chords.json` for each audio file; returns the number of failures."""
    vocabulary = ChordVocabulary.from_spec(args.vocabulary) if args.vocabulary else None
    failures = 0
    for path in _audio_files(args.input):
        out_dir = args.out if args.out is not None else path.parent
        target = out_dir / f"{path.stem}.chords.json"
        if target.exists() and not args.overwrite:
            print(f"skip {path} ({target} exists)")
            continue
        try:
            wav, sr = audio_read(path)
            progression = recognize_chords(wav, sr, backend=args.backend, vocabulary=vocabulary)
        except (OSError, RuntimeError, ValueError) as err:
            failures += 1
            print(f"FAILED {path}: {err}", file=sys.stderr)
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        write_chord_file(target, progression)
        print(f"{path} -> {target} ({len(progression)} changes)")
    return failures


def _cmd_vocab(args: argparse.Namespace) -> int:
    """Build (or adopt) a chord vocabulary and write it to OUT."""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.vocabulary:
        source = vocabulary_file(args.vocabulary)
        if source is None:
            raise ValueError("--vocabulary builtin needs no adopting: the builtin vocabulary is the default.")
        vocabulary = ChordVocabulary.from_file(source)  # validates before adopting
        if source.suffix == args.out.suffix:
            shutil.copyfile(source, args.out)  # byte-identical: the published indices, unchanged
        elif args.out.suffix == ".json":
            vocabulary.save_json(args.out)
        else:
            raise ValueError(f"Cannot write vocabulary {args.out}: use a .json name, or "
                             f"{source.suffix} to copy {source} as is.")
        print(f"Adopted vocabulary {source} ({vocabulary.card} labels) -> {args.out}")
        return 0
    files = sorted(Path(args.chords_dir).rglob("*.chords.json"))
    if not files:
        raise FileNotFoundError(f"No *.chords.json files under {args.chords_dir}; run "
                                "`python -m jasco.prepare.chords recognize` first.")
    vocabulary = ChordVocabulary.from_progressions((read_chord_file(f) for f in files),
                                                   max_size=args.max_size)
    vocabulary.save_json(args.out)
    print(f"Vocabulary of {vocabulary.card} labels from {len(files)} chord files -> {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (`recognize` and `vocab` subcommands)."""
    parser = argparse.ArgumentParser(prog="python -m jasco.prepare.chords",
                                     description="Chord recognition and chord vocabularies.")
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("recognize", help="write <stem>.chords.json for an audio file or folder")
    rec.add_argument("input", type=Path)
    rec.add_argument("--backend", choices=BACKENDS, default="chordino")
    rec.add_argument("--out", type=Path, default=None, help="folder (default: next to the audio)")
    rec.add_argument("--vocabulary", default=None, help="builtin | published:PATH | PATH")
    rec.add_argument("--overwrite", action="store_true")
    voc = sub.add_parser("vocab", help="build a chord -> index vocabulary from chord files")
    voc.add_argument("chords_dir", type=Path)
    voc.add_argument("out", type=Path)
    voc.add_argument("--max-size", type=int, default=194)
    voc.add_argument("--vocabulary", default=None,
                     help="published:PATH adopts that mapping instead (copied to OUT)")
    args = parser.parse_args(argv)
    return _cmd_recognize(args) if args.command == "recognize" else _cmd_vocab(args)


if __name__ == "__main__":
    sys.exit(1 if main() else 0)
