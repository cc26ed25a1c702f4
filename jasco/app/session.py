"""What the web page does, as plain Python: pick and load models, generate, draw the controls.

`Session` holds the loaded models (one lock each: a model never runs two requests at once), the
optional melody extractor and a folder for the outputs. `Session.generate(Request)` returns the
wav and the controls picture, or raises `AppInputError` (one line) for anything the user can fix.

Shapes: `C` audio channels, `N` samples, `K` melody bins (53), `T` latent frames.
"""
from __future__ import annotations

import itertools
import logging
import math
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from jasco import environment, hub
from jasco.app.inputs import (
    AppInputError,
    Extractor,
    check_chords,
    melody_from_audio,
    one_line,
    read_drums,
    read_salience_upload,
)
from jasco.audio.io import audio_write
from jasco.controls.melody.salience import salience_segment
from jasco.controls.plotting import plot_controls
from jasco.models import flow
from jasco.models.adapters import AdapterError
from jasco.models.arguments import InvalidInputError
from jasco.models.jasco import JASCO
from jasco.models.loaders import MODEL_FILE, ChordVocabularyError, ModelLoadError

logger = logging.getLogger(__name__)
PUBLISHED_MODELS = ("facebook/jasco-chords-drums-400M", "facebook/jasco-chords-drums-1B",
                    "facebook/jasco-chords-drums-melody-400M", "facebook/jasco-chords-drums-melody-1B")
CHECKPOINT_FILE = "checkpoint.th"  # a training run's checkpoint in its experiment folder
SAMPLERS = tuple(flow.ODE_SOLVERS)  # fixed-step solvers use `steps`; adaptive ones their tolerances
KEPT_OUTPUTS = 32  # generations whose files stay in the output folder
Report = Callable[[float, str], None]  # (fraction done in [0, 1], what is being done)
# Errors of JASCO.get_pretrained a user causes by naming a model (the hub's are RuntimeError or HubUnavailableError).
_LOAD_ERRORS = (ModelLoadError, FileNotFoundError, RuntimeError, ChordVocabularyError, AdapterError,
                hub.HubUnavailableError, OSError, ValueError)


def local_models(dora_dir: Path | None = None) -> list[str]:
    """Experiment folders `<dora_dir>/xps/<SIG>` holding a checkpoint, newest first."""
    root = (dora_dir if dora_dir is not None else environment.dora_dir()) / "xps"
    found = [p.parent for p in root.glob(f"*/{CHECKPOINT_FILE}")] if root.is_dir() else []
    return [str(p) for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]


def model_source(name: str) -> str:
    """What `JASCO.get_pretrained` loads for a picker entry: an experiment folder → its checkpoint."""
    path = Path(name).expanduser()
    if path.is_dir() and not (path / MODEL_FILE).is_file() and (path / CHECKPOINT_FILE).is_file():
        return str(path / CHECKPOINT_FILE)
    return name


def model_choices(given: list[str], dora_dir: Path | None = None) -> list[str]:
    """The picker's entries: the models given on the command line, local experiments, the published ones."""
    return list(dict.fromkeys([*given, *local_models(dora_dir), *PUBLISHED_MODELS]))


@dataclass
class Request:
    """One generation as the page asks for it (file fields are uploaded paths or None)."""

    model: str
    text: str = ""
    chords: str = ""
    drums: str | None = None
    melody_audio: str | None = None
    melody_salience: str | None = None
    duration: float | None = 10.0  # None (an emptied field) is reported as such
    sampler: str = flow.DEFAULT_SOLVER
    steps: int | None = flow.DEFAULT_STEPS
    cfg_all: float | None = 1.25
    cfg_text: float | None = 2.5
    seed: int | None = 0  # None: a random seed


@dataclass
class Result:
    """A finished generation: the wav, the controls picture, and a one-line description."""

    wav_path: Path
    plot_path: Path
    duration: float
    info: str


