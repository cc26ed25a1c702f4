"""Shared helpers for the loader / export / generation tests: tiny debug models and their exports."""
from __future__ import annotations

from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from jasco.export import export_codec_of, export_lm
from jasco.models.builders import get_jasco_model
from jasco.models.flow_matching import FlowMatchingModel

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"


def debug_cfg(*overrides: str) -> DictConfig:
    """The `solver=jasco/debug` config (D 64, 2 layers, hashed text, debug codec, 4 s segments)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.1"):
        return compose("config", overrides=["solver=jasco/debug", *overrides])


def debug_model(cfg: DictConfig | None = None, seed: int = 0) -> FlowMatchingModel:
    """A random-weight debug model in eval mode with `.cfg` attached (deterministic per seed)."""
    cfg = cfg if cfg is not None else debug_cfg()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_jasco_model(cfg).eval()
    model.cfg = cfg
    return model


def export_model(model: FlowMatchingModel, out_dir: Path) -> Path:
    """Export `model` (with its `.cfg`) as state_dict.bin + compression_state_dict.bin in `out_dir`."""
    export_lm(model.state_dict(), model.cfg, out_dir / "state_dict.bin")
    export_codec_of(model.cfg, model.state_dict(), out_dir / "compression_state_dict.bin")
    return out_dir


def write_training_checkpoint(path: Path, state: dict[str, torch.Tensor], cfg_yaml: str,
                              fsdp_state: dict[str, torch.Tensor] | None = None) -> Path:
    """A `checkpoint.th` with the training layout (docs/MODEL.md, "Training checkpoint"); the model state is a decoy."""
    decoy = {k: torch.zeros_like(v) for k, v in state.items()}
    torch.save({"history": [{"train": {"loss": 1.0}}], "xp.cfg": cfg_yaml, "xp.sig": "abc123",
                "best_state": {"model": state}, "fsdp_best_state": {"model": fsdp_state or {}},
                "model": decoy, "optimizer": {"state": {}, "param_groups": []}, "lr_scheduler": {}}, path)
    return path
