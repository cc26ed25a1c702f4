"""The built wheel trains: `python -m build --wheel`, installed into a fresh venv, runs the debug
recipe from an empty folder (configs from the package, example data generated on first use), then
exports and generates with the installed console scripts.

The fresh venv reuses this venv's packages (torch, dora, ...) through a `.pth` file that names this
venv's site-packages: installing them again would download gigabytes. A `.pth` line adds a folder to
`sys.path` without running that folder's own `.pth` files, so this checkout's editable install of
jasco stays invisible there, and the venv's own site-packages (holding the wheel) comes first. The
wheel is installed with `--no-deps` before that file exists, so pip sees an empty environment.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Not copied into the build folder: environments, caches, generated data and earlier build outputs.
NOT_SOURCES = {".venv", ".git", "outputs", "egs", "build", "dist", ".pytest_cache", ".cache", "jasco.egg-info"}
# The debug recipe cut to one short epoch with a generate stage (the evaluate stage is covered elsewhere).
FAST_DEBUG = ["solver=jasco/debug", "optim.epochs=1", "optim.updates_per_epoch=2", "schedule.cosine.warmup=1",
              "generate.every=1", "evaluate.every=0", "dataset.generate.num_samples=1", "generate.lm.steps=1"]


def _run(command: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{command} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done.stdout


def _build_wheel(tmp_path: Path) -> Path:
    """`python -m build --wheel` on a copy of the sources (the checkout gets no build/ or egg-info)."""
    source = tmp_path / "src"
    shutil.copytree(REPO_ROOT, source, ignore=lambda folder, names: [
        name for name in names if name == "__pycache__" or (Path(folder) == REPO_ROOT and name in NOT_SOURCES)])
    # --no-isolation: build with this venv's setuptools instead of downloading one.
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"),
          str(source)], cwd=tmp_path, env=dict(os.environ))
    wheels = list((tmp_path / "dist").glob("jasco-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    """A venv holding only the wheel, seeing this venv's packages through a `.pth` file; its bin/."""
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path, env=dict(os.environ))
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
         cwd=tmp_path, env=dict(os.environ))
    site_packages = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              cwd=tmp_path, env=dict(os.environ)).strip())
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (site_packages / "_jasco_test_parent_venv.pth").write_text("".join(f"{path}\n" for path in ours))
    return venv / "bin"


@pytest.mark.slow
def test_wheel_installs_and_trains_from_any_folder(tmp_path):
    bin_dir = _fresh_venv(tmp_path, _build_wheel(tmp_path))
    work = tmp_path / "work"
    work.mkdir()
    env = {key: value for key, value in os.environ.items()
           if key not in ("DORA_PACKAGE", "PYTHONPATH", "JASCO_DORA_DIR", "JASCO_TEAM", "JASCO_CLUSTER")}
    env.update(JASCO_CACHE_DIR=str(tmp_path / "cache"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    code = "import jasco.train, jasco.environment as e; print(jasco.train.__file__); print(e.CONFIG_DIR)"
    where = _run([str(bin_dir / "python"), "-c", code], cwd=work, env=env).split()
    assert all(Path(path).is_relative_to(tmp_path / "venv") for path in where), where  # the wheel, not the checkout
    assert (Path(where[1]) / "teams" / "default.yaml").is_file()

    # No DORA_PACKAGE: `jasco-dora` is Dora's command line with the package set.
    out = _run([str(bin_dir / "jasco-dora"), "run", *FAST_DEBUG], cwd=work, env=env, timeout=600)
    assert json.loads((work / "egs" / "example" / "generator.json").read_text())["num_clips"] == 10  # first use
    folders = list((work / "outputs" / "xps").iterdir())  # the dora dir: outputs/ in the launch folder
    assert len(folders) == 1 and f"Experiment folder: {folders[0]}" in out
    xp = folders[0]
    assert (xp / "checkpoint.th").is_file()
    assert list((xp / "samples").rglob("*.wav")) and list((xp / "samples").rglob("*.png"))

    _run([str(bin_dir / "jasco-export"), xp.name, "export"], cwd=work, env=env)  # SIG looked up in ./outputs
    _run([str(bin_dir / "jasco-generate"), "--model", "export", "--text", "calm jazz", "--chords", "C@0 Am@0.5",
          "--duration", "1", "--steps", "2", "--seed", "0", "--out", "song.wav"], cwd=work, env=env)
    assert (work / "song.wav").stat().st_size > 1000
    assert "usage" in _run([str(bin_dir / "jasco-prepare"), "--help"], cwd=work, env=env).lower()
