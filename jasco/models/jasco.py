"""`JASCO`: text-to-music generation with chords, drums and melody controls, for people.

    model = JASCO.get_pretrained("facebook/jasco-chords-drums-400M")  # the published chord order, built in
    model.set_generation_params(cfg_coef_all=1.25, cfg_coef_txt=2.5, euler=True, euler_steps=10)
    wav = model.generate_music(["80s pop"], chords=[("C", 0.0), ("G", 2.0)], seed=0)  # [1, 1, N]

Generations longer than the model's training segment (10 s for the published models) are made of
overlapping windows, each conditioned on its slice of the controls, cross-faded linearly in
latent space; all windows share one noise draw over the whole duration. See docs/INFERENCE.md for
the limits of this scheme.

Every argument is validated before anything is generated; a bad one raises `InvalidInputError`
(a ValueError) whose `argument` names the parameter. Ranges: docs/INFERENCE.md, "Argument ranges".

Shapes: `B` batch, `C` audio channels, `N` samples, `T` latent frames (50 per second), `K` melody
bins (53), `F` latent dim (128), `W` frames of one window.
"""
from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from tqdm import tqdm

from jasco.audio.convert import convert_audio
from jasco.controls.chords.progression import normalize_progression
from jasco.controls.chords.vocabulary import ChordVocabulary, frame_chords
from jasco.controls.melody.salience import N_MELODY_BINS, one_hot_frames
from jasco.data.attributes import ConditioningAttributes, WavCondition
from jasco.models import flow
from jasco.models.arguments import (
    MAX_CFG_COEF,
    MAX_DURATION,
    MAX_SEED,
    InvalidInputError,
    check_int,
    check_real,
    real_problem,
)
from jasco.models.codec import EncodecCompressionModel
from jasco.models.flow_matching import FlowMatchingModel
from jasco.models.loaders import (
    ChordVocabularyError,
    UnknownChordVocabularyError,
    load_chord_vocabulary,
    load_jasco,
    load_jasco_with_adapter,
)

# Control name as users know it -> conditioner name in the model, and -> the generate_music argument.
CONTROLS = {"chords": "chords", "drums": "self_wav", "melody": "melody"}
CONTROL_ARGUMENTS = {"chords": "chords", "drums": "drums_wav", "melody": "melody_salience_matrix"}
Progression = Sequence[tuple[Any, Any]]
PUBLISHED_EULER_STEPS = 100  # the published API's `euler_steps` default, used with `euler=True`


class _TqdmCallback:
    """Progress callback `(step, total)` drawing one tqdm bar (adaptive solvers report time in 1/1000)."""

    def __init__(self, total: int, unit: str) -> None:
        self.bar = tqdm(total=total, desc="generating", unit=unit)

    def __call__(self, step: int, total: int) -> None:
        self.bar.total = total
        self.bar.n = min(step, total)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def window_starts(total: int, window: int, overlap: int) -> list[int]:
    """Evenly spaced start frames of the fewest `window`-frame windows covering `total` frames with
    consecutive windows sharing at least `overlap` frames."""
    if total <= window:
        return [0]
    if not 0 <= overlap < window:
        raise ValueError(f"overlap must be in [0, {window}) frames, got {overlap}.")
    gaps = math.ceil((total - window) / (window - overlap))
    return [round(j * (total - window) / gaps) for j in range(gaps + 1)]


def crossfade_weights(starts: list[int], window: int) -> torch.Tensor:
    """Per-window weights `[k, W]`: a linear fade-in over the overlap with the previous window and a
    fade-out over the overlap with the next, so two overlapping windows' weights sum to 1."""
    weights = torch.ones(len(starts), window)
    frames = torch.arange(window, dtype=torch.float32)
    for i, start in enumerate(starts):
        if i > 0:
            fade = starts[i - 1] + window - start
            weights[i] = torch.minimum(weights[i], (frames + 1) / (fade + 1))
        if i + 1 < len(starts):
            fade = start + window - starts[i + 1]
            weights[i] = torch.minimum(weights[i], (window - frames) / (fade + 1))
    return weights


