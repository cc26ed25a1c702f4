"""Shared access to the published-implementation reference vectors in ../shared/reference."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

REFERENCE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
SMALL_REF = REFERENCE_DIR / "small_ref" / "ref.pt"
SHAPES = REFERENCE_DIR / "state_dict_shapes.json"
CHORD_MAPPING = REFERENCE_DIR / "chord_to_index_mapping.pkl"
DEEPSALIENCE = REFERENCE_DIR / "deepsalience" / "multif0.h5"
CODEC_PREFIX = "condition_provider.conditioners.self_wav.compression_model.model."
ATOL = 1e-4


def require(path: Path) -> Path:
    """Skip the calling test when a reference file is absent (it is not shipped with the repo)."""
    if not path.exists():
        pytest.skip(f"reference file {path} not available")
    return path


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = ATOL, what: str = "") -> None:
    """Max-abs-difference check with a readable message."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual.double() - expected.double()).abs().max().item()
    assert diff <= atol, f"{what}: max abs diff {diff:.3g} > {atol}"
