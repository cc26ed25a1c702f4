"""Packaging hook: copy the repository's `config/` into the wheel as `jasco/config`.

Everything else about the package is in pyproject.toml. Source users keep editing `config/` at
the repository root; a built wheel (`python -m build --wheel`, `pip install .`) carries a copy, so
that an installed jasco finds its Hydra configs (`jasco.environment.CONFIG_DIR`). Editable
installs copy nothing: they read `config/` in place. docs/PACKAGING.md explains the choice.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CONFIG_SOURCE = Path(__file__).resolve().parent / "config"


class BuildPyWithConfig(build_py):
    """`build_py`, then `config/**/*.yaml` copied to `<build>/jasco/config` (a stale copy is replaced)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        if not CONFIG_SOURCE.is_dir():
            raise FileNotFoundError(f"{CONFIG_SOURCE} is missing: the wheel needs the Hydra configs")
        target = Path(self.build_lib) / "jasco" / "config"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(CONFIG_SOURCE, target, ignore=lambda folder, names: [
            name for name in names if not (name.endswith(".yaml") or (Path(folder) / name).is_dir())])


setup(cmdclass={"build_py": BuildPyWithConfig})
