"""Resumable, parallel execution of the `jasco.prepare` steps, failures file and final manifests."""
from __future__ import annotations

import json
import logging
import multiprocessing
import sys
import time
import warnings
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from jasco.data.manifest import AudioMeta, save_manifest
from jasco.prepare import steps as step_fns
from jasco.prepare.tracks import (
    Track,
    dedupe_ids,
    ensure_valid_split,
    list_inputs,
    load_tracks,
    probe_track,
    save_tracks,
)

logger = logging.getLogger(__name__)
SPLITS = ("train", "valid")
# Fields whose outputs a step writes; a track enters the manifests only with all of them valid.
STEP_FIELDS = {"chords": ("chords_path",), "melody": ("salience_path",),
               "drums": ("drums_path", "drum_codes_path"), "latents": ("latents_path",)}


@dataclass
class Report:
    """What a run did: per-step counts, failures and warnings (also written to files)."""

    done: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)
    warnings: list[dict[str, str]] = field(default_factory=list)
    manifest_counts: dict[str, int] = field(default_factory=dict)


def _pool(workers: int) -> Executor | None:
    if workers <= 1:
        return None
    # fork is cheap (no re-import of torch) but unsafe once CUDA is initialised.
    method = "spawn" if torch.cuda.is_available() else "fork"
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method))


def _call(fn: Callable, *args: Any) -> tuple[Any, str | None, list[str]]:
    """Run `fn` catching errors and Python warnings: (result, error, warnings) — picklable."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result, error = fn(*args), None
        except Exception as exc:  # every failure is listed with its reason; the run goes on
            result, error = None, f"{type(exc).__name__}: {exc}"
    return result, error, [str(w.message) for w in caught]


def run_parallel(fn: Callable, jobs: list[tuple], workers: int, desc: str, progress: bool = True
                 ) -> list[tuple[Any, str | None, list[str]]]:
    """`_call(fn, *job)` for each job, in worker processes when `workers > 1`, with a progress bar."""
    bar = tqdm(total=len(jobs), desc=desc, disable=not progress, file=sys.stderr)
    results: list = [None] * len(jobs)
    pool = _pool(workers) if len(jobs) > 1 else None
    try:
        if pool is None:
            for i, job in enumerate(jobs):
                results[i] = _call(fn, *job)
                bar.update()
        else:
            futures = {pool.submit(_call, fn, *job): i for i, job in enumerate(jobs)}
            for future in futures:
                results[futures[future]] = future.result()
                bar.update()
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown()
    return results


def discover(source: Path, out_dir: Path, settings: dict, report: Report) -> list[Track]:
    """The `manifest` step: probe new or changed files, reuse the cached track list for the others."""
    inputs, base = list_inputs(source)
    cached = load_tracks(out_dir)
    tracks, jobs = [], []
    for path, sides in inputs:
        key = str(Path(path).resolve())
        old = cached.get(key)
        stat = Path(path).stat() if Path(path).exists() else None
        if old is not None and stat is not None and (old.size, old.mtime) == (stat.st_size, stat.st_mtime):
            tracks.append(old)
        else:
            jobs.append((str(path), str(base), sides, settings["valid_fraction"]))
    report.skipped["manifest"] = len(tracks)
    for job, (result, error, _) in zip(jobs, run_parallel(probe_track, jobs, settings["workers"], "manifest",
                                                          settings["progress"])):
        if error is not None:
            report.failures.append({"track": job[0], "step": "manifest", "reason": error})
        else:
            tracks.append(Track(**result))
    report.done["manifest"] = len(jobs) - sum(f["step"] == "manifest" for f in report.failures)
    dedupe_ids(tracks)
    tracks.sort(key=lambda t: t.id)
    ensure_valid_split(tracks, settings["valid_fraction"])
    save_tracks(out_dir, tracks)
    for track in tracks:
        if track.duration < settings["segment_check"]:
            report.warnings.append({"track": track.id, "step": "manifest", "message": (
                f"shorter ({track.duration:.2f} s) than a {settings['segment_check']:g} s training segment: kept; "
                "its segments are zero-padded at the end (the dataset drops files shorter than "
                "min_segment_ratio x segment_duration)")})
    return tracks


def _track_job(step: str, track: dict, out_dir: str, settings: dict) -> dict[str, Any] | None:
    """Worker body: None when already done, else the step's result."""
    out = step_fns.out_paths(Path(out_dir), track["id"])
    if step_fns.DONE[step](track, out, settings):
        return None
    return step_fns.DO[step](track, out, settings)


