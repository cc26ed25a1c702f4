"""Benchmark full JascoSolver training steps, data loading included, with the codec or a latent cache.

    python benchmarks/train_throughput.py                          # debug and base scale, CPU
    python benchmarks/train_throughput.py --device cuda --batch-size 16 --steps 20

One step = drawing a batch from `solver.dataloaders['train']` (audio decode, segment seek,
chords/melody/drums side files) + `solver.run_step(batch, train=True)` (codec encoding unless
the batch carries cached latents, condition tokenization, forward, backward, clipping, AdamW,
scheduler, EMA). The solver is built in-process inside a Dora experiment, as `dora run` does.
Each (config, path) row runs in its own child process, so the CPU peak memory (peak resident
set size, which only grows) is that row's alone; on CUDA it is `torch.cuda.max_memory_allocated`.
The latent cache is prepared once per run with `jasco.prepare` (`manifest,latents`, debug codec)
into a temporary folder, or reused from `--cache-dir`.

ms/step and samples/s come from the median wall-clock step (robust to other jobs stealing the CPU
for a step), loader ms/step is the mean time spent drawing batches, CPU ms/step the median process
CPU time (all threads) of a step, which moves less than wall time on a shared machine. Every path
reseeds torch before its timed steps, so all paths see the same condition-dropout draws.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "debug": ["solver=jasco/debug"],
    "base": ["solver=jasco/debug", "model/lm/model_scale=base", "transformer_lm.dim=512",
             "transformer_lm.num_heads=8", "transformer_lm.num_layers=8"],
}
PATHS = ("codec", "cache")
RESULT_TAG = "TRAIN_THROUGHPUT_RESULT "


def ensure_example(path: Path) -> Path:
    """Build the example dataset at `path` when it is missing (scripts/make_example_dataset.py)."""
    spec = importlib.util.spec_from_file_location("make_example_dataset", REPO_ROOT / "scripts" / "make_example_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ensure_example_dataset(path)


def prepare_cache(audio_dir: Path, out_dir: Path) -> float:
    """Latent cache of the example clips (`--steps manifest,latents --codec debug`); returns seconds."""
    from jasco.prepare.__main__ import parse_args, settings_from
    from jasco.prepare.runner import prepare
    args = parse_args([str(audio_dir), str(out_dir), "--steps", "manifest,latents", "--codec", "debug",
                       "--workers", "1", "--latent-dtype", "float32", "--valid-fraction", "0.2",
                       "--segment-check", "4", "--no-progress"])
    begin = time.perf_counter()
    report = prepare(audio_dir, out_dir, settings_from(args))
    if report.failures or not report.manifest_counts.get("train") or not report.manifest_counts.get("valid"):
        raise RuntimeError(f"latent cache preparation in {out_dir} failed: {report.failures or report.manifest_counts}")
    return time.perf_counter() - begin


def peak_memory_mib(device: Any) -> float:
    """CUDA: max allocated; CPU: the process's peak resident set size."""
    import torch
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(overrides: list[str], dora_dir: Path, steps: int, warmup: int) -> dict[str, Any]:
    """Total time of `steps` full training steps after `warmup` untimed ones, loader included."""
    import torch

    from jasco.solvers.jasco_solver import cycle
    from jasco.train import experiment, get_solver, init_seed_and_system
    with experiment(dora_dir, overrides) as xp:
        init_seed_and_system(xp.cfg)
        solver = get_solver(xp.cfg)
        device = solver.device

        def sync() -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        loader = solver.dataloaders["train"]
        loader.dataset.set_epoch(0)
        batches = iter(cycle(loader, warmup + steps))
        solver.model.train()
        cached = None
        for _ in range(warmup):
            wav, infos = next(batches)
            cached = all(info.latents is not None for info in infos)
            solver.run_step((wav, infos), train=True)
            with torch.no_grad():
                # oneDNN builds its kernels on the first call per shape (seconds for the codec's
                # LSTM): warm the codec in both paths, as the drums conditioner uses it in both and
                # condition dropout may skip it during the warmup steps. With a latent cache the
                # batch holds no audio (`wav` is [B, C, 0]): warm it on silence of the segment's length.
                silence = torch.zeros(*wav.shape[:2], max(info.total_frames for info in infos))
                solver.compression_model.encode_codes(silence.to(device), num_codebooks=1)
        sync()
        # Same condition-dropout and flow-time draws in the timed steps of every path.
        torch.manual_seed(xp.cfg.seed)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        load_s = total_s = 0.0
        samples = 0
        step_ms, cpu_ms = [], []
        for _ in range(steps):
            begin, cpu_begin = time.perf_counter(), time.process_time()
            wav, infos = next(batches)
            loaded = time.perf_counter()
            solver.run_step((wav, infos), train=True)
            sync()
            end = time.perf_counter()
            load_s += loaded - begin
            total_s += end - begin
            step_ms.append(round((end - begin) * 1000, 1))
            cpu_ms.append(round((time.process_time() - cpu_begin) * 1000, 1))
            samples += wav.shape[0]
        params = sum(p.numel() for p in solver.model.parameters() if p.requires_grad)
        return {"samples": samples, "steps": steps, "seconds": total_s, "load_seconds": load_s, "step_ms": step_ms,
                "cpu_ms": cpu_ms,
                "peak_mib": peak_memory_mib(device), "cached": cached, "params": params,
                "batch_size": solver.batch_size, "segment": float(xp.cfg.dataset.segment_duration),
                "threads": torch.get_num_threads(), "device": str(device), "torch": torch.__version__}


