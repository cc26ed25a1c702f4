"""Tests for scripts/make_example_dataset.py: determinism, formats and agreement of the controls."""
from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import soundfile as sf

from jasco.controls.chords.progression import read_chord_file
from jasco.controls.chords.vocabulary import ChordVocabulary

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_example_dataset.py"
SIDECAR_FIELDS = {"title", "artist", "key", "bpm", "genre", "moods", "keywords", "description",
                  "name", "instrument"}
MANIFEST_FIELDS = {"path", "duration", "sample_rate", "amplitude", "weight", "info_path",
                   "chords_path", "salience_path", "drums_path"}


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_example_dataset", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dataset(gen: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gen.make_example_dataset(tmp_path_factory.mktemp("example"), seed=0, num_clips=2)


def _entries(root: Path) -> list[tuple[Path, dict]]:
    """(manifest dir, entry) for every line of both manifests."""
    rows = []
    for split in ("train", "valid"):
        for line in (root / split / "data.jsonl").read_text().splitlines():
            rows.append((root / split, json.loads(line)))
    return rows


def test_same_seed_same_bytes(gen: ModuleType, dataset: Path, tmp_path: Path) -> None:
    again = gen.make_example_dataset(tmp_path / "again", seed=0, num_clips=2)
    files = sorted(p.relative_to(dataset) for p in dataset.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert len(files) == 2 * 6 + 2 + 1  # 6 files per clip (5 side + truth), 2 manifests, stamp
    for rel in files:
        assert (dataset / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_manifests_and_audio(dataset: Path) -> None:
    entries = _entries(dataset)
    for split in ("train", "valid"):
        assert len((dataset / split / "data.jsonl").read_text().splitlines()) == 1
    for manifest_dir, entry in entries:
        assert set(entry) == MANIFEST_FIELDS and entry["weight"] == 1.0
        for key in MANIFEST_FIELDS:
            if key.endswith("path"):
                assert not Path(entry[key]).is_absolute()
                assert (manifest_dir / entry[key]).is_file(), entry[key]
        wav, sr = sf.read(manifest_dir / entry["path"])
        info = sf.info(manifest_dir / entry["path"])
        assert info.subtype == "PCM_16" and info.channels == 1 and sr == 32000
        assert entry["sample_rate"] == sr and 12.0 <= entry["duration"] <= 20.0
        assert len(wav) == round(entry["duration"] * sr) and len(wav) % 640 == 0
        assert entry["amplitude"] == pytest.approx(np.abs(wav).max(), abs=1e-6)
        assert 0.85 <= entry["amplitude"] <= 0.95
        sidecar = json.loads((manifest_dir / entry["info_path"]).read_text())
        assert set(sidecar) == SIDECAR_FIELDS
        assert f"{sidecar['bpm']} bpm" in sidecar["description"]
        assert isinstance(sidecar["moods"], list) and isinstance(sidecar["keywords"], list)


def test_chords_match_truth_and_vocabulary(dataset: Path) -> None:
    vocabulary = ChordVocabulary.builtin()
    for manifest_dir, entry in _entries(dataset):
        progression = read_chord_file(manifest_dir / entry["chords_path"])
        truth = json.loads((dataset / "truth" / f"{Path(entry['path']).stem}.json").read_text())
        assert [list(row) for row in progression] == truth["chords"]
        assert progression[0][0] == 0.0 and progression[-1][0] < entry["duration"]
        assert len(progression) >= 5
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            indices = [vocabulary.index(label) for _, label in progression]
        assert vocabulary.unk_index not in indices and vocabulary.no_chord_index not in indices


def test_salience_is_one_hot_melody(dataset: Path) -> None:
    for manifest_dir, entry in _entries(dataset):
        with np.load(manifest_dir / entry["salience_path"]) as data:
            salience, frame_rate = data["salience"], float(data["frame_rate"])
        n_frames = round(entry["duration"] * 50)
        assert frame_rate == 50.0 and salience.shape == (53, n_frames)
        assert salience.dtype == np.float32 and set(np.unique(salience)) <= {0.0, 1.0}
        voiced = salience.sum(axis=0)
        assert voiced.max() == 1.0 and 0 < (voiced == 0).sum() < n_frames // 2
        truth = json.loads((dataset / "truth" / f"{Path(entry['path']).stem}.json").read_text())
        for start, end, midi in truth["melody"]:
            assert 55 <= midi <= 84
            middle = int((start + end) / 2 * 50)
            assert salience[:, middle].argmax() == midi - 43 and voiced[middle] == 1


def test_drum_stem_is_part_of_the_mix(dataset: Path) -> None:
    for manifest_dir, entry in _entries(dataset):
        mix, _ = sf.read(manifest_dir / entry["path"])
        drums, sr = sf.read(manifest_dir / entry["drums_path"])
        assert drums.shape == mix.shape and sr == 32000
        rest = mix - drums
        # The stem enters the mix with gain 1 and the rest is nearly orthogonal to it.
        assert np.dot(mix, drums) / np.dot(drums, drums) == pytest.approx(1.0, abs=0.1)
        assert abs(np.corrcoef(rest, drums)[0, 1]) < 0.2
        assert np.sqrt(np.mean(drums**2)) > 0.2 * np.sqrt(np.mean(mix**2))
        truth = json.loads((dataset / "truth" / f"{Path(entry['path']).stem}.json").read_text())
        assert set(truth["drums"]) == {"kick", "snare", "hihat"}
        kick = truth["drums"]["kick"]
        assert kick and all(0 <= t < entry["duration"] for t in kick)
        # Energy right after a kick onset is well above the stem's energy just before it.
        i = int(kick[1] * sr)
        assert np.abs(drums[i:i + 800]).max() > 2 * np.abs(drums[i - 200:i - 10]).max()


def test_ensure_builds_only_when_missing(gen: ModuleType, dataset: Path, tmp_path: Path) -> None:
    wav = dataset / "audio" / "clip_00.wav"
    before = wav.stat().st_mtime_ns
    assert gen.ensure_example_dataset(dataset, num_clips=2) == dataset
    assert wav.stat().st_mtime_ns == before
    fresh = tmp_path / "fresh"
    gen.ensure_example_dataset(fresh, seed=3, num_clips=2)
    assert json.loads((fresh / "generator.json").read_text())["seed"] == 3
    assert (fresh / "valid" / "data.jsonl").is_file()
    assert (fresh / "audio/clip_00.wav").read_bytes() != wav.read_bytes()  # another seed
    with pytest.raises(ValueError, match="num_clips"):
        gen.make_example_dataset(tmp_path / "bad", num_clips=1)
