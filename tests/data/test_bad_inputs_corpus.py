"""Every case of the bad-inputs corpus (scripts/make_bad_inputs.py) as JascoDataset meets it at training time.

A bad file must stop the dataset with a BadTrackError naming the track and that very file, or
with skip_bad_files be skipped with a warning naming them while the good track still loads;
never another exception (e.g. `cannot reshape tensor of 0 elements`).
"""
from __future__ import annotations

import importlib.util
import json
import sys
import warnings
from pathlib import Path

import pytest

from jasco.audio.io import AudioReadError
from jasco.data.audio_dataset import BadTrackError, EmptyDatasetError
from jasco.data.jasco_dataset import JascoDataset
from jasco.data.manifest import AudioMeta, build_meta, load_manifest

REPO = Path(__file__).resolve().parents[2]
# Cases whose track must be bad, and those that load (their files are odd but usable).
BAD = {"truncated_mp3", "nan_inf", "empty_file", "not_audio_mp3", "not_audio_wav", "invalid_sidecar",
       "sidecar_wrong_types", "chords_bad_rows", "chords_object", "chords_not_json", "salience_wrong_shape",
       "salience_3d", "salience_missing_array", "drums_wrong_length", "manifest_wrong_duration"}
# Chord files the chord reader may reject or repair (its rules, not the dataset's): bad, or loaded.
BAD_OR_LOADS = {"chords_label_first", "chords_unsorted"}
LOADS = {"peak_900", "silent", "chords_unknown_labels", "drums_wrong_rate"}  # a 16 kHz stem of the right length
# Bad only in part (checks are per segment): a segment clear of the NaNs, or of the missing half, loads.
PARTLY_BAD = {"nan_inf", "truncated_mp3"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    spec = importlib.util.spec_from_file_location("make_bad_inputs", REPO / "scripts" / "make_bad_inputs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_bad_inputs"] = module
    spec.loader.exec_module(module)
    out = module.ensure_bad_inputs(tmp_path_factory.mktemp("bad_inputs"))
    return out, json.loads((out / "cases.json").read_text())["cases"]


def _metas(root: Path, case: dict) -> list[AudioMeta]:
    """The case's manifest lines: its own manifest, else a probe of its audio (4 s when unprobeable)."""
    folder = root / Path(case["bad_file"]).parts[0]
    if (folder / "data.jsonl").exists():
        return load_manifest(folder)
    audio = root / case["audio"]
    try:
        return [build_meta(audio)]
    except AudioReadError:  # empty or not audio: what a hand-written manifest line would say
        return [AudioMeta(str(audio.resolve()), 4.0, 32000)]


def _dataset(metas: list[AudioMeta], **kwargs) -> JascoDataset:
    return JascoDataset(metas, segment_duration=1.0, sample_rate=32000, num_samples=16, return_info=True, **kwargs)


def test_the_corpus_is_covered(corpus) -> None:
    _, cases = corpus
    assert set(cases) == BAD | BAD_OR_LOADS | LOADS | {"too_short"}


def test_bad_cases_name_track_and_file(corpus) -> None:
    root, cases = corpus
    for name in sorted(BAD | BAD_OR_LOADS):
        case = cases[name]
        metas = _metas(root, case)
        bad_file = str((root / case["bad_file"]).resolve())
        if name == "manifest_wrong_duration":
            bad_file = str((root / case["audio"]).resolve())  # the manifest line is wrong: its audio is named
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                dataset = _dataset(metas)
                for i in range(len(dataset)):
                    dataset[i]
            except BadTrackError as exc:
                error = exc
            else:
                assert name in BAD_OR_LOADS, f"{name}: no error"
                continue
        assert error.track == str((root / case["audio"]).resolve()), name
        assert error.path == bad_file and bad_file in str(error), (name, str(error))


def test_skip_bad_files_keeps_training_on_the_good_track(corpus) -> None:
    root, cases = corpus
    good = build_meta(root / "manifest_wrong_duration" / "good.wav")
    for name in sorted(BAD - {"manifest_wrong_duration"}):
        case = cases[name]
        bad_file = str((root / case["bad_file"]).resolve())
        dataset = _dataset(_metas(root, case) + [good], skip_bad_files=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            items = [dataset[i] for i in range(len(dataset))]
        tracks = {info.meta.path for _, info in items}
        assert tracks == {good.path} or (name in PARTLY_BAD and good.path in tracks), name
        for wav, info in items:  # what loads is sound: finite, and real audio where the manifest says
            expected = dataset.expected_frames(info.meta, info.seek_time)
            assert wav.isfinite().all() and abs(info.n_frames - expected) <= 0.5 * 32000, name
        assert any("Skipping a bad track" in str(w.message) and bad_file in str(w.message) for w in caught), name


def test_odd_but_usable_cases_load(corpus) -> None:
    root, cases = corpus
    for name in sorted(LOADS):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = _dataset(_metas(root, cases[name]))
            wav, info = dataset[0]
        assert wav.shape == (1, 32000) and info.total_frames == 32000, name
    with pytest.warns(UserWarning, match="too_short"), pytest.raises(EmptyDatasetError, match="1 shorter than"):
        _dataset(_metas(root, cases["too_short"]))
