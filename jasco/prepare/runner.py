"""Resumable, parallel execution of the `jasco.prepare` steps, failure/warning files and final manifests.

Every input track ends up in the manifests, in failures.jsonl (file, step, reason) or both in the
manifests and in warnings.jsonl (e.g. a null optional control); nothing is left out silently.
Worker processes come from a `forkserver` (or `spawn`) context, never `fork`: a forked child of a
parent that already ran torch's OpenMP thread pool can hang forever in `gomp_team_barrier_wait_end`.
Each worker sets its torch thread count before any work (cores / workers).
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from jasco.audio.io import AudioReadError
from jasco.data.manifest import AudioMeta, save_manifest
from jasco.data.side_files import SideFileError
from jasco.files import write_text_atomic
from jasco.prepare import steps as step_fns
from jasco.prepare.requirements import RequirementsError, check_requirements
from jasco.prepare.tracks import (
    PrepareInputError,
    Track,
    balance_splits,
    check_sidecar,
    dedupe_ids,
    input_sides,
    list_inputs,
    load_tracks,
    probe_track,
    save_tracks,
    split_of,
)

logger = logging.getLogger(__name__)
SPLITS = ("train", "valid")
# Fields whose outputs a step writes; a track enters the manifests only with all of them valid
# (or with the optional control recorded as null in warnings.jsonl).
STEP_FIELDS = {"transcode": ("transcoded_path",), "chords": ("chords_path",), "melody": ("salience_path",),
               "drums": ("drums_path", "drum_codes_path"), "latents": ("latents_path",)}
# What `prepare` uses for a setting the caller leaves out; the CLI shows the same defaults.
DEFAULT_SETTINGS: dict[str, Any] = {
    "steps": list(step_fns.DEFAULT_STEPS), "workers": 2, "chords_backend": "auto", "vocabulary": "builtin",
    "melody_weights": None, "melody_frame_rate": 86.0, "codec": "facebook/encodec_32khz",
    "demucs_model": "htdemucs", "latent_window": 20.0, "latent_overlap": 4.0, "latent_dtype": "float16",
    "segment_check": 10.0, "shard": 0, "num_shards": 1, "valid_fraction": 0.1, "progress": True,
    "optional": list(step_fns.OPTIONAL_CONTROLS),
}
STATES = ("done", "skipped", "null", "failed")  # what happened to one track in one step


@dataclass
class Report:
    """What a run did: per-step counts, failures and warnings (also written to files).

    Attributes:
        done / skipped: per step, tracks processed now / already valid from an earlier run.
        failures: `{"track", "path", "step", "file", "reason"}`; warnings: `{..., "message"}`.
        status: per track id and step, one of `STATES`.
        notices: missing optional requirements, said once (see `jasco.prepare.requirements`).
        settings: the resolved settings the run used (chord backend, codec folder, ...).
    """

    done: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)
    warnings: list[dict[str, str]] = field(default_factory=list)
    manifest_counts: dict[str, int] = field(default_factory=dict)
    status: dict[str, dict[str, str]] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def fail(self, track: str, path: str, step: str, reason: str, file: str | None = None) -> None:
        """Record a failure of `track` at `step`."""
        self.failures.append({"track": track, "path": path, "step": step, "file": file or path, "reason": reason})
        self.status.setdefault(track, {})[step] = "failed"

    def warn(self, track: str, path: str, step: str, message: str) -> None:
        """Record a warning about `track` at `step`."""
        self.warnings.append({"track": track, "path": path, "step": step, "message": message})

    def counts(self) -> dict[str, dict[str, int]]:
        """Per step: tracks done, skipped (already valid), null (optional control left out), failed, warned."""
        out: dict[str, dict[str, int]] = {}
        for states in self.status.values():
            for step, state in states.items():
                out.setdefault(step, dict.fromkeys(STATES + ("warned",), 0))[state] += 1
        for step, _ in {(w["step"], w["track"]) for w in self.warnings}:  # tracks with warnings, per step
            out.setdefault(step, dict.fromkeys(STATES + ("warned",), 0))["warned"] += 1
        order = list(step_fns.STEPS)
        return {step: out[step] for step in sorted(out, key=lambda s: order.index(s) if s in order else len(order))}

    def summary_line(self) -> str:
        """One line: per step done / already done / null / failed / warned, and the manifest sizes."""
        parts = []
        for step, c in self.counts().items():
            text = f"{step} {c['done'] + c['skipped']} ok"
            text += f" ({c['skipped']} already done)" if c["skipped"] else ""
            text += "".join(f", {c[k]} {k}" for k in ("null", "failed", "warned") if c[k])
            parts.append(text)
        manifests = ", ".join(f"{k} {v}" for k, v in self.manifest_counts.items()) or "not written (shard run)"
        return f"summary: {'; '.join(parts)} | manifests: {manifests}"


# Errors whose message already names the file and the fix: written to failures.jsonl as they are.
CLEAR_ERRORS = (PrepareInputError, AudioReadError, SideFileError)


def _reason(exc: BaseException) -> str:
    """The reason written to failures.jsonl: clear messages as they are, others with their type."""
    text = str(exc).strip() or type(exc).__name__
    return text if isinstance(exc, CLEAR_ERRORS) else f"{type(exc).__name__}: {text}"


def _call(fn: Callable, *args: Any) -> tuple[Any, str | None, list[str], str | None]:
    """Run `fn` catching errors and Python warnings: (result, error, warnings, file at fault) — picklable."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result, error, file = fn(*args), None, None
        except Exception as exc:  # every failure is listed with its reason; the run goes on
            result, error, file = None, _reason(exc), getattr(exc, "file", None)
    return result, error, [str(w.message) for w in caught], file


