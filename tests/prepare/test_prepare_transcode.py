"""`--transcode`: training-rate audio next to the other outputs, the manifests pointing at it."""
from __future__ import annotations

import json

import numpy as np
import soundfile as sf
from helpers_prepare import cli_args, tone

from jasco.audio.io import audio_info, audio_read
from jasco.data.jasco_dataset import JascoDataset
from jasco.data.manifest import load_manifest
from jasco.prepare.__main__ import main


def test_transcode_writes_codec_rate_audio_and_points_the_manifest_at_it(tmp_path):
    src = tmp_path / "src"
    for i, name in enumerate(("one", "two")):
        tone(src / f"{name}.wav", 2.0, sample_rate=44100, channels=2, freq=200.0 + 50 * i)
    out = tmp_path / "out"
    assert main(cli_args(src, out, "--transcode", steps="manifest,chords,latents")) == 0
    metas = {m.extra["original_path"]: m for s in ("train", "valid") for m in load_manifest(out / s)}
    assert sorted(metas) == [str((src / "one.wav").resolve()), str((src / "two.wav").resolve())]
    for original, meta in metas.items():
        info = audio_info(meta.path)
        assert meta.path.startswith(str((out / "audio").resolve())) and meta.path.endswith(".flac")
        assert (info.sample_rate, info.channels, meta.sample_rate) == (32000, 1, 32000)
        assert abs(info.duration - 2.0) < 1e-3 and abs(meta.duration - 2.0) < 1e-3
        assert sf.info(original).samplerate == 44100  # the input is left alone
    line = json.loads((out / "train" / "data.jsonl").read_text().splitlines()[0])
    assert line["path"].startswith("../audio/") and line["original_path"].startswith("/")
    # The dataset reads the prepared lines; the latents were encoded from the transcoded copy.
    dataset = JascoDataset(list(metas.values()), segment_duration=1.0, shuffle=False, return_info=True, train=False)
    _, info = dataset[0]
    assert info.latents.shape == (50, 128) and np.isfinite(info.latents.numpy()).all()
    wav, sr = audio_read(next(iter(metas.values())).path)
    assert sr == 32000 and wav.shape == (1, 64000)
    # A rerun finds every output valid.
    assert main(cli_args(src, out, "--transcode", steps="manifest,chords,latents")) == 0
    counts = json.loads((out / "prepare.json").read_text())["counts"]
    assert counts["transcode"]["skipped"] == 2 and counts["latents"]["skipped"] == 2
