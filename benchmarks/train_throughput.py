"""End-to-end training throughput with the real EnCodec 32 kHz geometry: codec in the loop vs caches.

    python benchmarks/train_throughput.py                                  # base scale, B 4 x 10 s, CPU
    python benchmarks/train_throughput.py --device cuda --batch-size 16 --dtypes float32 bfloat16

One training step = drawing a batch from a real DataLoader + `JascoSolver.run_step(batch, train=True)`
(latents, condition tokenization, forward, backward, clipping, AdamW, scheduler, EMA), with the
published codec's layer sizes (`encodec_32khz_config()`: 64 filters, 2 LSTM layers, 4 codebooks of
2048 x 128) and random weights, since the real weights are not available offline. Paths:

- `codec`: the manifest holds audio and drum stems only; every step decodes the mix and the drum
  stems, encodes the mix to latents and the drum stems to codes with the codec.
- `cache`: the same tracks after `python -m jasco.prepare --steps manifest,drums,latents` with that
  codec (latent cache + drum-code cache, float16 latents as prepare writes by default): no audio is
  decoded and the codec only dequantizes the cached drum codes.

Both paths run on ONE solver (one model, one codec in memory) built in-process inside a Dora
experiment as `dora run` does, share the solver's batch sampler (so they draw the same segments),
and take turns step by step with the float32 and bfloat16-autocast variants (`--dtypes`), so load
from other jobs hits every variant alike. Before each step the update counter and torch's seed are
set to the round's, so all variants of a round see the same condition-dropout draws and noise.
The loader is also timed alone (batches drawn with no step in between), interleaved the same way.
samples/s is batch size over the mean end-to-end step (loading included). The codec path encodes
drum stems only in the steps whose batch keeps the drums through condition dropout (one draw per
batch; the published recipe keeps them in 0.8 x 0.5 = 40% of batches); the script says which did.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
BASE_SCALE = ["solver=jasco/debug", "model/lm/model_scale=base", "transformer_lm.dim=512",
              "transformer_lm.num_heads=8", "transformer_lm.num_layers=8"]
PATHS = ("codec", "cache")
CLIP_SIDES = (".wav", ".json", ".chords.json", ".salience.npz", ".drums.wav")


def example_clips(dest: Path, count: int) -> Path:
    """Copy `count` clips of egs/example (mix, sidecar, chords, salience, drum stem) to `dest`."""
    spec = importlib.util.spec_from_file_location("make_example_dataset",
                                                  REPO_ROOT / "scripts" / "make_example_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    source = module.ensure_example_dataset(REPO_ROOT / "egs" / "example") / "audio"
    dest.mkdir(parents=True)
    for name in sorted(p.name[:-len(".drums.wav")] for p in source.glob("*.drums.wav"))[:count]:
        for suffix in CLIP_SIDES:
            shutil.copy(source / (name + suffix), dest / (name + suffix))
    return dest


def real_geometry_codec(folder: Path, seed: int = 0) -> Path:
    """Save a random-weight codec with the published 32 kHz layer sizes to `folder` (config.json + weights)."""
    import torch
    from transformers import EncodecModel

    from jasco.models.codec import EncodecCompressionModel, encodec_32khz_config
    torch.manual_seed(seed)
    model = EncodecModel(encodec_32khz_config())
    with torch.no_grad():
        for layer in model.quantizer.layers:  # transformers starts codebooks at zero: every code would be 0
            layer.codebook.embed.normal_()
    EncodecCompressionModel(model).save_pretrained(folder)
    return folder


def prepare_caches(audio: Path, out: Path, codec: Path) -> tuple[Path, Path, float]:
    """Latent + drum-code caches with `jasco.prepare`; returns (cache manifest, codec-path manifest, seconds).

    The codec-path manifest lists the same tracks without `latents_path` / `drum_codes_path`.
    """
    from jasco.data.manifest import load_manifest, save_manifest
    from jasco.prepare.__main__ import parse_args, settings_from
    from jasco.prepare.runner import prepare
    args = parse_args([str(audio), str(out), "--steps", "manifest,drums,latents", "--codec", str(codec),
                       "--workers", "1", "--valid-fraction", "0", "--no-progress"])
    begin = time.perf_counter()
    report = prepare(audio, out, settings_from(args))
    seconds = time.perf_counter() - begin
    if report.failures or not report.manifest_counts.get("train"):
        raise RuntimeError(f"cache preparation in {out} failed: {report.failures or report.manifest_counts}")
    metas = load_manifest(out / "train")
    for meta in metas:
        meta.extra.pop("latents_path")
        meta.extra.pop("drum_codes_path")
    return out / "train", save_manifest(out / "train_codec" / "data.jsonl", metas).parent, seconds


def codec_path_loader(solver: Any, manifest: Path) -> Any:
    """A DataLoader like the solver's train loader (same settings, same batch sampler) over `manifest`."""
    from torch.utils.data import DataLoader

    from jasco.data.manifest import load_manifest
    cached = solver.dataloaders["train"]
    dataset = copy.copy(cached.dataset)
    dataset.metas = load_manifest(manifest)
    if [(m.path, m.duration) for m in dataset.metas] != [(m.path, m.duration) for m in cached.dataset.metas]:
        raise RuntimeError(f"{manifest} does not list the tracks of the cache manifest in the same order")
    dataset.read_audio = True
    return DataLoader(dataset, batch_sampler=cached.batch_sampler, collate_fn=dataset.collater,
                      num_workers=cached.num_workers, worker_init_fn=cached.worker_init_fn)


