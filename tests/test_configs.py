"""Every solver config composes and builds its model (published sizes on the meta device)."""
from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from jasco.environment import CONFIG_DIR
from jasco.models.builders import get_flow_matching_model
from jasco.models.codec import EncodecCompressionModel

SOLVERS = sorted(p.stem for p in (CONFIG_DIR / "solver" / "jasco").glob("*.yaml"))
SCALES = sorted(p.stem for p in (CONFIG_DIR / "model" / "lm" / "model_scale").glob("*.yaml"))


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.1"):
        return compose("config", overrides=overrides)


@pytest.mark.parametrize("solver", SOLVERS)
def test_solver_config_builds(solver):
    cfg = compose_cfg([f"solver=jasco/{solver}"])
    OmegaConf.resolve(cfg)
    codec = EncodecCompressionModel.debug()  # tiny; its init computes codebooks, so not on meta
    with torch.device("meta"):
        model = get_flow_matching_model(cfg, codec)
    names = set(model.condition_provider.conditioners)
    expected = {"base": set(), "chords": {"chords"}, "drums": {"self_wav"}, "chords_drums": {"chords", "self_wav"},
                "chords_drums_melody": {"chords", "self_wav", "melody"}, "debug": {"chords", "self_wav", "melody"},
                "finetune": {"chords", "self_wav"}}
    assert names == {"description"} | expected[solver]
    assert set(model.temporal_dims) == expected[solver]


@pytest.mark.parametrize("scale", SCALES)
def test_model_scales(scale):
    cfg = compose_cfg(["solver=jasco/chords_drums", f"model/lm/model_scale={scale}"])
    sizes = {"xsmall": 64, "base": 512, "small": 1024, "medium": 1536, "large": 2048}
    assert cfg.transformer_lm.dim == sizes[scale]


def test_published_recipe_values():
    cfg = compose_cfg(["solver=jasco/chords_drums_melody"])
    assert cfg.optim.lr == 1e-4 and list(cfg.optim.adam.betas) == [0.9, 0.95]
    assert cfg.optim.adam.weight_decay == 0.1 and cfg.optim.max_norm == 1.0
    assert cfg.schedule.lr_scheduler == "cosine" and cfg.schedule.cosine.warmup == 4000
    assert cfg.optim.ema.decay == 0.99 and cfg.optim.ema.updates == 10
    assert cfg.classifier_free_guidance.training_dropout == 0.2
    assert cfg.attribute_dropout.symbolic.chords == 0.5 and cfg.attribute_dropout.wav.self_wav == 0.5
    assert cfg.generate.lm.cfg_coef_all == 3.0 and cfg.generate.lm.cfg_coef_txt == 1.0
