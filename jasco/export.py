"""`jasco-export` / `python -m jasco.export SIG_OR_PATH OUT_DIR`: export a training run for inference.

SIG_OR_PATH is a `checkpoint.th`, an experiment folder, or a Dora signature (`SIG` or `//sig/SIG`,
looked up as `<dora dir>/xps/SIG/checkpoint.th`; dora dir: `$JASCO_DORA_DIR`, else the team
config, else `outputs`). OUT_DIR receives
`state_dict.bin` and `compression_state_dict.bin` (see jasco.utils.export), loadable with
`JASCO.get_pretrained(OUT_DIR)` and `jasco-generate --model OUT_DIR`.
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from jasco.utils.export import export_checkpoint, find_checkpoint


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = argparse.ArgumentParser(prog="jasco-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", metavar="SIG_OR_PATH", help="checkpoint.th, experiment folder or Dora signature")
    parser.add_argument("out_dir", metavar="OUT_DIR",
                        help="folder to write state_dict.bin and compression_state_dict.bin")
    parser.add_argument("--dora-dir", default=None,
                        help="Dora folder for signatures (default $JASCO_DORA_DIR, else the team config)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    checkpoint = find_checkpoint(args.source, args.dora_dir)
    out = export_checkpoint(checkpoint, args.out_dir)
    print(f"exported {checkpoint} -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
