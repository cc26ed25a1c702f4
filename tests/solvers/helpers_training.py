"""Shared helpers for solver tests: the example dataset and in-process Dora experiments."""
from __future__ import annotations

import importlib.util
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "egs" / "example"


def ensure_example() -> Path:
    """Build egs/example (what `make train` uses) if it is missing."""
    spec = importlib.util.spec_from_file_location("make_example_dataset", REPO_ROOT / "scripts" / "make_example_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ensure_example_dataset(EXAMPLE)


@contextmanager
def experiment(dora_dir: Path, overrides: list[str]) -> Iterator[object]:
    """Enter the Dora experiment of `overrides` in-process, with its folder under `dora_dir`."""
    os.environ["JASCO_DORA_DIR"] = str(dora_dir)
    from jasco.train import main
    main.dora.dir = dora_dir
    xp = main.get_xp(overrides)
    with xp.enter():
        yield xp