def child(args: argparse.Namespace) -> None:
    """One (config, path) row, printed as a tagged JSON line for the parent."""
    overrides = list(CONFIGS[args.one_config]) + [
        f"device={args.device}", "logging.log_tensorboard=false", f"num_threads={args.threads}",
        f"dataset.train.num_samples={args.batch_size * (args.steps + args.warmup)}",
        f"dataset.batch_size={args.batch_size}"]
    if args.one_path == "cache":
        overrides += [f"datasource.train={args.cache_dir / 'train'}", f"datasource.valid={args.cache_dir / 'valid'}"]
    else:
        overrides += [f"datasource.train={args.example / 'train'}", f"datasource.valid={args.example / 'valid'}"]
    with tempfile.TemporaryDirectory(prefix="jasco-ttp-dora-") as dora_dir:
        result = measure(overrides, Path(dora_dir), args.steps, args.warmup)
    expected = args.one_path == "cache"
    if result["cached"] != expected:
        raise RuntimeError(f"path {args.one_path}: batches {'lack' if expected else 'carry'} cached latents "
                           f"(check the manifests in {args.cache_dir})")
    print(RESULT_TAG + json.dumps(result), flush=True)


def run_child(args: argparse.Namespace, config: str, path: str) -> dict[str, Any]:
    """Run one row in a fresh interpreter and parse its result."""
    command = [sys.executable, __file__, "--one-config", config, "--one-path", path, "--device", args.device,
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size),
               "--threads", str(args.threads), "--example", str(args.example), "--cache-dir", str(args.cache_dir)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-8000:])
        raise RuntimeError(f"benchmark of {config}/{path} failed (exit code {done.returncode}); its output is above")
    return json.loads(lines[-1][len(RESULT_TAG):])


def table(rows: list[tuple[str, str, dict[str, Any]]]) -> str:
    """Markdown table from median step times, with the cache/codec speed ratios per config."""
    wall = {(c, p): statistics.median(r["step_ms"]) for c, p, r in rows}
    cpu = {(c, p): statistics.median(r["cpu_ms"]) for c, p, r in rows}
    lines = ["| config | path | params (M) | batch | samples/s | ms/step | loader ms/step | CPU ms/step "
             "| peak memory (MiB) | cache/codec (wall) | cache/codec (CPU time) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for config, path, r in rows:
        key, base = (config, path), (config, "codec")
        ratio = f"{wall[base] / wall[key]:.2f}x" if base in wall else "-"
        cpu_ratio = f"{cpu[base] / cpu[key]:.2f}x" if base in cpu else "-"
        lines.append(f"| {config} | {path} | {r['params'] / 1e6:.2f} | {r['batch_size']} | "
                     f"{r['batch_size'] / wall[key] * 1000:.2f} | {wall[key]:.1f} | "
                     f"{r['load_seconds'] / r['steps'] * 1000:.1f} | {cpu[key]:.1f} | {r['peak_mib']:.0f} | "
                     f"{ratio} | {cpu_ratio} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (the `--one-*` ones are the parent → child protocol)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--example", type=Path, default=REPO_ROOT / "egs" / "example", help="example dataset folder")
    parser.add_argument("--cache-dir", type=Path, default=None, help="prepared latent cache to reuse (default: temp)")
    parser.add_argument("--one-config", choices=list(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--one-path", choices=list(PATHS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device is None:
        import torch
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1:
        parser.error("--steps and --batch-size must be >= 1, --warmup >= 0")
    args.example = args.example.resolve()
    return args


def main(argv: list[str] | None = None) -> None:
    """Prepare the data, run every (config, path) row in a child process, print the table."""
    args = parse_args(argv)
    if args.one_config:
        child(args)
        return
    ensure_example(args.example)
    with tempfile.TemporaryDirectory(prefix="jasco-ttp-cache-") as tmp:
        prep_s = None
        if "cache" in args.paths and args.cache_dir is None:
            args.cache_dir = Path(tmp)
            prep_s = prepare_cache(args.example / "audio", args.cache_dir)
        args.cache_dir = (args.cache_dir or Path(tmp)).resolve()
        rows = []
        for config in args.configs:
            for path in args.paths:
                rows.append((config, path, run_child(args, config, path)))
                print(f"{config}/{path}: ms per timed step {rows[-1][2]['step_ms']}", file=sys.stderr, flush=True)
    first = rows[0][2]
    print(f"JascoSolver training steps on {first['device']} ({first['threads']} threads), torch {first['torch']}: "
          f"batch {args.batch_size}, segment {first['segment']:g} s, {args.warmup} warmup + {args.steps} timed steps"
          + (f"; latent cache prepared in {prep_s:.1f} s" if prep_s is not None else ""))
    print(table(rows))


if __name__ == "__main__":
    main()
