"""The README's own-music path end to end, as a new user runs it, on music the project renders.

scripts/make_music_corpus.py renders tracks through a General MIDI soundfont (wav / mp3 / flac at
22.05 / 44.1 / 48 kHz, mono and stereo, some with sidecars, chord and salience files and drum
stems); then the documented commands run as subprocesses: `python -m jasco.prepare` with its
defaults (only `--codec debug`, since CI has no hub), `dora run` on the prepared folder,
`jasco-export`, and `jasco-generate` with chords, a drum stem and a melody from the corpus.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jasco.audio.io import audio_read
from jasco.data.manifest import load_manifest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TRACKS, SECONDS = 6, 6.0

pytestmark = pytest.mark.slow


def _run(args: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, args))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("own_music") / "corpus"
    proc = subprocess.run([sys.executable, "scripts/make_music_corpus.py", "--out", str(out),
                           "--tracks", str(TRACKS), "--seconds", str(SECONDS)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 and ("apt-get install" in proc.stderr or "pip install" in proc.stderr):
        pytest.skip(proc.stderr.strip().splitlines()[-1])  # fluidsynth / soundfont / mido missing
    assert proc.returncode == 0, proc.stderr
    return out


def test_prepare_train_export_generate_on_own_music(corpus: Path, tmp_path: Path) -> None:
    env = {**os.environ, "DORA_PACKAGE": "jasco", "JASCO_DORA_DIR": str(tmp_path / "xps"),
           "HF_HUB_OFFLINE": "1"}
    audio = corpus / "audio"
    prepared = tmp_path / "prepared"

    # 1. python -m jasco.prepare SRC OUT (defaults: 2 workers, every step, chords backend auto).
    _run([sys.executable, "-m", "jasco.prepare", str(audio), str(prepared), "--codec", "debug",
          "--no-progress"], env)
    metas = [m for split in ("train", "valid") for m in load_manifest(prepared / split)]
    assert len(load_manifest(prepared / "valid")) >= 1
    failures = prepared / "failures.jsonl"
    failed = failures.read_text().splitlines() if failures.exists() else []
    assert len(metas) == TRACKS and not failed, failed  # every rendered track comes out
    assert all(m.get_path("latents_path") and m.get_path("chords_path") for m in metas)
    with_stem = [m for m in metas if m.get_path("drums_path") or m.get_path("drum_codes_path")]
    assert 0 < len(with_stem) < TRACKS  # stems where the corpus has them, null drums elsewhere

    # 2. dora run on the prepared folder (the tiny debug recipe, as `make train` does).
    splits = [f"datasource.{s}={prepared / ('train' if s == 'train' else 'valid')}"
              for s in ("train", "valid", "evaluate", "generate")]
    _run([str(BIN / "dora"), "run", "solver=jasco/debug", "optim.epochs=1", *splits], env, timeout=900)
    (xp,) = (tmp_path / "xps" / "xps").iterdir()
    history = json.loads((xp / "history.json").read_text())
    assert len(history) == 1 and torch.isfinite(torch.tensor(history[0]["train"]["loss"]))

    # 3. jasco-export SIG OUT_DIR, then 4. jasco-generate with the corpus' own controls.
    export = tmp_path / "export"
    _run([str(BIN / "jasco-export"), xp.name, str(export)], env)
    track = next(m for m in metas if m.get_path("drums_path"))
    chords = Path(track.get_path("chords_path"))
    salience = next(audio.rglob("*.salience.npz"))
    out = tmp_path / "song.wav"
    seconds = math.ceil(track.duration)  # the track's own chord file covers it (windowed beyond 4 s)
    _run([str(BIN / "jasco-generate"), "--model", str(export), "--text", "funky bass and drums",
          "--chords", str(chords), "--drums", track.get_path("drums_path"), "--melody", str(salience),
          "--duration", str(seconds), "--steps", "4", "--device", "cpu", "--out", str(out), "--plot",
          "--no-progress"], env)
    wav, sr = audio_read(out)
    assert wav.shape[-1] == seconds * sr and torch.isfinite(wav).all() and wav.abs().max() > 0
    assert out.with_suffix(".png").is_file()
    shutil.rmtree(prepared)  # the latents of a few tracks; keep tmp small
