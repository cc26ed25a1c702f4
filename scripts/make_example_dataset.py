"""Synthesise the small example dataset of `egs/example/`: pads, bass, melody and drums.

The generator is `jasco.data.example_dataset` (also used by `dora run solver=jasco/debug` to build
the dataset on first use); this is its command line.

Usage: `python scripts/make_example_dataset.py --out egs/example [--seed 0] [--num-clips 10] [--if-missing]`.
Layout and formats: see egs/README.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    from jasco.data.example_dataset import ensure_example_dataset, make_example_dataset
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from jasco.data.example_dataset import ensure_example_dataset, make_example_dataset

__all__ = ["ensure_example_dataset", "main", "make_example_dataset"]


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("egs/example"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-clips", type=int, default=10)
    parser.add_argument("--if-missing", action="store_true",
                        help="do nothing when a complete dataset with these settings is already there")
    args = parser.parse_args()
    build = ensure_example_dataset if args.if_missing else make_example_dataset
    out = build(args.out, seed=args.seed, num_clips=args.num_clips)
    print(f"Example dataset ({args.num_clips} clips) in {out}")


if __name__ == "__main__":
    main()