def _init_worker(threads: int) -> None:
    """First thing in each worker: its share of the cores, before torch starts any thread pool."""
    torch.set_num_threads(threads)


def _context() -> multiprocessing.context.BaseContext:
    """`forkserver` where the platform has it (cheap, and no inherited OpenMP/CUDA state), else `spawn`."""
    return multiprocessing.get_context("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                                       else "spawn")


class Workers:
    """Worker processes shared by every step of one run (started on first use, one model load each)."""

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self.threads = max(1, (os.cpu_count() or 1) // self.workers)
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker processes."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def run(self, fn: Callable, jobs: list[tuple], desc: str, progress: bool = True
            ) -> list[tuple[Any, str | None, list[str], str | None]]:
        """`_call(fn, *job)` for each job, in worker processes when `workers > 1`, with a progress bar.

        A worker that dies (killed, out of memory) fails the jobs it leaves unfinished, with that
        reason; the next step starts fresh workers.
        """
        bar = tqdm(total=len(jobs), desc=desc, disable=not progress, file=sys.stderr)
        results: list = [None] * len(jobs)
        try:
            if self.workers == 1 or len(jobs) <= 1:
                for i, job in enumerate(jobs):
                    results[i] = _call(fn, *job)
                    bar.update()
                return results
            if self._pool is None:
                self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=_context(),
                                                 initializer=_init_worker, initargs=(self.threads,))
            futures = {self._pool.submit(_call, fn, *job): i for i, job in enumerate(jobs)}
            try:
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    bar.update()
            except BrokenProcessPool as exc:
                reason = (f"a worker process died ({exc}; killed, or out of memory?) before this track was done: "
                          "rerun prepare to retry it (with fewer --workers if memory is short)")
                for future, i in futures.items():
                    if results[i] is None:
                        results[i] = (None, reason, [], None)
                self.close()
        finally:
            bar.close()
        return results


def _relative(path: Path, base: Path) -> str:
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return path.name


def discover(inputs: list[tuple[Path, dict[str, str]]], base: Path, out_dir: Path, settings: dict,
             report: Report, workers: Workers) -> list[Track]:
    """The `manifest` step: probe new or changed files, reuse the cached track list for the others."""
    cached = load_tracks(out_dir)
    tracks, jobs = [], []
    for path, sides in inputs:
        key = str(Path(path).resolve())
        old = cached.get(key)
        stat = Path(path).stat() if Path(path).exists() else None
        if old is not None and stat is not None and (old.size, old.mtime) == (stat.st_size, stat.st_mtime):
            old.sides = input_sides(Path(key), sides)  # the input manifest's side fields may have changed
            tracks.append(old)
        else:
            jobs.append((str(path), str(base), sides, settings["valid_fraction"]))
    probed = set()
    for job, (result, error, _, file) in zip(jobs, workers.run(probe_track, jobs, "manifest", settings["progress"])):
        if error is not None:  # no track id yet: the file's path relative to the input root names it
            report.fail(_relative(Path(job[0]), base), str(Path(job[0]).resolve()), "manifest", error, file)
        else:
            tracks.append(Track(**result))
            probed.add(id(tracks[-1]))
    dedupe_ids(tracks)
    for track in tracks:
        report.status.setdefault(track.id, {})["manifest"] = "done" if id(track) in probed else "skipped"
    tracks.sort(key=lambda t: t.id)
    for track in tracks:  # after dedupe, and with this run's --valid-fraction
        track.split = split_of(track.id, settings["valid_fraction"])
    save_tracks(out_dir, tracks)
    valid = check_tracks(tracks, settings, report)
    states = [s.get("manifest") for s in report.status.values()]
    report.done["manifest"], report.skipped["manifest"] = states.count("done"), states.count("skipped")
    return valid


