"""`jasco-generate`: generate one piece of music from a text, with optional chords, drums and melody.

    jasco-generate --model facebook/jasco-chords-drums-400M --chords-mapping chord_to_index_mapping.pkl \
        --text "80s pop with synth" --chords "C@0 D@2 F@4 Ab@6 Bb@7 C@8" --drums drums.wav --out out.wav --plot

Chords: inline `LABEL@START` changes separated by spaces, or a file: `.json` `[[start_s, "label"],
...]` (our chord files), or text with one change per line (`LABEL@START`, `START LABEL` or
`LABEL START`; `#` comments after a space). See docs/INFERENCE.md.
"""
from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from jasco.audio.io import audio_read, audio_write
from jasco.controls.chords.progression import read_chord_file
from jasco.controls.melody.salience import read_salience, salience_segment
from jasco.models.jasco import JASCO

logger = logging.getLogger(__name__)
DEFAULT_MODEL = "facebook/jasco-chords-drums-400M"


def _is_number(text: str) -> bool:
    return re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", text) is not None


def _parse_change(token: str, where: str) -> tuple[float, str]:
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
                changes.append(_parse_change(line, f"chord file {path}, line {n}"))
        return changes
    return [_parse_change(token, "--chords") for token in text.split()]


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(prog="jasco-generate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="hub repo id or exported folder (default %(default)s)")
    parser.add_argument("--text", default="", help="text description")
    parser.add_argument("--chords", help='"C@0 D@2 F@4" or a chord file (.json [[start, label], ...] or text lines)')
    parser.add_argument("--chords-mapping", help="chord vocabulary file (published: chord_to_index_mapping.pkl)")
    parser.add_argument("--drums", help="drum audio file (any rate/channels; cropped or padded to --duration)")
    parser.add_argument("--melody", help="melody salience .npz/.npy [53, frames] (e.g. from jasco.controls.melody.extraction)")
    parser.add_argument("--melody-frame-rate", type=float, default=None,
                        help="frame rate of a .npy salience without its own (default 86, the published one)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds (> training segment: windowed)")
    parser.add_argument("--solver", choices=["euler", "dopri5"], default=None,
                        help="ODE solver (default: euler when --steps is given, else dopri5)")
    parser.add_argument("--steps", type=int, default=None, help="Euler steps (default 100)")
    parser.add_argument("--cfg-all", type=float, default=5.0, help="guidance weight of all conditions (default 5.0)")
    parser.add_argument("--cfg-text", type=float, default=0.0, help="guidance weight of text alone (default 0.0)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the initial noise")
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    parser.add_argument("--out", default="out.wav", help="output audio file (default %(default)s)")
    parser.add_argument("--plot", action="store_true", help="also write a PNG of the controls next to --out")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _melody(path: str, frame_rate: float | None, duration: float, latent_rate: float) -> torch.Tensor:
    salience, rate = read_salience(path) if frame_rate is None else read_salience(path, frame_rate)
    n_frames = int(round(duration * latent_rate))
    return salience_segment(salience, rate, 0.0, n_frames, target_rate=latent_rate)  # [K, T]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    solver = args.solver or ("euler" if args.steps is not None else "dopri5")
    if solver == "dopri5" and args.steps is not None:
        logger.warning("--steps is ignored by the adaptive dopri5 solver.")
    chords = parse_chords(args.chords) if args.chords else None
    model = JASCO.get_pretrained(args.model, device=args.device, chords_mapping_path=args.chords_mapping)
    model.set_generation_params(cfg_coef_all=args.cfg_all, cfg_coef_txt=args.cfg_text, euler=solver == "euler",
                                euler_steps=args.steps or 100, duration=args.duration)
    drums, drums_sr = (audio_read(args.drums) if args.drums else (None, 32000))
    melody = _melody(args.melody, args.melody_frame_rate, args.duration, model.frame_rate) if args.melody else None
    wav = model.generate_music([args.text], chords=chords, drums_wav=drums, drums_sample_rate=drums_sr,
                               melody_salience_matrix=melody, progress=not args.no_progress, seed=args.seed)
    out = audio_write(args.out, wav[0].cpu(), model.sample_rate, strategy="loudness", loudness_compressor=True)
    logger.info("wrote %s (%.2f s)", out, wav.shape[-1] / model.sample_rate)
    if args.plot:
        from jasco.controls.plotting import plot_controls

        png = plot_controls(out.with_suffix(".png"), wav[0].cpu(), model.sample_rate, chords=chords, melody=melody,
                            drums=drums, drums_sample_rate=drums_sr, frame_rate=model.frame_rate,
                            title=args.text or None)
        logger.info("wrote %s", png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