def peak_memory_mib(device: Any) -> float:
    """CUDA: max allocated; CPU: the process's peak resident set size."""
    import torch
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def benchmark(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Build data, caches and one solver; time the interleaved variants; return the measurements."""
    audio = example_clips(work / "audio", args.clips)
    codec_dir = real_geometry_codec(work / "codec")
    cache_manifest, codec_manifest, prep_s = prepare_caches(audio, work / "prepared", codec_dir)

    import torch

    from jasco.solvers.jasco_solver import cycle
    from jasco.train import experiment, get_solver, init_seed_and_system
    rounds = args.warmup + args.steps
    overrides = BASE_SCALE + [
        f"device={args.device}", f"num_threads={args.threads}", "logging.log_tensorboard=false", "autocast=false",
        f"compression_model_checkpoint={codec_dir}", f"datasource.train={cache_manifest}",
        f"datasource.valid={cache_manifest}", f"dataset.segment_duration={args.segment}",
        f"dataset.batch_size={args.batch_size}", f"dataset.num_workers={args.num_workers}",
        f"dataset.train.num_samples={args.batch_size * (rounds + args.loader_batches) * 2}"]
    with experiment(work / "dora", overrides) as xp:
        init_seed_and_system(xp.cfg)
        solver = get_solver(xp.cfg)
        device = solver.device
        conditioners = solver.model.condition_provider.conditioners
        if "self_wav" in conditioners and conditioners["self_wav"].compression_model is not solver.compression_model:
            print("warning: the drums conditioner holds its own copy of the codec", file=sys.stderr)
        loaders = {"cache": solver.dataloaders["train"], "codec": codec_path_loader(solver, codec_manifest)}
        for loader in loaders.values():
            loader.dataset.set_epoch(0)
        total = rounds * len(args.dtypes)
        batches = {path: iter(cycle(loader, total)) for path, loader in loaders.items()}

        def sync() -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        def use_dtype(dtype: str) -> None:
            # Variant switch without a second solver: the solver's own autocast() context, re-pointed.
            enabled = dtype != "float32"
            solver.autocast = lambda: torch.autocast(device.type, dtype=getattr(torch, dtype), enabled=enabled)

        # Condition dropout drops the drums from some batches, and then the codec path encodes no drum
        # stems: count the codec's code encodings to say which steps did.
        encodings = []
        encode_codes = solver.compression_model.encode_codes
        with torch.no_grad():  # oneDNN builds its kernels (seconds for the LSTMs) on a shape's first call
            encode_codes(torch.zeros(args.batch_size, 1, round(args.segment * solver.compression_model.sample_rate),
                                     device=device), num_codebooks=1)

        def counted_encode_codes(*a: Any, **k: Any) -> Any:
            encodings.append(1)
            return encode_codes(*a, **k)

        solver.compression_model.encode_codes = counted_encode_codes
        times: dict[tuple[str, str], dict[str, list[float]]] = {}
        drums_encoded: list[bool] = []
        solver.model.train()
        for r in range(rounds):
            for dtype in args.dtypes:
                use_dtype(dtype)
                for path in PATHS:
                    solver.updates = r  # same dropout draws and flow noise for every variant of the round
                    torch.manual_seed(r)
                    begin = time.perf_counter()
                    wav, infos = next(batches[path])
                    loaded = time.perf_counter()
                    cached = all(info.latents is not None for info in infos)
                    if cached != (path == "cache") or (path == "cache") != (wav.shape[-1] == 0):
                        raise RuntimeError(f"path {path}: the batch {'lacks' if path == 'cache' else 'carries'} "
                                           f"cached latents (or decoded audio it should not); see {work}")
                    before = len(encodings)
                    solver.run_step((wav, infos), train=True)
                    sync()
                    end = time.perf_counter()
                    if r >= args.warmup and path == "codec" and dtype == args.dtypes[0]:
                        drums_encoded.append(len(encodings) > before)
                    if r >= args.warmup:
                        entry = times.setdefault((path, dtype), {"step": [], "load": []})
                        entry["step"].append(end - begin)
                        entry["load"].append(loaded - begin)
        alone: dict[str, list[float]] = {path: [] for path in PATHS}
        only = {path: iter(cycle(loader, args.loader_batches + 1)) for path, loader in loaders.items()}
        for path in PATHS:
            next(only[path])  # starts the workers, if any
        for _ in range(args.loader_batches):
            for path in PATHS:
                begin = time.perf_counter()
                next(only[path])
                alone[path].append(time.perf_counter() - begin)
        solver.compression_model.encode_codes = encode_codes
        encode = codec_breakdown(solver, loaders["codec"], sync)
        params = sum(p.numel() for p in solver.model.parameters() if p.requires_grad)
        return {"times": times, "alone": alone, "drums_encoded": drums_encoded, "encode": encode, "prep_s": prep_s, "params": params,
                "codec_params": sum(p.numel() for p in solver.compression_model.parameters()),
                "peak_mib": peak_memory_mib(device), "device": str(device), "threads": torch.get_num_threads(),
                "torch": torch.__version__, "tracks": len(loaders["cache"].dataset.metas),
                "load": os.getloadavg()}


def codec_breakdown(solver: Any, loader: Any, sync: Any) -> dict[str, float]:
    """Seconds of the codec-path work the cache removes, for one batch: mix -> latents, drum stems -> codes."""
    import torch
    wav, infos = next(iter(loader))
    stems = torch.stack([info.drums.wav for info in infos if info.drums is not None and info.drums.wav is not None])
    out = {}
    with torch.no_grad():
        for name, run in (("mix -> latents", lambda: solver.compression_model.encode(wav.to(solver.device))),
                          ("drum stems -> codes", lambda: solver.compression_model.encode_codes(
                              stems.mean(1, keepdim=True).to(solver.device), num_codebooks=1))):
            begin = time.perf_counter()
            run()
            sync()
            out[name] = time.perf_counter() - begin
    return out


def table(result: dict[str, Any], batch: int, dtypes: list[str]) -> str:
    """Markdown table: samples/s, step times, loader share and the cache/codec ratio per dtype."""
    header = ("| path | dtype | samples/s | ms/step (mean) | ms/step (median) | loading in the step, ms "
              "| loader alone, ms/batch | loader alone / step | cache / codec |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    mean = {key: statistics.mean(t["step"]) for key, t in result["times"].items()}
    for dtype in dtypes:
        for path in PATHS:
            t = result["times"][(path, dtype)]
            alone = statistics.mean(result["alone"][path])
            ratio = mean[("codec", dtype)] / mean[(path, dtype)]
            lines.append(f"| {path} | {dtype} | {batch / mean[(path, dtype)]:.3f} | {mean[(path, dtype)] * 1e3:.0f} | "
                         f"{statistics.median(t['step']) * 1e3:.0f} | {statistics.mean(t['load']) * 1e3:.1f} | "
                         f"{alone * 1e3:.1f} | {alone / mean[(path, dtype)]:.1%} | {ratio:.2f}x |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    parser.add_argument("--steps", type=int, default=3, help="timed rounds (each times every variant once)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--segment", type=float, default=10.0, help="segment seconds")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"],
                        choices=["float32", "bfloat16", "float16"], help="autocast variants (float32: off)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch threads (default: the cores this process may use)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (both paths)")
    parser.add_argument("--clips", type=int, default=4, help="example clips in the generated dataset")
    parser.add_argument("--loader-batches", type=int, default=6, help="batches per path when timing the loader alone")
    args = parser.parse_args(argv)
    if args.device is None:
        import torch
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1 or args.loader_batches < 1 or args.clips < 1:
        parser.error("--steps, --batch-size, --loader-batches and --clips must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark in a temporary folder and print the table."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="jasco-ttp-") as tmp:
        result = benchmark(args, Path(tmp))
    for (path, dtype), t in result["times"].items():
        print(f"{path}/{dtype}: ms per timed step {[round(s * 1e3) for s in t['step']]}", file=sys.stderr)
    for dtype in args.dtypes:  # the paths of a round ran back to back: their ratio is the least load-sensitive
        pairs = zip(result["times"][("codec", dtype)]["step"], result["times"][("cache", dtype)]["step"])
        print(f"{dtype}: cache/codec speed-up per round {[round(a / b, 2) for a, b in pairs]}", file=sys.stderr)
    print(f"End-to-end training on {result['device']} ({result['threads']} threads), torch {result['torch']}: "
          f"base scale ({result['params'] / 1e6:.1f} M trainable), real 32 kHz codec geometry "
          f"({result['codec_params'] / 1e6:.1f} M, random weights), batch {args.batch_size} x {args.segment:g} s, "
          f"{args.num_workers} loader workers, {args.warmup} warmup + {args.steps} timed rounds, "
          f"{result['tracks']} tracks; caches prepared in {result['prep_s']:.1f} s; peak memory "
          f"{result['peak_mib']:.0f} MiB; load average at the end {', '.join(f'{v:.1f}' for v in result['load'])}")
    print(table(result, args.batch_size, args.dtypes))
    print("Codec work per batch that the caches remove (fp32, once): "
          + ", ".join(f"{name} {s * 1e3:.0f} ms" for name, s in result["encode"].items())
          + f"; the codec path encoded drum stems in {sum(result['drums_encoded'])} of {args.steps} timed rounds "
          f"(condition dropout dropped the drums in the others): {result['drums_encoded']}")
    with contextlib.suppress(BrokenPipeError):
        sys.stdout.flush()


if __name__ == "__main__":
    main()
