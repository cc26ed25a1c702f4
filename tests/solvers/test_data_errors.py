"""Bad data as the solver meets it: an empty valid split, a bad drum stem with and without skip_bad_files."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_audio import write_wav
from helpers_training import EXAMPLE, ensure_example, experiment

from jasco.data import audio_dataset, jasco_dataset
from jasco.data.audio_dataset import BadTrackError, EmptyDatasetError
from jasco.data.drum_codes import write_drum_codes
from jasco.data.latents import write_codec_identity, write_latents
from jasco.data.manifest import build_manifest, load_manifest, save_manifest
from jasco.models.codec import EncodecCompressionModel

RUN = ["solver=jasco/debug", "optim.epochs=1", "optim.updates_per_epoch=3", "generate.every=0", "evaluate.every=0",
       "logging.log_tensorboard=false"]


def _train_set(root: Path, bad_stem: bool) -> Path:
    """Two example clips in their own folder; with `bad_stem`, clip_00's drum stem lasts 0.5 s."""
    audio = root / "audio"
    audio.mkdir(parents=True)
    metas = [m for m in load_manifest(EXAMPLE / "train") if Path(m.path).stem in ("clip_00", "clip_01")]
    for meta in metas:
        for name in ("path", "info_path", "chords_path", "salience_path", "drums_path"):
            source = meta.get_path(name)
            if source is not None:
                shutil.copy(source, audio / Path(source).name)
    metas = build_manifest(audio, workers=1, progress=False)
    if bad_stem:
        write_wav(audio / "clip_00.drums.wav", torch.zeros(1, 16000), 32000)
    save_manifest(root / "train" / "data.jsonl", metas)
    return root / "train"


def test_empty_valid_split_names_split_manifest_and_fix(tmp_path):
    ensure_example()
    from jasco.train import get_solver
    write_wav(tmp_path / "audio" / "short.wav", torch.zeros(1, 32000), 32000)  # 1 s < 0.5 x 4 s
    valid = tmp_path / "valid"
    save_manifest(valid / "data.jsonl", build_manifest(tmp_path / "audio", progress=False))
    with experiment(tmp_path / "dora", RUN + [f"datasource.valid={valid}"]) as xp, \
            pytest.warns(UserWarning, match="short.wav"), pytest.raises(EmptyDatasetError) as caught:
        get_solver(xp.cfg)
    text = str(caught.value)
    assert text.startswith(f"datasource.valid={valid}: ") and f"the manifest {valid / 'data.jsonl'}" in text
    assert "all 1 file(s)" in text and "1 shorter than 2.00 s (= min_segment_ratio 0.5 x segment_duration 4 s" in text
    assert "Fix: lower segment_duration or min_segment_ratio" in text and "dataset.valid.min_segment_ratio" in text


def test_bad_drum_stem_stops_or_is_skipped(tmp_path):
    ensure_example()
    from jasco.train import get_solver
    train = _train_set(tmp_path / "data", bad_stem=True)
    with experiment(tmp_path / "dora", RUN + [f"datasource.train={train}"]) as xp:
        solver = get_solver(xp.cfg)
        with pytest.raises(BadTrackError, match=r"clip_00\.wav: bad drum stem \S*clip_00\.drums\.wav: it lasts 0\.5"):
            solver.run()
    with experiment(tmp_path / "dora", RUN + [f"datasource.train={train}", "dataset.skip_bad_files=true"]) as xp:
        solver = get_solver(xp.cfg)
        with pytest.warns(UserWarning, match=r"Skipping a bad track .*clip_00\.wav: bad drum stem \S*clip_00\.drums"):
            solver.run()
        assert len(solver.history) == 1 and torch.isfinite(torch.tensor(solver.history[0]["train"]["loss"]))


def test_cached_latents_train_and_generate_without_decoding_audio(tmp_path, monkeypatch):
    ensure_example()
    from jasco.train import get_solver
    train = _train_set(tmp_path / "data", bad_stem=False)
    metas = load_manifest(train)
    latents = tmp_path / "data" / "latents"
    write_codec_identity(latents, EncodecCompressionModel.debug())  # the debug config's codec
    for i, meta in enumerate(metas):
        frames = round(meta.duration * 50)
        meta.extra["latents_path"] = str(write_latents(latents / f"{i}.npy", 0.1 * torch.randn(frames, 128)))
        meta.extra["drum_codes_path"] = str(write_drum_codes(latents / f"{i}.codes.npy",
                                                             torch.zeros(frames, dtype=torch.long)))
    save_manifest(train / "data.jsonl", metas)

    def no_decoding(*args, **kwargs):
        raise AssertionError("audio decoded although every track has cached latents")

    for module in (audio_dataset, jasco_dataset):
        monkeypatch.setattr(module, "audio_read", no_decoding)
    overrides = RUN + [f"datasource.{split}={train}" for split in ("train", "valid", "evaluate", "generate")]
    with experiment(tmp_path / "dora", overrides + ["generate.every=1", "evaluate.every=1"]) as xp:
        solver = get_solver(xp.cfg)
        wav, infos = next(iter(solver.dataloaders["train"]))
        assert wav.shape[-1] == 0 and all(info.latents is not None for info in infos)
        solver.run()
        samples = sorted((solver.folder / "samples" / "1").glob("*.wav"))
    assert len(samples) == 2 and np.isfinite(solver.history[0]["evaluate"]["loss"])
