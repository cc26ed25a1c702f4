"""Writing generated samples: wav, the conditions used (JSON) and a controls picture."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from jasco.audio.io import audio_write
from jasco.data.jasco_dataset import JascoInfo

logger = logging.getLogger(__name__)


def chord_runs(frame_chords: torch.Tensor | None, frame_rate: float, labels: list[str] | None = None
               ) -> list[tuple[float, int | str]] | None:
    """Frame chord indices `[T]` → `[(start_s, index or label), ...]` at each change."""
    if frame_chords is None:
        return None
    values = frame_chords.tolist()
    runs = []
    for i, value in enumerate(values):
        if i == 0 or value != values[i - 1]:
            name = labels[value] if labels is not None and value < len(labels) else value
            runs.append((round(i / frame_rate, 3), name))
    return runs


def conditions_record(info: JascoInfo, frame_rate: float, labels: list[str] | None) -> dict[str, Any]:
    """JSON-serialisable description of the conditions a sample was generated from."""
    melody = info.melody
    voiced = None if melody is None else [int(b) if melody[:, f].any() else None
                                          for f, b in enumerate(melody.argmax(0).tolist())]
    return {
        "source": info.meta.path,
        "seek_time": info.seek_time,
        "description": info.description,
        "chords": chord_runs(info.frame_chords, frame_rate, labels),
        "melody_midi": None if voiced is None else [None if b is None else 43 + b for b in voiced],
        "drums": None if info.drums is None else info.drums.path,
    }


def write_samples(out_dir: Path, audio: torch.Tensor, sample_rate: int, infos: list[JascoInfo],
                  start_index: int, audio_cfg: Any, tensorboard: Any = None, epoch: int = 0,
                  frame_rate: float = 50.0, chord_labels: list[str] | None = None) -> list[Path]:
    """Write `audio [B, C, N]` as `<out_dir>/<id>.<format>` + `<id>.json` (+ `<id>.png`); log to TensorBoard.

    `audio_cfg` is the `generate.audio` section: `format` (the file suffix: wav, flac, ogg, ...),
    `strategy` and `loudness_headroom_db` (normalisation). Audio and pictures go to TensorBoard
    only when its logger has `with_media_logging` (the `tensorboard.with_media_logging` key).
    """
    from jasco.controls.plotting import plot_controls  # matplotlib is heavy: import on use

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (wav, info) in enumerate(zip(audio.cpu(), infos)):
        name = f"{start_index + i:03d}_{Path(info.meta.path).stem}"
        path = audio_write(out_dir / f"{name}.{audio_cfg.format}", wav, sample_rate, strategy=audio_cfg.strategy,
                           loudness_headroom_db=audio_cfg.loudness_headroom_db, log_clipping=False)
        record = conditions_record(info, frame_rate, chord_labels)
        (out_dir / f"{name}.json").write_text(json.dumps(record, indent=2))
        chords = None if record["chords"] is None else [(start, str(label)) for start, label in record["chords"]]
        picture = plot_controls(out_dir / f"{name}.png", wav, sample_rate, chords=chords, melody=info.melody,
                                drums=None if info.drums is None else info.drums.wav,
                                drums_sample_rate=None if info.drums is None else info.drums.sample_rate,
                                frame_rate=frame_rate, title=info.description or name)
        if getattr(tensorboard, "writer", None) is not None and getattr(tensorboard, "with_media_logging", True):
            import matplotlib.image
            tensorboard.writer.add_audio(f"generate/{name}", wav.mean(0, keepdim=True).clamp(-0.99, 0.99),
                                         epoch, sample_rate)
            image = matplotlib.image.imread(picture)[..., :3]  # [H, W, 3] floats
            tensorboard.writer.add_image(f"generate/{name}", image, epoch, dataformats="HWC")
        paths.append(path)
    return paths
