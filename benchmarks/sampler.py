"""Benchmark the ODE samplers: NFE, latency and error against a tight dopri5 reference.

    python benchmarks/sampler.py                          # trains (or reloads) a small model first
    python benchmarks/sampler.py --device cuda --frames 500

A small text + chords model (`--dim`, `--layers`, 4 heads) is trained for `--train-steps` steps on
4 s crops of `egs/example` clips (`make example`) encoded by the debug codec, so that its guided field
is not near-linear; its weights are cached in `--cache` and reused by later runs with the same
settings. Then every sampler integrates the same guided field (weights `--cfg-all`/`--cfg-text`)
from the same noise `[B, T, F]`, and is compared with dopri5 at atol = rtol = 1e-6: relative RMS
error `rms(z - z_ref) / rms(z_ref)`, NFE (guided evaluations), wall time and time per NFE. Rows
with `bf16` evaluate the network under bfloat16 autocast (the ODE state stays fp32). Rows take turns
`--rounds` times; the latency is the median over rounds.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from jasco.audio.io import audio_read
from jasco.controls.chords.progression import read_chord_file
from jasco.controls.chords.vocabulary import ChordVocabulary, frame_chords
from jasco.data.attributes import ConditioningAttributes
from jasco.models import flow
from jasco.models.codec import EncodecCompressionModel
from jasco.models.flow_matching import FlowMatchingModel
from jasco.modules.conditioners import (
    ChordsConditioner,
    ConditionProvider,
    HashedTextConditioner,
)
from jasco.modules.fuser import ConditionFuser

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_TOL = 1e-6
# (solver, steps, time grid, autocast dtype or None); adaptive rows give their tolerance as `steps`.
ROWS: list[tuple[str, float, str, str | None]] = [
    ("dopri5", 1e-5, "-", None), ("bosh3", 1e-3, "-", None),
    *[("euler", n, grid, None) for n in (10, 25, 50) for grid in ("uniform", "sway")],
    *[("midpoint", n, grid, None) for n in (3, 4, 5, 7, 8, 9) for grid in ("uniform", "sway")],
    *[("heun", n, grid, None) for n in (3, 4, 5) for grid in ("uniform", "sway")],
    *[("rk4", n, grid, None) for n in (2, 3, 4) for grid in ("uniform", "sway")],
    ("midpoint", 5, "uniform", "bfloat16"), ("midpoint", 8, "uniform", "bfloat16"), ("dopri5", 1e-5, "-", "bfloat16"),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=128, help="transformer width of the trained model")
    parser.add_argument("--clips", type=int, default=16, help="clips of --data to train on (first 8 s of each)")
    parser.add_argument("--layers", type=int, default=4, help="transformer layers of the trained model")
    parser.add_argument("--train-steps", type=int, default=300, help="training steps (AdamW, lr 1e-3)")
    parser.add_argument("--batch-size", type=int, default=8, help="training batch size")
    parser.add_argument("--frames", type=int, default=200, help="latent frames per crop and per sample (50/s)")
    parser.add_argument("--samples", type=int, default=2, help="B, samples generated per sampler")
    parser.add_argument("--cfg-all", type=float, default=5.0, help="guidance weight of all conditions")
    parser.add_argument("--cfg-text", type=float, default=0.0, help="guidance weight of the text alone")
    parser.add_argument("--rounds", type=int, default=1, help="timed repetitions of every row (median)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "benchmarks",
                        help="folder of the trained model's weights (default %(default)s)")
    parser.add_argument("--data", type=Path, default=ROOT / "egs" / "example" / "audio",
                        help="folder of .wav + .json (description) + .chords.json (default %(default)s)")
    return parser.parse_args()


def build_model(args: argparse.Namespace) -> FlowMatchingModel:
    """A text + chords model (hashed text, cross-attention; chords concatenated), 20% CFG dropout."""
    provider = ConditionProvider({"description": HashedTextConditioner(args.dim),
                                  "chords": ChordsConditioner(16, n_frames=args.frames)})
    fuser = ConditionFuser({"cross": ["description"], "ignore": ["chords"]})
    return FlowMatchingModel(provider, fuser, dim=args.dim, num_heads=4, num_layers=args.layers, chords_dim=16,
                             cfg_dropout=0.2).to(args.device)


def load_clips(args: argparse.Namespace) -> list[tuple[torch.Tensor, str, torch.Tensor]]:
    """Up to `--clips` clips as (normalised latents [T_clip, F] of their first 8 s, description, chords [T_clip])."""
    wavs = sorted(w for w in args.data.glob("*.wav") if not w.name.endswith(".drums.wav"))[:args.clips]
    if not wavs:
        sys.exit(f"no .wav files in {args.data}: run `make example` first (or pass --data)")
    codec = EncodecCompressionModel.debug()
    vocab = ChordVocabulary.builtin()
    clips = []
    for path in wavs:
        wav, sr = audio_read(path)
        if sr != codec.sample_rate:
            sys.exit(f"{path}: {sr} Hz, the benchmark expects {codec.sample_rate} Hz clips")
        with torch.no_grad():
            z = codec.encode(wav.mean(0, keepdim=True)[None, :, :8 * sr])[0]  # [T_clip, F]
        meta = json.loads(path.with_suffix(".json").read_text())
        chords = frame_chords(read_chord_file(path.with_suffix(".chords.json")), vocab, z.shape[0], 50.0)
        clips.append((z, meta["description"], chords))
    return clips


def crop(clip: tuple[torch.Tensor, str, torch.Tensor], frames: int,
         generator: torch.Generator) -> tuple[torch.Tensor, ConditioningAttributes]:
    z, text, chords = clip
    start = int(torch.randint(0, max(1, z.shape[0] - frames), (1,), generator=generator))
    attr = ConditioningAttributes(text={"description": text}, symbolic={"chords": chords[start:start + frames]})
    return z[start:start + frames], attr


def trained_model(args: argparse.Namespace) -> tuple[FlowMatchingModel, list]:
    """The model trained per `args` (from the cache when there), in eval mode, and the clips."""
    torch.manual_seed(0)
    model = build_model(args)
    clips = load_clips(args)
    key = hashlib.sha1(json.dumps([args.dim, args.layers, args.train_steps, args.batch_size, args.frames,
                                   len(clips), str(args.data)]).encode()).hexdigest()[:12]
    path = args.cache / f"sampler_model_{key}.pt"
    if path.is_file():
        model.load_state_dict(torch.load(path, map_location=args.device, weights_only=True))
        print(f"loaded the trained model from {path}", file=sys.stderr)
        return model.eval(), clips
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    begin = time.time()
    for step in range(args.train_steps):
        picks = torch.randint(0, len(clips), (args.batch_size,), generator=generator).tolist()
        z1, attributes = zip(*(crop(clips[i], args.frames, generator) for i in picks))
        z1 = torch.stack(z1).to(args.device)
        z0, t, z_t = flow.sample_training_point(z1, generator=None)
        attributes = model.apply_condition_dropout(list(attributes))
        loss = flow.flow_matching_loss(model(z_t, t, attributes), z0, z1, t)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == args.train_steps - 1:
            print(f"train step {step}: loss {loss.item():.3f} ({time.time() - begin:.0f} s)", file=sys.stderr)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval(), clips


def rms(x: torch.Tensor) -> float:
    return x.float().pow(2).mean().sqrt().item()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, clips = trained_model(args)
    generator = torch.Generator().manual_seed(1)
    conditions = [crop(clips[i % len(clips)], args.frames, generator)[1] for i in range(args.samples)]
    noise = torch.randn(args.samples, args.frames, model.flow_dim, generator=generator).to(args.device)
    guidance = {"cfg_coef_all": args.cfg_all, "cfg_coef_txt": args.cfg_text}

    def run(solver: str, steps: float, grid: str, dtype: str | None) -> tuple[torch.Tensor, int, float]:
        options = ({"ode_atol": steps, "ode_rtol": steps} if solver in flow.ADAPTIVE_SOLVERS
                   else {"steps": int(steps), "time_grid": grid})
        begin = time.perf_counter()
        with torch.no_grad(), torch.autocast(torch.device(args.device).type, dtype=getattr(torch, dtype or "float32"),
                                             enabled=dtype is not None):
            z, nfe = model.generate(conditions, solver=solver, initial_noise=noise, return_nfe=True,
                                    **guidance, **options)
        if torch.device(args.device).type == "cuda":
            torch.cuda.synchronize()
        return z, nfe, time.perf_counter() - begin

    reference, ref_nfe, ref_s = run("dopri5", REFERENCE_TOL, "-", None)
    results: dict[int, list] = {i: [] for i in range(len(ROWS))}
    for _ in range(args.rounds):
        for i, row in enumerate(ROWS):
            results[i].append(run(*row))
    dopri5_nfe = results[0][0][1]
    print(f"model: text + chords, D {args.dim}, L {args.layers}, {args.train_steps} training steps; "
          f"B {args.samples} x T {args.frames}; guidance all {args.cfg_all} / text {args.cfg_text}; "
          f"reference dopri5 {REFERENCE_TOL:g}: {ref_nfe} NFE, {ref_s * 1000:.0f} ms, latent RMS {rms(reference):.3f}")
    print("| solver | steps / tol | time grid | network | NFE | NFE vs dopri5 1e-5 | ms | ms/NFE | rel. RMS error |")
    print("|---|---|---|---|---|---|---|---|---|")
    for i, (solver, steps, grid, dtype) in enumerate(ROWS):
        z, nfe, _ = results[i][0]
        ms = statistics.median(r[2] for r in results[i]) * 1000
        error = rms(z - reference) / rms(reference)
        print(f"| {solver} | {steps:g} | {grid} | {dtype or 'float32'} | {nfe} | {nfe / dopri5_nfe:.2f} | "
              f"{ms:.0f} | {ms / nfe:.1f} | {error:.2e} |")


if __name__ == "__main__":
    main()
