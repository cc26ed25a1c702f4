"""Mean load time of one training item (`JascoDataset[i]`) on egs/example vs a realistic corpus.

egs/example holds 32 kHz mono wav clips, the model's own rate: nothing is resampled. A user's folder
holds 44.1 / 48 / 22.05 kHz, stereo, mp3 / flac / wav. This script renders such a corpus with
`scripts/make_music_corpus.py` (FluidSynth; when that is not available it writes 44.1 kHz stereo mp3
and 22.05 kHz mono flac clips itself) and times items of both, in one run, in these modes:

- `audio`: no caches; the mix and the drum stem are decoded and converted to 32 kHz mono.
- `audio, resampler rebuilt per item`: the same with the resampler cache emptied before every item
  (what every item cost before `jasco.audio.convert.resampler` cached them).
- `latents + drum codes`: every track has cached latents and drum codes (synthetic, right shapes);
  the dataset decodes no audio at all (`JascoDataset.read_audio` is off).
- `latents + drum codes, audio decoded anyway`: `read_audio=True`, what happened before.
- `latents, drum stems`: cached latents, drum stems still decoded (a cache without the `drums` step).
- `audio, transcoded`: no caches, the corpus's mixes and stems converted once to 32 kHz mono
  16-bit flac (what `python -m jasco.prepare --transcode` does for the mixes).

Items are drawn as in training (`dataset.train` of config/solver/default.yaml: shuffle, 10 s
segments, min_segment_ratio 0.8, text augmentation), with one torch thread, as in a DataLoader
worker. Each ratio divides a row's mean by the egs/example row of the same mode.

The rows take turns (`--rounds`), so a burst of load from other processes slows every row alike.

Usage: `python benchmarks/dataset_item.py [--items 60] [--warmup 5] [--rounds 6] [--segment 10]
[--corpus DIR] [--tracks 8] [--seconds 20] [--threads 1]`.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from jasco.audio import convert
from jasco.data.drum_codes import write_drum_codes
from jasco.data.jasco_dataset import JascoDataset
from jasco.data.manifest import AudioMeta, build_manifest, load_manifest

REPO = Path(__file__).resolve().parents[1]


def _script(name: str):
    """A module of scripts/ (registered in sys.modules: its dataclasses need that)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def synthetic_corpus(out: Path, tracks: int, seconds: float) -> Path:
    """Fallback without FluidSynth: noisy chords at 44.1 kHz stereo (mp3) and 22.05 kHz mono (flac), with stems."""
    import soundfile as sf

    audio = out / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(tracks):
        rate, channels, suffix = (44100, 2, ".mp3") if i % 2 == 0 else (22050, 1, ".flac")
        n = int(seconds * rate)
        t = np.arange(n) / rate
        mix = sum(0.1 * np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6)) + 0.01 * rng.standard_normal(n)
        wav = np.repeat(mix[None].astype(np.float32), channels, axis=0)
        if suffix == ".mp3":
            _script("make_music_corpus").encode_mp3(audio / f"track_{i:02d}.mp3", wav, rate, 192000)
        else:
            sf.write(str(audio / f"track_{i:02d}.flac"), wav.T, rate, subtype="PCM_16")
        sf.write(str(audio / f"track_{i:02d}.drums.wav"), (0.05 * rng.standard_normal(n)).astype(np.float32), rate,
                 subtype="PCM_16")
    return out


def corpus(path: Path | None, tracks: int, seconds: float, scratch: Path) -> tuple[Path, str]:
    """The corpus's `audio/` folder and how it was made."""
    out = path or scratch / "corpus"
    try:
        _script("make_music_corpus").ensure_music_corpus(out, tracks=tracks, seconds=seconds)
        return out / "audio", "scripts/make_music_corpus.py (FluidSynth)"
    except (ImportError, OSError, RuntimeError, ValueError, subprocess.SubprocessError) as exc:  # no fluidsynth, ...
        print(f"make_music_corpus unavailable ({exc}); writing synthetic clips", file=sys.stderr)
        return synthetic_corpus(scratch / "synthetic", tracks, seconds) / "audio", "synthetic clips"


