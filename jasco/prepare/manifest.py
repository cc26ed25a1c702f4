"""`python -m jasco.prepare.manifest ROOT OUT.jsonl`: build an audio manifest from a folder."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from jasco.audio.io import AudioReadError
from jasco.data.manifest import ManifestError, build_manifest, save_manifest


def main(argv: list[str] | None = None) -> int:
    """CLI: `python -m jasco.prepare.manifest ROOT OUT.jsonl [--workers N] [--skip-bad] [--relative]`."""
    parser = argparse.ArgumentParser(description="Build a jasco audio manifest (jsonl) from a folder.")
    parser.add_argument("root", type=Path, help="folder scanned recursively for audio files")
    parser.add_argument("out", type=Path, help="manifest to write (.jsonl or .jsonl.gz)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable files with a warning")
    parser.add_argument("--relative", action="store_true",
                        help="store paths relative to the manifest's directory (default: absolute)")
    parser.add_argument("--amplitude", action="store_true", help="decode files to store their peak amplitude")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    try:
        metas = build_manifest(args.root, args.workers, args.skip_bad, args.amplitude, not args.no_progress)
    except (AudioReadError, ManifestError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    save_manifest(args.out, metas, relative=args.relative)
    print(f"Wrote {len(metas)} entries to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