def run_step(step: str, tracks: list[Track], out_dir: Path, settings: dict, report: Report) -> None:
    """Run one per-track step over this shard's tracks."""
    mine = [t for i, t in enumerate(tracks) if i % settings["num_shards"] == settings["shard"]]
    jobs = [(step, asdict(t), str(out_dir), settings) for t in mine]
    results = run_parallel(_track_job, jobs, settings["workers"], step, settings["progress"])
    done = skipped = 0
    for track, (result, error, caught) in zip(mine, results):
        if error is not None:
            report.failures.append({"track": track.id, "path": track.path, "step": step, "reason": error})
            continue
        if result is None:
            skipped += 1
            continue
        done += 1
        for message in result["warnings"] + caught:
            report.warnings.append({"track": track.id, "step": step, "message": message})
    report.done[step], report.skipped[step] = done, skipped


def _outputs(track: Track, out_dir: Path, steps: list[str], settings: dict) -> dict[str, str] | None:
    """Valid output paths of a track for the requested steps (and earlier runs' others), or None if incomplete."""
    out = step_fns.out_paths(out_dir, track.id)
    data = asdict(track)
    fields: dict[str, str] = {}
    for step, names in STEP_FIELDS.items():
        ok = step_fns.DONE[step](data, out, settings)
        if not ok and step in steps:
            return None
        if ok:
            for name in names:
                fields[name] = str(step_fns._drum_stem(data, out)) if name == "drums_path" else str(out[name])
    return fields


def write_manifests(tracks: list[Track], out_dir: Path, steps: list[str], settings: dict, report: Report) -> None:
    """OUT/{train,valid}/data.jsonl with relative paths, for tracks whose requested outputs are all valid."""
    by_split: dict[str, list[AudioMeta]] = {s: [] for s in SPLITS}
    failed = {f["track"] for f in report.failures}
    for track in tracks:
        fields = _outputs(track, out_dir, steps, settings)
        if fields is None:
            if track.id not in failed:
                logger.info("%s: outputs incomplete (another shard's track?); left out of the manifests", track.id)
            continue
        # save_manifest(relative=True) makes every path field relative to the manifest's folder.
        extra = {name: str(Path(value).resolve()) for name, value in fields.items()}
        info = track.sides.get("info_path")
        by_split[track.split].append(AudioMeta(path=track.path, duration=track.duration, sample_rate=track.sample_rate,
                                               amplitude=track.amplitude, info_path=info, extra=extra))
    for split, metas in by_split.items():
        save_manifest(out_dir / split / "data.jsonl", metas, relative=True)
        report.manifest_counts[split] = len(metas)


def write_reports(out_dir: Path, report: Report, settings: dict, identity: dict | None) -> None:
    """failures.jsonl, warnings.jsonl (per shard when sharded) and prepare.json."""
    suffix = "" if settings["num_shards"] == 1 else f".shard-{settings['shard']}-of-{settings['num_shards']}"
    for name, rows in (("failures", report.failures), ("warnings", report.warnings)):
        (out_dir / f"{name}{suffix}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    summary = {"settings": {k: v for k, v in settings.items() if k != "progress"}, "codec": identity,
               "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "done": report.done, "skipped": report.skipped,
               "num_failures": len(report.failures), "num_warnings": len(report.warnings),
               "manifest_counts": report.manifest_counts}
    (out_dir / f"prepare{suffix}.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")


def prepare(source: str | Path, out_dir: str | Path, settings: dict) -> Report:
    """Run the requested steps in order; see `jasco.prepare.__main__` for the settings."""
    source, out_dir = Path(source), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = settings["steps"]
    report = Report()
    if "manifest" in steps or not (out_dir / "tracks.jsonl").exists():
        tracks = discover(source, out_dir, settings, report)
    else:
        tracks = sorted(load_tracks(out_dir).values(), key=lambda t: t.id)
    identity = None
    if {"drums", "latents"} & set(steps):
        from jasco.data.latents import write_codec_identity

        identity = write_codec_identity(out_dir / "latents", step_fns.codec(settings["codec"]))
    for step in step_fns.STEPS[1:]:
        if step in steps:
            run_step(step, tracks, out_dir, settings, report)
    write_manifests(tracks, out_dir, steps, settings, report)
    write_reports(out_dir, report, settings, identity)
    return report
