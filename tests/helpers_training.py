"""Shared helpers for solver tests: the example dataset and in-process Dora experiments."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from jasco.train import experiment  # noqa: F401  (re-exported for the tests)

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = REPO_ROOT / "egs" / "example"


def ensure_example() -> Path:
    """Build egs/example (what `make train` uses) if it is missing."""
    spec = importlib.util.spec_from_file_location("make_example_dataset", REPO_ROOT / "scripts" / "make_example_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ensure_example_dataset(EXAMPLE)