class JASCO:
    """A loaded JASCO model with its codec and chord vocabulary, ready to generate music.

    Args:
        name: where it was loaded from (for messages).
        model: the flow model (eval mode).
        compression_model: the codec decoding its latents.
        chords_vocabulary: label -> index map of the chords control (default: the one the model's
            config records, `chords_vocabulary`; `published` for the published models, told by a hub
            name `facebook/jasco-*` or their xp.cfg). One given here must equal a recorded one (same
            labels in the same order), else ChordVocabularyError; otherwise it is used as given. A
            model whose vocabulary cannot be determined loads, but refuses chords (InvalidInputError).
        segment_duration: training segment length in seconds (default: the model's config, else 10).
    """

    def __init__(self, name: str, model: FlowMatchingModel, compression_model: EncodecCompressionModel,
                 chords_vocabulary: ChordVocabulary | None = None, segment_duration: float | None = None):
        self.name = name
        self.model = model.eval()
        self.compression_model = compression_model.eval()
        cfg = getattr(model, "cfg", None) or {}
        self.segment_duration = float(segment_duration or (cfg.get("dataset") or {}).get("segment_duration") or 10.0)
        conditioners = model.condition_provider.conditioners
        self.controls = [c for c, name in CONTROLS.items() if name in conditioners]
        self.chords_vocabulary: ChordVocabulary | None = None
        self._unknown_vocabulary: UnknownChordVocabularyError | None = None  # raised when chords are given
        if "chords" in self.controls:
            try:
                vocab = load_chord_vocabulary(cfg, chords_vocabulary, source=name)
            except UnknownChordVocabularyError as err:
                self._unknown_vocabulary = err
            else:
                if vocab.card != conditioners["chords"].card:
                    raise ChordVocabularyError(f"the chord vocabulary has {vocab.card} labels but model {name} was "
                                               f"trained with {conditioners['chords'].card}: pass the mapping it was "
                                               "trained with.")
                self.chords_vocabulary = vocab
        self.set_generation_params()

    # ------------------------------------------------------------------ construction
    @staticmethod
    def get_pretrained(name_or_dir: str | os.PathLike, device: str | torch.device | None = None,
                       chords_mapping_path: str | os.PathLike | None = None,
                       cache_dir: str | os.PathLike | None = None, adapter: str | os.PathLike | None = None) -> JASCO:
        """Load a hub repo id or an exported folder (device default: cuda when available, else cpu).

        `adapter`: a LoRA adapter folder (`jasco-export --adapter`) applied to `name_or_dir`, its
        base model (None: the base the adapter names); its adapters are merged into the weights.

        `chords_mapping_path`: the chord vocabulary file. A model trained with this repository
        records its vocabulary and needs none; one given anyway must equal the recorded one, else
        `ChordVocabularyError`. The published models use the `published` vocabulary shipped with
        jasco; a file given here overrides it (docs/CHORDS.md).
        """
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        loaded = (load_jasco(name_or_dir, device=device, cache_dir=cache_dir) if adapter is None else
                  load_jasco_with_adapter(name_or_dir, adapter, device=device, cache_dir=cache_dir))
        vocab = None
        if "chords" in loaded.model.condition_provider.conditioners and chords_mapping_path is not None:
            vocab = load_chord_vocabulary(loaded.cfg, chords_mapping_path, source=str(name_or_dir))  # checked here
        return JASCO(str(name_or_dir), loaded.model, loaded.compression_model, vocab)

    def set_generation_params(self, cfg_coef_all: float = 5.0, cfg_coef_txt: float = 0.0, euler: bool | None = None,
                              euler_steps: int | None = None, ode_rtol: float = flow.DEFAULT_ODE_TOL,
                              ode_atol: float = flow.DEFAULT_ODE_TOL, duration: float = 10.0, overlap: float = 2.0,
                              solver: str | None = None, steps: int | None = None,
                              time_grid: str = flow.DEFAULT_TIME_GRID,
                              sway_coef: float = flow.DEFAULT_SWAY_COEF) -> None:
        """Set the sampling parameters of later calls.

        The default sampler is `flow.DEFAULT_SOLVER` with `flow.DEFAULT_STEPS` steps (docs/PERFORMANCE.md,
        "Sampling"); the published arguments `euler`/`euler_steps` keep their meaning.

        Args:
            cfg_coef_all: guidance weight of all conditions, in `[0, MAX_CFG_COEF]` (100).
            cfg_coef_txt: guidance weight of the text alone, in `[0, MAX_CFG_COEF]`.
            euler: published switch: True = fixed-step Euler (`euler_steps`, default 100), False =
                adaptive dopri5. Give `euler` or `solver`, not both.
            euler_steps: the published name of `steps`, an integer >= 1.
            ode_rtol, ode_atol: tolerances of the adaptive solvers, finite and > 0.
            duration: seconds to generate, finite, in `(0, MAX_DURATION]` (an hour).
            overlap: seconds shared by consecutive windows of a long generation, in
                `[0, segment_duration)`; capped at half a window.
            solver: a name of `flow.ODE_SOLVERS` (euler, midpoint, heun, rk4, dopri5, bosh3).
            steps: steps of a fixed-step solver, an integer >= 1.
            time_grid: 'uniform' or 'sway' (docs/MODEL.md, "Sampling").
            sway_coef: `s` of the sway grid, in `[-1, 1.75)`.

        Raises:
            InvalidInputError: an argument is out of range (nothing is changed then).
        """
        if euler is not None and solver is not None:
            raise InvalidInputError("solver", f"give solver={solver!r} or the published euler={euler!r}, not both")
        if euler is not None and not isinstance(euler, bool):
            raise InvalidInputError("euler", f"euler must be True or False, got {euler!r}")
        if solver is None:
            solver = flow.DEFAULT_SOLVER if euler is None else "euler" if euler else "dopri5"
        if solver not in flow.ODE_SOLVERS:
            raise InvalidInputError("solver", f"solver must be one of {', '.join(flow.ODE_SOLVERS)}, got {solver!r}")
        if euler_steps is not None:
            euler_steps = check_int("euler_steps", euler_steps, 1)
        if steps is not None:
            steps = check_int("steps", steps, 1)
            if euler_steps is not None and euler_steps != steps:
                raise InvalidInputError("steps", f"steps={steps} and euler_steps={euler_steps} disagree; give steps")
        if steps is None:
            steps = euler_steps if euler_steps is not None else PUBLISHED_EULER_STEPS if euler else flow.DEFAULT_STEPS
        if time_grid not in flow.TIME_GRIDS:
            raise InvalidInputError("time_grid", f"time_grid must be one of {', '.join(flow.TIME_GRIDS)}, "
                                                 f"got {time_grid!r}")
        params = {"cfg_coef_all": check_real("cfg_coef_all", cfg_coef_all, 0.0, MAX_CFG_COEF),
                  "cfg_coef_txt": check_real("cfg_coef_txt", cfg_coef_txt, 0.0, MAX_CFG_COEF),
                  "solver": solver, "steps": steps, "time_grid": time_grid,
                  "sway_coef": check_real("sway_coef", sway_coef, *flow.SWAY_COEF_RANGE, high_open=True),
                  "ode_rtol": check_real("ode_rtol", ode_rtol, 0.0, low_open=True),
                  "ode_atol": check_real("ode_atol", ode_atol, 0.0, low_open=True)}
        duration = self._check_duration(duration)
        overlap = check_real("overlap", overlap, 0.0, self.segment_duration, high_open=True,
                             hint=f" seconds (model {self.name} was trained on {self.segment_duration:g} s segments)")
        self.generation_params = params
        self.duration = duration
        self.overlap = overlap

    # ------------------------------------------------------------------ properties
    @property
    def sample_rate(self) -> int:
        """Sample rate of the generated audio (32000 for the published models)."""
        return self.compression_model.sample_rate

    @property
    def frame_rate(self) -> float:
        """Latent frames per second."""
        return self.compression_model.frame_rate

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ generation
    def generate(self, descriptions: Sequence[str | None] | str, progress: bool = False, return_latents: bool = False,
                 duration: float | None = None, seed: int | None = None
                 ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Text-only generation: audio `[B, 1, N]` (and normalised latents `[B, T, F]`)."""
        return self.generate_music(descriptions, progress=progress, return_latents=return_latents,
                                   duration=duration, seed=seed)

    def generate_music(self, descriptions: Sequence[str | None] | str,
                       chords: Progression | Sequence[Progression | None] | None = None,
                       drums_wav: torch.Tensor | None = None, drums_sample_rate: int = 32000,
                       melody_salience_matrix: torch.Tensor | None = None,
                       progress: bool | flow.ProgressCallback = False, return_latents: bool = False,
                       duration: float | None = None, seed: int | None = None
                       ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Generate music for text descriptions under optional chords, drums and melody controls.

        Args:
            descriptions: one text (or None) per sample; B = its length.
            chords: `[(label, start_s), ...]` for every sample, or one such list (or None) per sample.
                Starts must be finite, sorted and lie in `[0, duration)`; before the first change
                the chord is `N`.
            drums_wav: finite float drum audio `[C, N]` (all samples) or `[B, C, N]` at
                `drums_sample_rate`, C = 1 or 2; resampled and mixed to mono, zero-padded or
                cropped to the duration.
            drums_sample_rate: sample rate of `drums_wav`, an integer > 0.
            melody_salience_matrix: `[K, T]` or `[B, K, T]` at the latent frame rate (K = 53 bins,
                MIDI 43..95); `[T, K]` is accepted. Binary with at most one active bin per frame;
                a finite non-negative real-valued salience is one-hot encoded by argmax per frame
                (all-zero frames stay unvoiced), with a warning. Zero-padded (unvoiced) or cropped
                to the duration.
            progress: True: show a progress bar; or a callable `(step, total)` told the sampler's
                progress (fixed-step solvers: steps; adaptive ones: time in thousandths).
            return_latents: also return the normalised latents.
            duration: seconds to generate, in `(0, MAX_DURATION]` (default: `set_generation_params`);
                longer than the training segment → overlapping windows.
            seed: seed of the initial noise, an integer in `[0, 2**64)`, for reproducible results.

        Returns:
            audio `[B, 1, N]` at `sample_rate`, `N = round(duration * sample_rate)`; with
            `return_latents`, `(audio, latents [B, T, F])`.

        Raises:
            InvalidInputError: an argument is invalid; its `argument` names it.
        """
        descriptions = [descriptions] if isinstance(descriptions, str) else list(descriptions)
        if not descriptions or not all(d is None or isinstance(d, str) for d in descriptions):
            raise InvalidInputError("descriptions", "descriptions must be a non-empty list of str (or None for "
                                                    "no text).")
        batch = len(descriptions)
        duration = self.duration if duration is None else self._check_duration(duration)
        if seed is not None:
            seed = check_int("seed", seed, 0, MAX_SEED)
        total = math.ceil(duration * self.frame_rate - 1e-6)
        progressions = self._prepare_chords(chords, batch, duration)
        drums = self._prepare_drums(drums_wav, drums_sample_rate, batch, total)
        melody = self._prepare_melody(melody_salience_matrix, batch, total)

        window = min(total, round(self.segment_duration * self.frame_rate))
        overlap = min(round(self.overlap * self.frame_rate), window // 2)
        starts = window_starts(total, window, overlap)
        conditions = [self._window_attributes(descriptions[i], progressions[i], drums, melody, i, start, window)
                      for i in range(batch) for start in starts]  # sample-major: row i * k + j

        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        noise = torch.randn(batch, total, self.model.flow_dim, generator=gen)  # one draw for the whole duration
        windows_noise = torch.stack([noise[i, s:s + window] for i in range(batch) for s in starts])  # [B*k, W, F]
        callback = progress if callable(progress) else None
        if progress is True:
            fixed = self.generation_params["solver"] in flow.FIXED_STEP_SOLVERS
            callback = _TqdmCallback(self.generation_params["steps"] if fixed else 1000, "step" if fixed else "‰ of t")
        try:
            out = self.model.generate(conditions, max_gen_len=window, initial_noise=windows_noise.to(self.device),
                                      callback=callback, **self.generation_params)  # [B*k, W, F]
        finally:
            if isinstance(callback, _TqdmCallback):
                callback.close()
        latents = self._merge_windows(out.reshape(batch, len(starts), window, -1), starts, total)  # [B, T, F]
        audio = self.compression_model.decode(latents)[..., : round(duration * self.sample_rate)]  # [B, 1, N]
        return (audio, latents) if return_latents else audio

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _check_duration(duration: Any) -> float:
        problem = real_problem(duration, 0.0, MAX_DURATION, low_open=True)
        if problem is not None:
            raise InvalidInputError("duration", f"duration must be a positive number of seconds (finite, in "
                                                f"(0, {MAX_DURATION:g}]), got {duration!r}.")
        return float(duration)

    def _require(self, control: str) -> None:
        if control not in self.controls:
            raise InvalidInputError(
                CONTROL_ARGUMENTS[control], f"model {self.name} has no {control} control (its controls: "
                f"{', '.join(self.controls) or 'text only'}); drop the {control} input or use a model trained with "
                "it (e.g. facebook/jasco-chords-drums-melody-400M for melody).")

    def _prepare_chords(self, chords: Any, batch: int, duration: float) -> list[list[tuple[float, str]] | None]:
        """Validated `(start_s, label)` progressions, one per sample (None = null chords)."""
        if chords is None:
            return [None] * batch
        form = ("chords must be one progression [(label, start_s), ...] for every sample, or a list with one "
                "progression (or None) per description")
        if isinstance(chords, (str, bytes)) or not isinstance(chords, Sequence):
            raise InvalidInputError("chords", f"{form}, got {type(chords).__name__} {chords!r:.80}; (the CLI form "
                                              "'C@0 G@2' is read by jasco.generate.parse_chords).")
        rows = list(chords)

        def nested(item: Any) -> bool:
            return isinstance(item, (list, tuple)) or item is None

        # A row holds no sequences ((label, start)); a progression is None or a sequence of rows.
        single = all(isinstance(r, (list, tuple)) and r and not any(nested(x) for x in r) for r in rows)
        if not single and not all(r is None or (isinstance(r, (list, tuple)) and all(nested(x) for x in r))
                                  for r in rows):
            raise InvalidInputError("chords", f"{form}; got a mix of rows and progressions: {rows!r:.120}.")
        per_sample = [rows] * batch if single else rows
        if len(per_sample) != batch:
            raise InvalidInputError("chords", f"chords has {len(per_sample)} progressions for {batch} descriptions; "
                                              "give one progression [(label, start_s), ...] for all, or one per "
                                              "description.")
        out = []
        for i, progression in enumerate(per_sample):
            if progression is None:
                out.append(None)
                continue
            self._require("chords")
            if self._unknown_vocabulary is not None:  # never guess the chord order
                raise InvalidInputError("chords", str(self._unknown_vocabulary)) from self._unknown_vocabulary
            for j, row in enumerate(progression):
                if not isinstance(row, (list, tuple)) or len(row) != 2:
                    raise InvalidInputError("chords", f"chords of sample {i}: row {j} is {row!r}; expected "
                                                      "(label, start_s), e.g. ('C', 0.0).")
            try:
                rows_i = normalize_progression(progression)
            except ValueError as err:
                raise InvalidInputError("chords", f"chords of sample {i}: {err}") from err
            for start, label in rows_i:
                if start >= duration:
                    raise InvalidInputError("chords", f"chords of sample {i}: {label!r} starts at {start} s, outside "
                                                      f"the generated segment [0, {duration}) s; drop it or raise "
                                                      "duration.")
            out.append(rows_i)
        return out

    def _prepare_drums(self, wav: torch.Tensor | None, sample_rate: int, batch: int, total: int
                       ) -> torch.Tensor | None:
        """Drums at the codec rate, mono, `[B, 1, total * hop]`."""
        if wav is None:
            return None
        self._require("drums")
        if not isinstance(wav, torch.Tensor) or wav.dim() not in (2, 3):
            shape = tuple(wav.shape) if isinstance(wav, torch.Tensor) else type(wav).__name__
            raise InvalidInputError("drums_wav", f"drums_wav must be a tensor [C, N] or [B, C, N], got {shape}; add "
                                                 "the channel axis with wav[None] for mono audio.")
        if not wav.dtype.is_floating_point:
            raise InvalidInputError("drums_wav", f"drums_wav must be float audio in [-1, 1], got {wav.dtype}; "
                                                 "read it with jasco.audio.io.audio_read.")
        if not 1 <= wav.shape[-2] <= 2:
            raise InvalidInputError("drums_wav", f"drums_wav has {wav.shape[-2]} channels (shape {tuple(wav.shape)}): "
                                                 "expected mono or stereo [C, N] / [B, C, N]; if it is [N, C], "
                                                 "transpose it.")
        if wav.shape[-1] == 0:
            raise InvalidInputError("drums_wav", f"drums_wav has no samples (shape {tuple(wav.shape)}).")
        if wav.dim() == 3 and wav.shape[0] not in (1, batch):
            raise InvalidInputError("drums_wav", f"drums_wav has batch {wav.shape[0]} but there are {batch} "
                                                 "descriptions.")
        if not torch.isfinite(wav).all():
            raise InvalidInputError("drums_wav", f"drums_wav has {int((~torch.isfinite(wav)).sum())} NaN or infinite "
                                                 "samples; give finite audio in [-1, 1].")
        sample_rate = check_int("drums_sample_rate", sample_rate, 1)
        wav = wav if wav.dim() == 3 else wav[None]
        wav = convert_audio(wav.float().cpu(), sample_rate, self.sample_rate, 1)  # [B', 1, N]
        length = total * self.compression_model.hop_length
        wav = torch.nn.functional.pad(wav, (0, max(0, length - wav.shape[-1])))[..., :length]
        return wav.expand(batch, -1, -1)

    def _prepare_melody(self, salience: torch.Tensor | None, batch: int, total: int) -> torch.Tensor | None:
        """One-hot melody `[B, K, total]`."""
        if salience is None:
            return None
        self._require("melody")
        name = "melody_salience_matrix"
        if not isinstance(salience, torch.Tensor) or salience.dim() not in (2, 3):
            shape = tuple(salience.shape) if isinstance(salience, torch.Tensor) else type(salience).__name__
            raise InvalidInputError(name, f"{name} must be a tensor [{N_MELODY_BINS}, T] or [B, {N_MELODY_BINS}, T], "
                                          f"got {shape}.")
        if salience.shape[-2] != N_MELODY_BINS:
            if salience.shape[-1] != N_MELODY_BINS:
                raise InvalidInputError(name, f"{name} has shape {tuple(salience.shape)}: expected {N_MELODY_BINS} "
                                              "pitch bins (MIDI 43..95) on one of its last two axes; extract it with "
                                              "jasco.controls.melody.extraction.")
            salience = salience.transpose(-1, -2)  # [T, K] as in the published demo matrices
        if salience.dim() == 3 and salience.shape[0] not in (1, batch):
            raise InvalidInputError(name, f"{name} has batch {salience.shape[0]} but there are {batch} descriptions.")
        if salience.is_complex():
            raise InvalidInputError(name, f"{name} must be real, got {salience.dtype}.")
        salience = salience.float().cpu()
        salience = salience if salience.dim() == 3 else salience[None]  # [B', K, T]
        if not torch.isfinite(salience).all():
            raise InvalidInputError(name, f"{name} has {int((~torch.isfinite(salience)).sum())} NaN or infinite "
                                          "values; expected a binary matrix (1 = the melody's pitch in that frame).")
        if (salience < 0).any():
            raise InvalidInputError(name, f"{name} has negative values (min {float(salience.min()):g}); expected a "
                                          "binary matrix, or a non-negative salience (one-hot encoded by argmax).")
        active = (salience != 0).sum(dim=-2)  # [B', T] active bins per frame
        if not (((salience == 0) | (salience == 1)).all() and (active <= 1).all()):
            warnings.warn(f"{name} is not binary with at most one active bin per frame (values up to "
                          f"{float(salience.max()):g}, up to {int(active.max())} active bins in a frame): each frame "
                          "keeps only its strongest bin (argmax), all-zero frames stay unvoiced. Zero the unvoiced "
                          "frames first (or use jasco.controls.melody.extraction) so they are not voiced.",
                          stacklevel=3)
            salience = torch.stack([one_hot_frames(s) for s in salience])  # [B', K, T]
        salience = torch.nn.functional.pad(salience, (0, max(0, total - salience.shape[-1])))[..., :total]
        return salience.expand(batch, -1, -1)

    def _window_attributes(self, text: str | None, progression: list[tuple[float, str]] | None,
                           drums: torch.Tensor | None, melody: torch.Tensor | None, i: int, start: int,
                           window: int) -> ConditioningAttributes:
        """Conditions of sample `i` over frames `[start, start + window)`."""
        chords = None
        if progression is not None:
            chords = frame_chords(progression, self.chords_vocabulary, window, self.frame_rate,
                                  offset_s=start / self.frame_rate)
        hop = self.compression_model.hop_length
        drum_wav = None if drums is None else drums[i, :, start * hop:(start + window) * hop]
        return ConditioningAttributes(
            text={"description": text},
            wav={"self_wav": WavCondition(wav=drum_wav, sample_rate=self.sample_rate)},
            symbolic={"chords": chords,
                      "melody": None if melody is None else melody[i, :, start:start + window]},
        )

    @staticmethod
    def _merge_windows(windows: torch.Tensor, starts: list[int], total: int) -> torch.Tensor:
        """Cross-fade `[B, k, W, F]` windows into `[B, total, F]`.

        Frames covered by more than two windows (short hops) get the weight-normalised mean.
        """
        if len(starts) == 1:
            return windows[:, 0]
        b, _, window, dim = windows.shape
        weights = crossfade_weights(starts, window).to(windows)  # [k, W]
        out = windows.new_zeros(b, total, dim)
        norm = windows.new_zeros(total)
        for j, start in enumerate(starts):
            out[:, start:start + window] += windows[:, j] * weights[j][None, :, None]
            norm[start:start + window] += weights[j]
        return out / norm[None, :, None]
