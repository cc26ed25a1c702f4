"""The JASCO training dataset: music segments with aligned chords, melody, drum stem and latents.

Side files of `song.wav` (or given per manifest line as `chords_path`, `salience_path`,
`drums_path`, `latents_path`): `song.chords.json`, `song.salience.npz|.npy`,
`song.drums.wav|.flac`. A missing side file gives a null condition (None). A `drum_codes_path`
(written by `python -m jasco.prepare`) gives the drums as cached codec codes instead of audio.
When every track has cached latents the mix is not decoded at all (`read_audio`). A bad side
file (unreadable, non-finite, or not as long as the track) makes the track bad: BadTrackError
naming the track and the file, or a skip with `skip_bad_files`. See docs/DATA_FORMATS.md.

Shapes: `B` batch, `C` channels, `N` samples, `T` latent frames (`frame_rate` per second),
`K` melody bins (53), `F` latent dim (128).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jasco.audio.convert import convert_audio
from jasco.audio.io import audio_read
from jasco.controls.chords.progression import read_chord_file
from jasco.controls.chords.vocabulary import ChordVocabulary, frame_chords
from jasco.controls.melody.salience import read_salience, salience_segment
from jasco.data.attributes import ConditioningAttributes, WavCondition
from jasco.data.audio_dataset import BadTrackError, check_finite, reading
from jasco.data.drum_codes import read_code_segment
from jasco.data.latents import read_latent_segment
from jasco.data.manifest import AudioMeta
from jasco.data.music_dataset import MusicDataset, MusicInfo
from jasco.data.side_files import CHORDS_SUFFIXES, DRUMS_SUFFIXES, SALIENCE_SUFFIXES, find_side_file


@dataclass
class JascoInfo(MusicInfo):
    """A music segment with its JASCO conditions (None = null condition).

    Attributes:
        frame_chords: chord index per latent frame `[T]` int64.
        melody: one-hot salience `[K, T]` float32.
        drums: the drum stem of the same segment, `[C, N]` like the mix.
        latents: precomputed normalised-or-raw codec latents `[T, F]` float32 (as stored).
    """

    frame_chords: torch.Tensor | None = None
    melody: torch.Tensor | None = None
    drums: WavCondition | None = None
    latents: torch.Tensor | None = None

    def to_condition_attributes(self) -> ConditioningAttributes:
        """The conditions of this sample in the data→conditioner contract."""
        drums = self.drums if self.drums is not None else WavCondition(wav=None, sample_rate=self.sample_rate)
        return ConditioningAttributes(
            text={"description": self.description},
            wav={"self_wav": drums},
            symbolic={"chords": self.frame_chords, "melody": self.melody},
        )


class JascoDataset(MusicDataset):
    """Returns `(wav [C, N], JascoInfo)`: a MusicDataset item plus aligned JASCO conditions.

    Args:
        chords_vocabulary: a ChordVocabulary, a spec (`builtin`, `published:PATH`, PATH), or None to disable chords.
        use_chords / use_melody / use_drums: read that condition when its side file exists.
        melody_frame_rate: frame rate of `.npy` salience files (`.npz` store their own).
        frame_rate: latent frames per second (T = duration * frame_rate).
        read_audio: decode the mix. None (default): only when some track has no cached latents
            (`latents_path`); otherwise the item's wav is `[C, 0]`, since training reads the latents.
        *args, **kwargs: MusicDataset / AudioDataset arguments.
    """

    # Salience files at a nominal frame rate (86 for 86.13 frames/s) drift this much per second.
    SALIENCE_RATE_SLACK = 0.005

    def __init__(self, *args: Any, chords_vocabulary: ChordVocabulary | str | None = "builtin",
                 use_chords: bool = True, use_melody: bool = True, use_drums: bool = True,
                 melody_frame_rate: float = 86.0, frame_rate: float = 50.0, read_audio: bool | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if read_audio is None:
            read_audio = not all(meta.get_path("latents_path") for meta in self.metas)
        self.read_audio = read_audio
        if isinstance(chords_vocabulary, str):
            chords_vocabulary = ChordVocabulary.from_spec(chords_vocabulary)
        self.chords_vocabulary = chords_vocabulary
        self.use_chords = use_chords and chords_vocabulary is not None
        self.use_melody = use_melody
        self.use_drums = use_drums
        self.melody_frame_rate = melody_frame_rate
        self.frame_rate = frame_rate
        # Segments start on a latent frame boundary, so audio, latents, chords and melody align exactly.
        self.seek_step = 1.0 / frame_rate

    def n_latent_frames(self, info: MusicInfo) -> int:
        """T for a segment: `segment_duration * frame_rate`, or the whole file's length."""
        seconds = self.segment_duration if self.segment_duration is not None else info.total_frames / info.sample_rate
        return int(round(seconds * self.frame_rate))

    def _check_frames(self, meta: AudioMeta, kind: str, path: str | Path, total: int, rate: float,
                      slack: float = 0.0) -> None:
        """A whole-track side file of `total` frames at `rate` must last the track's manifest duration."""
        seconds = total / rate
        tolerance = self.length_tolerance + slack * meta.duration
        if abs(seconds - meta.duration) > tolerance:
            raise BadTrackError(meta.path, kind, path, f"it holds {total} frames = {seconds:.2f} s at {rate:g} "
                                                       f"frames/s, but the track lasts {meta.duration:.2f} s "
                                                       f"(tolerance {tolerance:.2f} s): it belongs to another "
                                                       "file or version of the track; rebuild it.")

    @staticmethod
    def _side_file(meta: AudioMeta, field_name: str, suffixes: tuple[str, ...], kind: str) -> Path | None:
        """The track's side file (explicit in its manifest line, else by name) or None; a missing explicit one is bad."""
        explicit = meta.get_path(field_name)
        with reading(meta.path, kind, explicit):
            return find_side_file(meta.path, field_name, suffixes, explicit)

    def _chords(self, meta: AudioMeta, seek_time: float, n_frames: int) -> torch.Tensor | None:
        path = self._side_file(meta, "chords_path", CHORDS_SUFFIXES, "chord file")
        if path is None:
            return None
        with reading(meta.path, "chord file", path):
            progression = read_chord_file(path)
            return frame_chords(progression, self.chords_vocabulary, n_frames, self.frame_rate, offset_s=seek_time)

    def _melody(self, meta: AudioMeta, seek_time: float, n_frames: int) -> torch.Tensor | None:
        path = self._side_file(meta, "salience_path", SALIENCE_SUFFIXES, "salience file")
        if path is None:
            return None
        with reading(meta.path, "salience file", path):
            salience, rate = read_salience(path, default_frame_rate=self.melody_frame_rate)
            check_finite(salience, meta.path, "salience file", path, seek_time)
            self._check_frames(meta, "salience file", path, salience.shape[-1], rate, self.SALIENCE_RATE_SLACK)
            return salience_segment(salience, rate, seek_time, n_frames, target_rate=self.frame_rate)

    def _drums(self, meta: AudioMeta, info: MusicInfo) -> WavCondition | None:
        codes_path = meta.get_path("drum_codes_path")
        if codes_path is not None:
            # Cached codes replace the stem: no audio read, no codec pass at train time.
            with reading(meta.path, "drum codes file", codes_path):
                self._check_frames(meta, "drum codes file", codes_path, _frames_in(codes_path), self.frame_rate)
                codes = read_code_segment(codes_path, info.seek_time, self.n_latent_frames(info), self.frame_rate)
                if (codes < 0).any():
                    raise BadTrackError(meta.path, "drum codes file", codes_path, "it holds negative codes.")
            return WavCondition(wav=None, sample_rate=info.sample_rate, path=str(codes_path),
                                seek_time=info.seek_time, codes=codes)
        path = self._side_file(meta, "drums_path", DRUMS_SUFFIXES, "drum stem")
        if path is None:
            return None
        duration = -1.0 if self.segment_duration is None else self.segment_duration
        with reading(meta.path, "drum stem", path):
            self.check_duration(meta, "drum stem", path)
            wav, sr = audio_read(path, info.seek_time, duration)
            check_finite(wav, meta.path, "drum stem", path, info.seek_time)
            # Same rate, channels and length as the mix, so drum frame i is mix frame i.
            wav = convert_audio(wav, sr, info.sample_rate, info.channels)[..., :info.total_frames]
        self.check_length(wav.shape[-1], info.n_frames, meta.path, "drum stem", path, info.seek_time,
                          what="the mix")
        wav = torch.nn.functional.pad(wav, (0, info.total_frames - wav.shape[-1]))
        return WavCondition(wav=wav, sample_rate=info.sample_rate, path=str(path), seek_time=info.seek_time)

    def _latents(self, meta: AudioMeta, seek_time: float, n_frames: int) -> torch.Tensor | None:
        path = meta.get_path("latents_path")
        if path is None:
            return None
        with reading(meta.path, "latents file", path):
            self._check_frames(meta, "latents file", path, _frames_in(path), self.frame_rate)
            latents = read_latent_segment(path, seek_time, n_frames, self.frame_rate)
            check_finite(latents, meta.path, "latents file", path, seek_time)
        return latents

    def jasco_info(self, index: int, info: MusicInfo) -> JascoInfo:
        """Attach the conditions of the segment described by `info`.

        Raises:
            BadTrackError: a side file is bad (names the track and the file).
        """
        meta = info.meta
        n_frames = self.n_latent_frames(info)
        base = {f.name: getattr(info, f.name) for f in fields(MusicInfo)}
        out = JascoInfo(**base)
        if self.use_chords:
            out.frame_chords = self._chords(meta, info.seek_time, n_frames)
        if self.use_melody:
            out.melody = self._melody(meta, info.seek_time, n_frames)
        if self.use_drums:
            out.drums = self._drums(meta, info)
        out.latents = self._latents(meta, info.seek_time, n_frames)
        return out

    def load_item(self, index: int, meta: AudioMeta, seek_time: float) -> tuple[torch.Tensor, JascoInfo]:
        """The segment (`[C, 0]` when `read_audio` is off), its metadata and its conditions."""
        wav, info = super().load_item(index, meta, seek_time)
        return wav, self.jasco_info(index, info)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, JascoInfo]:
        return self.get_segment(index)

    def collater(self, samples: list[tuple[torch.Tensor, JascoInfo]]) -> tuple[torch.Tensor, list[JascoInfo]]:
        """Stack to `(wav [B, C, N], list[JascoInfo])` (`N = 0` when the audio is not read)."""
        wav, infos = super().collater(samples)
        return wav, infos


def _frames_in(path: str | Path) -> int:
    """Frames (first axis) of a whole-track `.npy` cache, from its header (memory-mapped, nothing read)."""
    return int(np.load(path, mmap_mode="r", allow_pickle=False).shape[0])
