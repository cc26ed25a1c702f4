"""Models built from each published config have exactly the published keys and shapes (meta device)."""
from __future__ import annotations

import json

import pytest
import torch
from reference_files import SHAPES, require
from transformers import EncodecModel

from jasco.models.builders import get_flow_matching_model
from jasco.models.codec import EncodecCompressionModel, encodec_32khz_config
from jasco.models.loaders import model_config


def published_models() -> dict:
    if not SHAPES.exists():
        return {}
    return json.loads(SHAPES.read_text())["models"]


@pytest.mark.parametrize("name", sorted(published_models()) or ["missing"])
def test_published_state_dict_layout(name):
    entry = json.loads(require(SHAPES).read_text())["models"][name]
    cfg = {key: entry[key] for key in ("transformer_lm", "conditioners", "fuser", "attribute_dropout",
                                       "classifier_free_guidance", "compression_model_latent_mean",
                                       "compression_model_latent_std")}
    with torch.device("meta"):
        codec = EncodecCompressionModel(EncodecModel(encodec_32khz_config()))
        model = get_flow_matching_model(model_config(cfg), codec)  # published extras dropped as load_jasco does
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    expected = entry["state_dict"]
    assert sorted(set(expected) - set(ours)) == [], "missing keys"
    assert sorted(set(ours) - set(expected)) == [], "unexpected keys"
    wrong = {k: (ours[k], expected[k]) for k in expected if ours[k] != expected[k]}
    assert not wrong, f"shape mismatches: {wrong}"
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == entry["trainable_parameters (requires_grad)"]
