"""What each `jasco.prepare` step needs, checked once before any track is processed.

`check_requirements` turns the user's settings into resolved ones (the codec as a local folder,
melody weights as a local file, the chord backend actually used, whether Demucs is there) and
lists what is missing, one message per requirement saying what to install or pass:

| step | needs | when missing |
|---|---|---|
| latents, drums | the codec: `debug`, a folder, or a hub id in the cache / reachable (fails at once when `HF_HUB_OFFLINE` is set or the hub does not answer) | error |
| chords | `--chords-backend chordino`: Chordino installed | error (`auto`, the default, falls back to `templates` with a notice) |
| melody | `--melody-weights` given: the file (or URL) readable, h5py installed | error |
| melody | no `--melody-weights` and some track without a salience file | optional (default): notice, those tracks get no melody; required: error |
| drums | Demucs (and its model) when some track has no drum stem | optional (default): notice, those tracks get no drums; required: error |

Errors stop the run before any work (`RequirementsError`, exit code 2); notices are logged once and
recorded in prepare.json, and each affected track gets a line in warnings.jsonl.
"""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jasco.controls.drums.stems import find_drum_stem
from jasco.data.side_files import SALIENCE_SUFFIXES, find_side_file
from jasco.environment import cache_dir
from jasco.hub import hub_offline
from jasco.models.codec import DEBUG_CODEC, codec_source_name