def check_tracks(tracks: list[Track], settings: dict, report: Report) -> list[Track]:
    """The tracks whose sidecar is valid (the others fail the manifest step); probe warnings reported again."""
    valid = []
    for track in tracks:
        info = track.sides.get("info_path")
        try:
            if info is not None:
                check_sidecar(info)
        except PrepareInputError as exc:
            report.status.pop(track.id, None)
            report.fail(track.id, track.path, "manifest", str(exc), exc.file)
            continue
        for note in track.notes:
            report.warn(track.id, track.path, "manifest", f"{track.path}: {note}")
        if track.duration < settings["segment_check"]:
            report.warn(track.id, track.path, "manifest", (
                f"shorter ({track.duration:.2f} s) than a {settings['segment_check']:g} s training segment: kept; "
                "its segments are zero-padded at the end (the dataset drops files shorter than "
                "min_segment_ratio x segment_duration)"))
        valid.append(track)
    return valid


def _track_job(step: str, track: dict, out_dir: str, settings: dict) -> dict[str, Any] | None:
    """Worker body: None when already done, else the step's result."""
    out = step_fns.out_paths(Path(out_dir), track["id"])
    if step_fns.DONE[step](track, out, settings):
        return None
    return step_fns.DO[step](track, out, settings)


def run_step(step: str, tracks: list[Track], out_dir: Path, settings: dict, report: Report,
             workers: Workers) -> None:
    """Run one per-track step over this shard's tracks."""
    mine = [t for i, t in enumerate(tracks) if i % settings["num_shards"] == settings["shard"]]
    jobs = [(step, asdict(t), str(out_dir), settings) for t in mine]
    done = skipped = 0
    for track, (result, error, caught, file) in zip(mine, workers.run(_track_job, jobs, step, settings["progress"])):
        states = report.status.setdefault(track.id, {})
        if error is not None:
            report.fail(track.id, track.path, step, error, file)
            continue
        if result is None:
            skipped += 1
            states[step] = "skipped"
            continue
        states[step] = "null" if result.get("null") else "done"
        done += not result.get("null")
        for message in result["warnings"] + caught:
            report.warn(track.id, track.path, step, message)
    report.done[step], report.skipped[step] = done, skipped


def _outputs(track: Track, out_dir: Path, settings: dict, states: dict[str, str]
             ) -> tuple[dict[str, str], str | None]:
    """(valid output paths of the track, the first requested step whose output is missing, or None)."""
    out = step_fns.out_paths(out_dir, track.id)
    data = asdict(track)
    fields: dict[str, str] = {}
    for step, names in STEP_FIELDS.items():
        ok = step_fns.DONE[step](data, out, settings)
        if not ok and step in settings["steps"] and states.get(step) != "null":
            return fields, step
        if ok:
            for name in names:
                fields[name] = str(step_fns._drum_stem(data, out)) if name == "drums_path" else str(out[name])
    return fields, None