class Session:
    """Loaded models (at most `max_models`, least recently used dropped) and the output folder.

    Args:
        device: where models run (None: cuda when available).
        melody_weights: deepsalience `multif0.h5` path or URL; None: melody only from salience files.
        out_dir: where wavs and pictures go (default: a new temporary folder).
        max_models: models kept loaded at once.
    """

    def __init__(self, device: str | None = None, melody_weights: str | None = None,
                 out_dir: Path | None = None, max_models: int = 2) -> None:
        self.device = device
        self.melody_weights = melody_weights
        self.out_dir = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="jasco-app-"))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.max_models = max_models
        self._models: OrderedDict[str, JASCO] = OrderedDict()
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()  # protects the two dicts above and the extractor
        self._extractor: Extractor | None = None
        self._counter = itertools.count()

    # ------------------------------------------------------------------ models
    def _lock(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    def model(self, name: str) -> JASCO:
        """The loaded model `name` (loading it once); AppInputError naming it when it cannot load."""
        name = (name or "").strip()
        if not name:
            raise AppInputError("model: pick a model (an exported folder, an experiment folder or a hub id).")
        with self._lock(name):
            with self._guard:
                if name in self._models:
                    self._models.move_to_end(name)
                    return self._models[name]
            try:
                model = JASCO.get_pretrained(model_source(name), device=self.device)
            except _LOAD_ERRORS as err:
                raise AppInputError(f"model {name}: {one_line(err)[:400]}") from err
            with self._guard:
                self._models[name] = model
                while len(self._models) > self.max_models:
                    self._models.popitem(last=False)
            return model

    def describe(self, name: str) -> str:
        """One line on a model: its controls, training segment and chord vocabulary."""
        model = self.model(name)
        vocab = model.chords_vocabulary
        chords = "" if "chords" not in model.controls else (
            f"; {vocab.card} chord labels" if vocab is not None else "; chord vocabulary unknown (chords refused)")
        return (f"{name}: controls text, {', '.join(model.controls) or 'no others'}; trained on "
                f"{model.segment_duration:g} s segments (longer pieces are generated in overlapping windows)"
                f"{chords}.")

    def check_chords(self, name: str, text: str, duration: float | None) -> str:
        """The live check of the chord field: a summary line, or the problem (never raises)."""
        try:
            model = self.model(name) if text.strip() else None
            if model is None:
                return "no chords"
            end = math.inf if duration is None else float(duration)  # an emptied duration field: not checked
            return check_chords(text, model.chords_vocabulary, end, model.controls).summary()
        except AppInputError as err:
            return f"⚠ {err}"

    # ------------------------------------------------------------------ melody
    def extractor(self) -> Extractor | None:
        """The melody extractor (deepsalience loaded once), or None when no weights are configured."""
        if self.melody_weights is None:
            return None
        with self._guard:
            if self._extractor is None:
                from jasco.controls.melody.extraction import (
                    extract_salience,
                    resolve_weights,
                )
                from jasco.controls.melody.network import MultiF0Salience

                try:
                    network = MultiF0Salience.from_keras_h5(resolve_weights(self.melody_weights))
                except ImportError as err:
                    raise AppInputError("melody audio: reading multif0.h5 needs h5py: pip install "
                                        "'jasco[melody]'.") from err
                except (OSError, ValueError) as err:
                    raise AppInputError(f"melody audio: cannot load --melody-weights {self.melody_weights} "
                                        f"({one_line(err)[:200]}).") from err
                self._extractor = lambda wav, sr: extract_salience(wav, sr, model=network, device="cpu")
            return self._extractor

    # ------------------------------------------------------------------ generation
    def generate(self, request: Request, report: Report | None = None) -> Result:
        """Generate one piece; AppInputError (one line) for any input problem, checked before generating."""
        for name, value in (("duration", request.duration), ("steps", request.steps),
                            ("CFG (all)", request.cfg_all), ("CFG (text)", request.cfg_text)):
            if value is None:
                raise AppInputError(f"{name}: the field is empty; type a number.")
        if request.sampler not in SAMPLERS:
            raise AppInputError(f"sampler: {request.sampler!r} is not one of {', '.join(SAMPLERS)}.")
        if request.melody_audio and request.melody_salience:
            raise AppInputError("melody: give a melody audio clip or a salience file, not both.")
        model = self.model(request.model)
        duration = float(request.duration)
        chords = check_chords(request.chords or "", model.chords_vocabulary, duration, model.controls)
        drums, drums_rate = read_drums(request.drums) if request.drums else (None, model.sample_rate)
        melody = None
        if request.melody_audio or request.melody_salience:
            salience, rate = (melody_from_audio(request.melody_audio, self.extractor()) if request.melody_audio
                              else read_salience_upload(request.melody_salience))
            n_frames = round(duration * model.frame_rate)
            melody = salience_segment(salience, rate, 0.0, n_frames, target_rate=model.frame_rate)  # [K, T]
        with self._lock(request.model):
            try:
                model.set_generation_params(cfg_coef_all=request.cfg_all, cfg_coef_txt=request.cfg_text,
                                            solver=request.sampler, steps=request.steps,
                                            duration=duration)
                wav = _generate_reporting(model, report, [request.text or None], chords=chords.changes or None,
                                          drums_wav=drums, drums_sample_rate=drums_rate,
                                          melody_salience_matrix=melody, seed=request.seed)  # [1, 1, N]
            except InvalidInputError as err:
                raise AppInputError(f"{_FIELD_OF.get(err.argument, err.argument)}: {one_line(err)}") from err
        return self._write(wav[0].cpu(), model, request, chords.changes or None, melody, drums, drums_rate)

    def _write(self, wav: torch.Tensor, model: JASCO, request: Request, chords: list[tuple[float, str]] | None,
               melody: torch.Tensor | None, drums: torch.Tensor | None, drums_rate: int) -> Result:
        """Write the wav (loudness-normalised) and its controls picture; keep the last KEPT_OUTPUTS."""
        stem = self.out_dir / f"jasco-{next(self._counter):05d}"
        wav_path = audio_write(stem.with_suffix(".wav"), wav, model.sample_rate, strategy="loudness",
                               loudness_compressor=True)
        plot_path = plot_controls(stem.with_suffix(".png"), wav, model.sample_rate, chords=chords, melody=melody,
                                  drums=drums, drums_sample_rate=drums_rate, frame_rate=model.frame_rate,
                                  title=request.text or None)
        for old in sorted(self.out_dir.glob("jasco-*"))[:-2 * KEPT_OUTPUTS]:
            old.unlink(missing_ok=True)
        seconds = wav.shape[-1] / model.sample_rate
        seed = "random" if request.seed is None else request.seed
        info = (f"{seconds:g} s from {request.model}, {request.sampler}"
                f"{f' {request.steps} steps' if request.sampler in flow.FIXED_STEP_SOLVERS else ''}, cfg {request.cfg_all:g}/"
                f"{request.cfg_text:g}, seed {seed}")
        return Result(wav_path=Path(wav_path), plot_path=plot_path, duration=seconds, info=info)


# generate_music / set_generation_params argument -> the page's field that sets it.
_FIELD_OF = {"cfg_coef_all": "CFG (all)", "cfg_coef_txt": "CFG (text)", "steps": "steps", "solver": "sampler", "duration": "duration",
             "seed": "seed", "descriptions": "text", "chords": "chords", "drums_wav": "drums",
             "drums_sample_rate": "drums", "melody_salience_matrix": "melody"}


def _generate_reporting(model: JASCO, report: Report | None, descriptions: list[str | None],
                        **kwargs: object) -> torch.Tensor:
    """`model.generate_music(...)` with its sampler's progress sent to `report(fraction, text)`."""
    if report is None:
        return model.generate_music(descriptions, **kwargs)
    report(0.0, "generating")
    return model.generate_music(descriptions, progress=lambda step, total: report(step / max(total, 1), "generating"),
                                **kwargs)