logger = logging.getLogger(__name__)
PUBLISHED_RATE, PUBLISHED_CHANNELS = 32000, 1  # the published codec's, for --transcode without a codec
HUB_TIMEOUT_S = 10.0
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class RequirementsError(RuntimeError):
    """Some requirement of the selected steps is missing; `messages` holds one line per requirement."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("\n".join(messages))
        self.messages = messages


@dataclass
class Preflight:
    """Resolved settings, errors (stop the run) and notices (logged once, the run goes on)."""

    settings: dict[str, Any]
    errors: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


def _cached_snapshot(repo: str) -> Path | None:
    """The local snapshot folder of a hub repo when its config and weights are in the cache."""
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(repo, "config.json", cache_dir=cache_dir())
    if not isinstance(config, str):
        return None
    folder = Path(config).parent
    return folder if any((folder / name).is_file() for name in _WEIGHT_FILES) else None


def resolve_codec(spec: str) -> tuple[str | None, str | None]:
    """(what to load: `debug` or a local folder, None) or (None, the problem in one line).

    A hub id is looked up in the cache first; otherwise, unless the hub is offline or unreachable
    (`jasco.hub.hub_offline`: the offline variables, or one quick probe), the codec is
    downloaded there and then, so workers load a folder.
    """
    name = codec_source_name(spec)
    if name == DEBUG_CODEC:
        return DEBUG_CODEC, None
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            return None, (f"--codec {spec}: folder {path} has no config.json: give a folder written by "
                          "EncodecModel.save_pretrained (or `hf download facebook/encodec_32khz "
                          "--local-dir DIR`), or --codec debug for a test run")
        return str(path), None
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        return None, (f"--codec {spec}: no such folder, and not a Hugging Face repo id: pass a codec folder, "
                      "facebook/encodec_32khz, or --codec debug for a test run")
    cached = _cached_snapshot(name)
    if cached is not None:
        return str(cached), None
    fix = (f"on a machine with internet run `hf download {name} --local-dir DIR` and pass --codec DIR, "
           "or use --codec debug for a test run")
    where = cache_dir() or "the default Hugging Face cache"
    offline = hub_offline()  # HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, or one quick probe of the hub: no retries
    if offline is not None:
        return None, f"--codec {name}: not in {where} and {offline}: {fix}"
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(name, cache_dir=cache_dir(), etag_timeout=HUB_TIMEOUT_S,
                                   allow_patterns=["*.json", "*.safetensors"])
    except Exception as exc:  # network, auth, missing repo: all mean "cannot get the codec"
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        return None, f"--codec {name}: not in {where} and the Hugging Face hub cannot be reached ({reason}): {fix}"
    return folder, None


def _melody_weights(weights: str) -> tuple[str | None, str | None]:
    """(local weights file, None) or (None, the problem)."""
    if importlib.util.find_spec("h5py") is None:
        return None, ("--melody-weights needs h5py to read multif0.h5: `pip install 'jasco[melody]'` (or leave "
                      "--melody-weights out: tracks without a salience file then get no melody)")
    from jasco.controls.melody.extraction import resolve_weights
    from jasco.controls.melody.network import MultiF0Salience

    try:
        local = resolve_weights(weights)
        if not local.is_file():
            raise FileNotFoundError(f"{local} does not exist")
        MultiF0Salience.from_keras_h5(local)  # a corrupt or foreign .h5 fails here, not once per track
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        return None, (f"--melody-weights {weights}: cannot load deepsalience weights ({reason}): pass the path (or "
                      "URL) of multif0.h5, or leave --melody-weights out (tracks without a salience file then "
                      "get no melody)")
    return str(local), None


def _demucs(model: str) -> str | None:
    """None when Demucs and its model load, else the problem."""
    if importlib.util.find_spec("demucs") is None:
        return "Demucs is not installed: `pip install 'jasco[drums]'`"
    from jasco.controls.drums.stems import load_demucs

    try:
        load_demucs(model, "cpu")  # downloads the model once, here, rather than in every worker
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        return f"Demucs cannot load --demucs-model {model} ({reason}): connect once to download it"
    return None


def _without(inputs: list[tuple[Path, dict[str, str]]], has: Any) -> int:
    return sum(1 for path, sides in inputs if not has(path, sides))


def _has_salience(path: Path, sides: dict[str, str]) -> bool:
    try:
        return find_side_file(path, "salience_path", SALIENCE_SUFFIXES, sides.get("salience_path")) is not None
    except ValueError:  # a manifest naming a missing file: that track fails its melody step with the reason
        return True


def _has_stem(path: Path, sides: dict[str, str]) -> bool:
    return sides.get("drums_path") is not None or find_drum_stem(path) is not None


def check_requirements(settings: dict[str, Any], inputs: list[tuple[Path, dict[str, str]]]) -> Preflight:
    """Check what the selected steps need, for these input tracks; returns resolved settings and messages."""
    steps, optional = settings["steps"], set(settings["optional"])
    resolved = dict(settings, codec_source=None, demucs_available=False,
                    transcode_rate=PUBLISHED_RATE, transcode_channels=PUBLISHED_CHANNELS)
    result = Preflight(resolved)
    if {"drums", "latents"} & set(steps):
        resolved["codec_source"], problem = resolve_codec(settings["codec"])
        if problem:
            result.errors.append(problem)
    if "chords" in steps:
        from jasco.controls.chords.recognition import chordino_available

        backend = settings["chords_backend"]
        if backend in ("auto", "chordino") and not chordino_available():
            if backend == "chordino":
                result.errors.append("--chords-backend chordino: Chordino is not installed: `make install-chords` "
                                     "(docs/CHORDS.md), or pass --chords-backend templates (no extra dependency)")
            else:
                result.notices.append("chords: Chordino is not installed, so chords are recognised with the "
                                      "templates backend (`make install-chords` for Chordino, see docs/CHORDS.md)")
            resolved["chords_backend"] = "templates"
        elif backend == "auto":
            resolved["chords_backend"] = "chordino"
    if "melody" in steps:
        if settings["melody_weights"]:
            resolved["melody_weights"], problem = _melody_weights(settings["melody_weights"])
            if problem:
                result.errors.append(problem)
        elif (missing := _without(inputs, _has_salience)):
            message = (f"melody: {missing} of {len(inputs)} track(s) have no salience file and no --melody-weights "
                       "was given: pass --melody-weights PATH_OR_URL (deepsalience multif0.h5, needs "
                       "`pip install 'jasco[melody]'`)")
            if "melody" in optional:
                result.notices.append(message + "; until then they get no melody condition")
            else:
                result.errors.append(message + ", or leave melody out of --steps")
    if "drums" in steps and (missing := _without(inputs, _has_stem)):
        problem = _demucs(settings["demucs_model"])
        resolved["demucs_available"] = problem is None
        if problem:
            message = (f"drums: {missing} of {len(inputs)} track(s) have no drum stem and {problem}; or put "
                       "<stem>.drums.wav / .flac next to the audio")
            if "drums" in optional:
                result.notices.append(message + "; until then they get no drum condition")
            else:
                result.errors.append(message + ", or leave drums out of --steps")
    return result
