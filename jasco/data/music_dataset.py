"""Music metadata from `.json` sidecars, text augmentation (docs/MODEL.md, "Text augmentation") and the music datasets.

Shapes: `C` channels, `N` samples.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from jasco.data.audio_dataset import AudioDataset, SegmentInfo, reading
from jasco.data.manifest import AudioMeta

# Sidecar fields that feed the merged metadata text, in the order they are considered.
METADATA_TEXT_FIELDS = ("key", "bpm", "genre", "moods", "instrument", "keywords")
_LIST_FIELDS = ("moods", "keywords")


class SidecarError(ValueError):
    """A `.json` metadata sidecar cannot be read or has invalid values."""


def _as_list(value: Any, name: str, path: Path) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = [str(v).strip() for v in value]
    else:
        raise SidecarError(f"{path}: field '{name}' must be a list of strings or a comma-separated string, "
                           f"got {type(value).__name__}.")
    items = [v for v in items if v]
    return items or None


def _as_text(value: Any, name: str, path: Path) -> str | None:
    if value is None:
        return None
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        text = str(value).strip()
        return text or None
    raise SidecarError(f"{path}: field '{name}' must be a string or a number, got {type(value).__name__}.")


def _as_bpm(value: Any, path: Path) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise SidecarError(f"{path}: field 'bpm' must be a number, got {value!r}.") from exc


def _format_value(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return ", ".join(value)
    return str(value)


@dataclass
class MusicInfo(SegmentInfo):
    """A segment plus the music metadata of its file (all optional)."""

    title: str | None = None
    artist: str | None = None
    key: str | None = None
    bpm: float | None = None
    genre: str | None = None
    moods: list[str] | None = None
    keywords: list[str] | None = None
    description: str | None = None
    name: str | None = None
    instrument: str | None = None

    @classmethod
    def from_segment_info(cls, info: SegmentInfo, **values: Any) -> "MusicInfo":
        """Copy a SegmentInfo (or subclass) and set metadata values."""
        base = {f.name: getattr(info, f.name) for f in fields(SegmentInfo)}
        return cls(**base, **values)

    @classmethod
    def from_sidecar(cls, info: SegmentInfo, path: str | Path) -> "MusicInfo":
        """Read metadata from a `.json` sidecar; unknown keys are ignored.

        Raises:
            SidecarError: the file is missing, not JSON, not an object, or a field has a bad type.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise SidecarError(f"Metadata sidecar {path} does not exist; fix 'info_path' in the manifest "
                               "or rebuild it.") from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SidecarError(f"Metadata sidecar {path} is not readable JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise SidecarError(f"Metadata sidecar {path} must hold a JSON object, got {type(data).__name__}.")
        values: dict[str, Any] = {}
        for name in ("title", "artist", "key", "genre", "description", "name", "instrument"):
            values[name] = _as_text(data.get(name), name, path)
        values["bpm"] = _as_bpm(data.get("bpm"), path)
        for name in _LIST_FIELDS:
            values[name] = _as_list(data.get(name), name, path)
        return cls.from_segment_info(info, **values)

    def metadata_text(self, keep_p: float, generator: torch.Generator) -> str:
        """`"key: …. bpm: …"` from the metadata fields, each kept with probability keep_p, shuffled."""
        pairs = []
        for name in METADATA_TEXT_FIELDS:
            value = getattr(self, name)
            # One draw per field, present or not, so the stream does not depend on which fields exist.
            keep = float(torch.rand(1, generator=generator)) < keep_p
            if value is not None and keep:
                pairs.append(f"{name}: {_format_value(value)}")
        order = torch.randperm(len(pairs), generator=generator).tolist()
        return ". ".join(pairs[i] for i in order)

    def augment_text(self, merge_text_p: float = 0.0, drop_desc_p: float = 0.0, drop_other_p: float = 0.0,
                     generator: torch.Generator | None = None) -> "MusicInfo":
        """A copy with an augmented description (docs/MODEL.md, "Text augmentation"); deterministic given generator.

        With probability `merge_text_p`, metadata text is built (each field kept with probability
        `drop_other_p`, as in the published recipe despite the name) and the original description
        is dropped with probability `drop_desc_p`; the result joins what remains with ". ".
        """
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        description = self.description
        meta_text = ""
        if float(torch.rand(1, generator=generator)) < merge_text_p:
            meta_text = self.metadata_text(drop_other_p, generator)
            if float(torch.rand(1, generator=generator)) < drop_desc_p:
                description = None
        if description and meta_text:
            description = description.rstrip(". ") + ". " + meta_text
        else:
            description = description or meta_text or None
        return replace(self, description=description)


class InfoAudioDataset(AudioDataset):
    """An AudioDataset that always returns `(wav [C, N], SegmentInfo)`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["return_info"] = True
        super().__init__(*args, **kwargs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, SegmentInfo]:
        return self.get_segment(index)


class MusicDataset(InfoAudioDataset):
    """Returns `(wav [C, N], MusicInfo)`; text augmentation is applied only when `train`."""

    def __init__(self, *args: Any, merge_text_p: float = 0.0, drop_desc_p: float = 0.0,
                 drop_other_p: float = 0.0, train: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.merge_text_p = merge_text_p
        self.drop_desc_p = drop_desc_p
        self.drop_other_p = drop_other_p
        self.train = train

    def music_info(self, index: int, info: SegmentInfo) -> MusicInfo:
        """Metadata for the segment of item `index` (sidecar if any, augmented when training).

        Raises:
            BadTrackError: the sidecar is bad (names the track and the sidecar).
        """
        if info.meta.info_path:
            with reading(info.meta.path, "metadata sidecar", info.meta.info_path):
                music = MusicInfo.from_sidecar(info, info.meta.info_path)
        else:
            music = MusicInfo.from_segment_info(info)
        if self.train and self.merge_text_p > 0:
            music = music.augment_text(self.merge_text_p, self.drop_desc_p, self.drop_other_p,
                                       self.make_generator(index, salt=1))
        return music

    def load_item(self, index: int, meta: AudioMeta, seek_time: float) -> tuple[torch.Tensor, MusicInfo]:
        """The segment and its metadata (a bad sidecar makes the track bad, like bad audio)."""
        wav, info = super().load_item(index, meta, seek_time)
        return wav, self.music_info(index, info)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, MusicInfo]:
        return self.get_segment(index)