def write_manifests(tracks: list[Track], out_dir: Path, settings: dict, report: Report) -> None:
    """OUT/{train,valid}/data.jsonl with relative paths, for tracks whose requested outputs are all valid.

    A track whose outputs are incomplete without a recorded failure gets one here (never dropped
    silently). Neither split is empty when 2+ tracks made it and `valid_fraction > 0`.
    """
    good: list[tuple[Track, dict[str, str]]] = []
    for track in tracks:
        states = report.status.get(track.id, {})
        if "failed" in states.values():
            continue
        fields, missing = _outputs(track, out_dir, settings, states)
        if missing is not None:
            report.fail(track.id, track.path, missing, f"the {missing} output of this track is missing or invalid "
                        "after the run (was it deleted meanwhile?): rerun prepare to redo it")
            continue
        good.append((track, fields))
    splits = balance_splits([t for t, _ in good], settings["valid_fraction"])
    by_split: dict[str, list[AudioMeta]] = {s: [] for s in SPLITS}
    for track, fields in good:
        # save_manifest(relative=True) makes every path field relative to the manifest's folder.
        extra = {name: str(Path(value).resolve()) for name, value in fields.items() if name != "transcoded_path"}
        path, rate = track.path, track.sample_rate
        if "transcoded_path" in fields and "transcode" in settings["steps"]:
            path, rate = fields["transcoded_path"], settings["transcode_rate"]
            extra["original_path"] = track.path  # not a path field: kept absolute, verbatim
        by_split[splits[track.id]].append(AudioMeta(path=path, duration=track.duration, sample_rate=rate,
                                                    amplitude=track.amplitude, info_path=track.sides.get("info_path"),
                                                    extra=extra))
    for split, metas in by_split.items():
        save_manifest(out_dir / split / "data.jsonl", metas, relative=True)
        report.manifest_counts[split] = len(metas)


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def write_reports(out_dir: Path, report: Report, settings: dict, identity: dict | None) -> None:
    """failures.jsonl, warnings.jsonl (per shard when sharded) and prepare.json, each written atomically."""
    suffix = "" if settings["num_shards"] == 1 else f".shard-{settings['shard']}-of-{settings['num_shards']}"
    write_text_atomic(out_dir / f"failures{suffix}.jsonl", _jsonl(report.failures))
    write_text_atomic(out_dir / f"warnings{suffix}.jsonl", _jsonl(report.warnings))
    summary = {"settings": {k: v for k, v in settings.items() if k != "progress"}, "codec": identity,
               "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "done": report.done, "skipped": report.skipped,
               "counts": report.counts(), "notices": report.notices, "num_failures": len(report.failures),
               "num_warnings": len(report.warnings), "manifest_counts": report.manifest_counts}
    write_text_atomic(out_dir / f"prepare{suffix}.json", json.dumps(summary, indent=1) + "\n")


def _load_codec(settings: dict, out_dir: Path) -> tuple[Any, dict | None, str | None]:
    """(codec, identity, None), or (None, None, the problem) when it cannot load or OUT holds another codec."""
    from jasco.data.latents import LatentCacheError, write_codec_identity

    try:
        codec = step_fns.codec(settings["codec_source"])
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        return None, None, f"--codec {settings['codec']}: cannot load it ({reason}); or use --codec debug for a test run"
    try:
        return codec, write_codec_identity(out_dir / "latents", codec), None
    except LatentCacheError as exc:
        return None, None, str(exc)


def prepare(source: str | Path, out_dir: str | Path, settings: dict) -> Report:
    """Run the requested steps in order; see `DEFAULT_SETTINGS` and `jasco.prepare.__main__` for the settings.

    Raises:
        ManifestError: the source is not an audio folder or a valid manifest.
        RequirementsError: something a selected step needs is missing (checked before any track).
    """
    settings = {**DEFAULT_SETTINGS, **settings}
    source, out_dir = Path(source), Path(out_dir)
    inputs, base = list_inputs(source, exclude=out_dir)
    preflight = check_requirements(settings, inputs)
    settings = preflight.settings
    codec = identity = None
    if settings["codec_source"] is not None and not preflight.errors:
        codec, identity, problem = _load_codec(settings, out_dir)
        if problem:
            preflight.errors.append(problem)
    if preflight.errors:
        raise RequirementsError(preflight.errors)
    if codec is not None:
        settings["transcode_rate"], settings["transcode_channels"] = codec.sample_rate, codec.channels
    report = Report(notices=preflight.notices, settings=settings)
    for notice in preflight.notices:
        logger.warning("%s", notice)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = settings["steps"]
    with Workers(settings["workers"]) as workers:
        if "manifest" in steps or not (out_dir / "tracks.jsonl").exists():
            tracks = discover(inputs, base, out_dir, settings, report, workers)
        else:
            tracks = check_tracks(sorted(load_tracks(out_dir).values(), key=lambda t: t.id), settings, report)
        for step in step_fns.STEPS[1:]:
            if step in steps:
                run_step(step, tracks, out_dir, settings, report, workers)
    if settings["num_shards"] == 1:
        write_manifests(tracks, out_dir, settings, report)
    else:
        logger.info("shard run: the manifests are written by a final run without --shard")
    write_reports(out_dir, report, settings, identity)
    return report