def with_caches(metas: list[AudioMeta], folder: Path, drum_codes: bool) -> list[AudioMeta]:
    """Copies of metas with (synthetic) latents and drum codes of the right length for every track."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, meta in enumerate(metas):
        frames = round(meta.duration * 50)
        latents = folder / f"{i}.latents.npy"
        np.save(latents, np.zeros((frames, 128), np.float16))
        extra = {**meta.extra, "latents_path": str(latents)}
        if drum_codes:
            extra["drum_codes_path"] = str(write_drum_codes(folder / f"{i}.codes.npy",
                                                            torch.zeros(frames, dtype=torch.long)))
        out.append(AudioMeta(meta.path, meta.duration, meta.sample_rate, meta.amplitude, meta.weight,
                             meta.info_path, extra))
    return out


def transcoded(metas: list[AudioMeta], folder: Path) -> list[AudioMeta]:
    """Copies of metas whose mix and drum stem are 32 kHz mono flac files; other side files stay where they are."""
    import soundfile as sf

    from jasco.audio.io import audio_read
    from jasco.data.side_files import CHORDS_SUFFIXES, DRUMS_SUFFIXES, SALIENCE_SUFFIXES, find_side_file

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, meta in enumerate(metas):
        extra = dict(meta.extra)
        for name, suffixes in (("chords_path", CHORDS_SUFFIXES), ("salience_path", SALIENCE_SUFFIXES)):
            found = find_side_file(meta.path, name, suffixes, meta.get_path(name))
            if found is not None:
                extra[name] = str(found)
        stem = find_side_file(meta.path, "drums_path", DRUMS_SUFFIXES, meta.get_path("drums_path"))
        for source, target, field in ((meta.path, folder / f"{i}.flac", None),
                                      (stem, folder / f"{i}.drums.flac", "drums_path")):
            if source is None:
                continue
            wav, sr = audio_read(source)
            wav = convert.convert_audio(wav, sr, 32000, 1)
            sf.write(str(target), wav.clamp(-1, 1).numpy().T, 32000, subtype="PCM_16")
            if field is None:
                duration = wav.shape[-1] / 32000
            else:
                extra[field] = str(target)
        out.append(AudioMeta(str(folder / f"{i}.flac"), duration, 32000, meta.amplitude, meta.weight,
                             meta.info_path, extra))
    return out


def training_dataset(metas: list[AudioMeta], segment: float, items: int, **kwargs) -> JascoDataset:
    """A JascoDataset drawing items as `dataset.train` of config/solver/default.yaml does."""
    return JascoDataset(metas, segment_duration=segment, sample_rate=32000, channels=1, shuffle=True,
                        num_samples=items, min_segment_ratio=0.8, train=True, merge_text_p=0.25,
                        drop_desc_p=0.5, drop_other_p=0.5, **kwargs)


def time_items(dataset: JascoDataset, indices: range, before_item: Callable[[], None] | None = None) -> list[float]:
    """Seconds to load each item of `indices`."""
    times = []
    for index in indices:
        if before_item is not None:
            before_item()
        begin = time.perf_counter()
        dataset[index]
        times.append(time.perf_counter() - begin)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=60, help="timed items per row")
    parser.add_argument("--warmup", type=int, default=5, help="untimed items first (resamplers, page cache)")
    parser.add_argument("--rounds", type=int, default=6,
                        help="rows take turns, items/rounds items at a time, so load bursts hit every row alike")
    parser.add_argument("--segment", type=float, default=10.0, help="segment_duration in seconds")
    parser.add_argument("--corpus", type=Path, default=None, help="reuse/keep the rendered corpus here")
    parser.add_argument("--tracks", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0, help="mean corpus track length")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (DataLoader workers use 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # unknown chord labels etc.: not what is measured
    _script("make_example_dataset").ensure_example_dataset(REPO / "egs" / "example")
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        audio_dir, made_by = corpus(args.corpus, args.tracks, args.seconds, scratch)
        sets = {"egs/example": load_manifest(REPO / "egs" / "example" / "train"),
                "corpus": build_manifest(audio_dir, workers=2, progress=False)}
        kinds = sorted({f"{Path(m.path).suffix[1:]} {m.sample_rate}" for m in sets["corpus"]})
        print(f"corpus: {len(sets['corpus'])} tracks from {made_by} ({', '.join(kinds)}); "
              f"egs/example: {len(sets['egs/example'])} clips (wav 32000)")
        cached = {name: with_caches(metas, scratch / name.replace("/", "_") / "codes", True)
                  for name, metas in sets.items()}
        stems = {name: with_caches(metas, scratch / name.replace("/", "_") / "latents", False)
                 for name, metas in sets.items()}
        # (mode, dataset, metas, before each item, dataset kwargs, the egs/example mode it is compared with)
        rows = [
            ("audio", "egs/example", sets["egs/example"], None, {}, "audio"),
            ("audio", "corpus", sets["corpus"], None, {}, "audio"),
            ("audio, resampler rebuilt per item", "corpus", sets["corpus"], convert._cached_resampler.cache_clear,
             {}, "audio"),
            ("audio, transcoded", "corpus", transcoded(sets["corpus"], scratch / "transcoded"), None, {}, "audio"),
            ("latents + drum codes", "egs/example", cached["egs/example"], None, {}, "latents + drum codes"),
            ("latents + drum codes", "corpus", cached["corpus"], None, {}, "latents + drum codes"),
            ("latents + drum codes, audio decoded anyway", "corpus", cached["corpus"], None, {"read_audio": True},
             "latents + drum codes"),
            ("latents, drum stems", "egs/example", stems["egs/example"], None, {}, "latents, drum stems"),
            ("latents, drum stems", "corpus", stems["corpus"], None, {}, "latents, drum stems"),
        ]
        total = args.warmup + args.items
        datasets = [training_dataset(metas, args.segment, total, **kwargs) for _, _, metas, _, kwargs, _ in rows]
        for dataset, row in zip(datasets, rows):
            time_items(dataset, range(args.warmup), row[3])
        times: list[list[float]] = [[] for _ in rows]
        chunk = -(-args.items // args.rounds)
        for start in range(args.warmup, total, chunk):
            for dataset, row, row_times in zip(datasets, rows, times):
                row_times += time_items(dataset, range(start, min(start + chunk, total)), row[3])
        means = {(mode, name): statistics.mean(t) for (mode, name, *_), t in zip(rows, times)}
        print(f"\n{args.items} items per row after {args.warmup} warm-up items, in {args.rounds} rounds; segment "
              f"{args.segment:g} s, {args.threads} torch thread(s), torch {torch.__version__}\n")
        print("| mode | dataset | mean ms/item | median ms/item | vs egs/example |")
        print("|---|---|---|---|---|")
        for (mode, name, *_, reference), row_times in zip(rows, times):
            mean = means[(mode, name)]
            print(f"| {mode} | {name} | {1000 * mean:.1f} | {1000 * statistics.median(row_times):.1f} | "
                  f"{mean / means[(reference, 'egs/example')]:.2f}x (vs '{reference}') |")


if __name__ == "__main__":
    main()
