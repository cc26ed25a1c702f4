"""`jasco-app` / `python -m jasco.app`: a web page to generate music with a JASCO model (docs/APP.md).

    jasco-app --model facebook/jasco-chords-drums-400M [--host 127.0.0.1 --port 7860 --share]

The model given is loaded before the page is served (a bad one fails here, in one line, exit
status 2); others are loaded when picked on the page. Needs the `app` extra: pip install 'jasco[app]'.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from collections.abc import Sequence

from jasco.app.inputs import AppInputError
from jasco.app.layout import GRADIO_MISSING, build_app, launch
from jasco.app.session import Session, model_choices
from jasco.generate import (
    DEFAULT_MODEL,
    USAGE_ERROR,
    OneLineParser,
    UsageError,
    check_device,
)

PROG = "jasco-app"


def build_parser() -> argparse.ArgumentParser:
    """The command line (errors: one line on stderr, exit status 2)."""
    parser = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=None,
                        help=f"model shown first (exported folder, experiment folder or hub id; default {DEFAULT_MODEL})"
                             "; repeat to list more in the picker")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860, help="port (default %(default)s)")
    parser.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    parser.add_argument("--melody-weights", default=None,
                        help="deepsalience multif0.h5 (path or URL): extracts melodies from uploaded audio clips")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the page until interrupted; 2 when the model or gradio is missing (one line on stderr)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else USAGE_ERROR
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if importlib.util.find_spec("gradio") is None:  # before loading a model for nothing
        print(f"{PROG}: error: {GRADIO_MISSING}", file=sys.stderr)
        return USAGE_ERROR
    given = args.model or [DEFAULT_MODEL]
    try:
        device = check_device(args.device)
    except UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return USAGE_ERROR
    session = Session(device=device, melody_weights=args.melody_weights)
    try:
        session.model(given[0])
    except AppInputError as err:
        print(f"{PROG}: error: --{err}", file=sys.stderr)
        return USAGE_ERROR
    launch(build_app(session, model_choices(given), given[0]), args.host, args.port, args.share)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
