"""Export trained models in the published JASCO format (docs/MODEL.md, "Exported model").

An exported folder holds:
- `state_dict.bin`: `{'best_state': model state_dict, 'xp.cfg': YAML string of the resolved
  training config, 'version': jasco version, 'exported': True}`;
- `compression_state_dict.bin`: either a pointer `{'pretrained': NAME, 'exported': True,
  'version': ...}` to a hub (or local) codec, or a full copy `{'best_state': EncodecModel
  state_dict, 'xp.cfg': YAML with 'encodec' (the transformers EncodecConfig fields) and the latent
  mean/std, 'version': ..., 'exported': True}`.
Every file is written to a temporary name, then renamed, so an interrupted export leaves no
half-written file behind.

CLI: `jasco-export` / `python -m jasco.export SIG_OR_PATH OUT_DIR`, where SIG_OR_PATH is a
`checkpoint.th`, an experiment folder, or a Dora signature (`SIG` or `//sig/SIG`, looked up as
`<dora dir>/xps/SIG/checkpoint.th`; dora dir: `$JASCO_DORA_DIR`, else the team config, else
`outputs`). The folder loads with `JASCO.get_pretrained(OUT_DIR)` and `jasco-generate --model OUT_DIR`.

A LoRA run (`finetune.lora.use`, docs/FINETUNING.md) exports either merged (the default: its adapters
folded into the weights, the published layout above, loadable with plain `load_jasco_model`) or, with
`--adapter`, as an adapter folder in peft's format beside a pointer to its base model
(`jasco.models.adapters.save_adapter`; the base is the run's `continue_from` unless `--base` says
otherwise), loaded by `JASCO.get_pretrained(BASE, adapter=OUT_DIR)` / `jasco-generate --adapter OUT_DIR`.
"""
from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import EncodecConfig

import jasco
from jasco import environment, files
from jasco.models import adapters
from jasco.models.builders import get_compression_model
from jasco.models.codec import (
    PUBLISHED_LATENT_MEAN,
    PUBLISHED_LATENT_STD,
    EncodecCompressionModel,
    codec_source_name,
    is_hub_codec,
)
from jasco.models.loaders import (
    CODEC_FILE,
    CODEC_PREFIX,
    MODEL_FILE,
    adapted_model,
    best_state_of,
    merge_adapted_state,
    read_checkpoint,
)
from jasco.solvers.checkpoint import SIG_PREFIX, resolve_checkpoint, state_bytes
from jasco.solvers.continuation import PRETRAINED_PREFIX
from jasco.solvers.finetune import whole_state

logger = logging.getLogger(__name__)

DISK_FULL_HINT = "free space or export to a folder on another disk"


def _atomic_save(obj: Any, out_file: str | os.PathLike) -> Path:
    """`torch.save` to a unique temporary file in the target folder, then rename over `out_file`.

    The file gets the usual mode under the process umask (0o644 with umask 022), so a shared model
    folder stays readable. A full disk raises `files.DiskFullError` and leaves no temp file.
    """
    out_file = Path(out_file)
    with files.atomic_write(out_file, "wb", needed_bytes=state_bytes(obj), disk_full_hint=DISK_FULL_HINT) as f:
        torch.save(obj, f)
    return out_file


def _yaml(cfg: DictConfig | dict) -> str:
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    return OmegaConf.to_yaml(cfg, resolve=True)


def export_lm(model_state: dict[str, torch.Tensor], cfg: DictConfig | dict | str, out_file: str | os.PathLike) -> Path:
    """Write `state_dict.bin`: `{'best_state', 'xp.cfg' (YAML), 'version', 'exported': True}`."""
    yaml_cfg = cfg if isinstance(cfg, str) else _yaml(cfg)
    state = {k: v.detach().cpu().clone() for k, v in model_state.items()}
    package = {"best_state": state, "xp.cfg": yaml_cfg, "version": jasco.__version__, "exported": True}
    return _atomic_save(package, out_file)


def export_pretrained_compression_model(name: str, out_file: str | os.PathLike) -> Path:
    """Write a codec pointer `{'pretrained': name, 'exported': True, 'version'}` (hub repo id or folder)."""
    return _atomic_save({"pretrained": name, "exported": True, "version": jasco.__version__}, out_file)


# The EncodecConfig fields that define the codec (transformers' bookkeeping, label maps etc. left out).
_ENCODEC_FIELDS = (
    "sampling_rate", "audio_channels", "normalize", "chunk_length_s", "overlap", "hidden_size", "num_filters",
    "num_residual_layers", "upsampling_ratios", "norm_type", "kernel_size", "last_kernel_size",
    "residual_kernel_size", "dilation_growth_rate", "use_causal_conv", "pad_mode", "compress", "num_lstm_layers",
    "trim_right_ratio", "codebook_size", "codebook_dim", "use_conv_shortcut", "target_bandwidths",
)


def _encodec_fields(config: EncodecConfig) -> dict[str, Any]:
    """The fields of an EncodecConfig that define the codec."""
    values = config.to_dict()
    return {k: values[k] for k in _ENCODEC_FIELDS if k in values}


def export_encodec(codec: EncodecCompressionModel, out_file: str | os.PathLike) -> Path:
    """Write a full codec copy: its transformers config, weights and latent normalisation."""
    cfg = {"compression_model": "encodec_hf", "encodec": _encodec_fields(codec.model.config),
           "compression_model_latent_mean": codec.latent_mean, "compression_model_latent_std": codec.latent_std}
    state = {k: v.detach().cpu().clone() for k, v in codec.model.state_dict().items()}
    package = {"best_state": state, "xp.cfg": _yaml(cfg), "version": jasco.__version__, "exported": True}
    return _atomic_save(package, out_file)


# ---------------------------------------------------------------- training checkpoints
def find_checkpoint(sig_or_path: str | os.PathLike, dora_dir: str | os.PathLike | None = None) -> Path:
    """The `checkpoint.th` of a file, an experiment folder or a Dora signature (`SIG` or `//sig/SIG`).

    A signature is looked up as `<dora_dir>/xps/<SIG>/checkpoint.th`, with `dora_dir` defaulting to
    `jasco.environment.dora_dir()` (`$JASCO_DORA_DIR`, else the team config, else `outputs`).
    """
    text = str(sig_or_path)
    root = Path(dora_dir).expanduser() if dora_dir is not None else environment.dora_dir()
    if Path(text).expanduser().exists() or text.startswith(SIG_PREFIX) or "/" in text:
        return resolve_checkpoint(text, root)
    # A bare signature, as `dora` prints it.
    return resolve_checkpoint(SIG_PREFIX + text, root)


def _checkpoint_cfg(checkpoint: dict, source: Path) -> DictConfig:
    raw = checkpoint.get("xp.cfg")
    if not isinstance(raw, (str, dict)):
        raise ValueError(f"{source} has no 'xp.cfg' (YAML string or dict); is it a jasco training checkpoint?")
    return OmegaConf.create(raw)


def export_codec_of(cfg: DictConfig, model_state: dict[str, torch.Tensor], out_file: str | os.PathLike) -> Path:
    """Write `compression_state_dict.bin` for a run: a pointer to a hub codec, else a full copy.

    `compression_model_checkpoint` = `//pretrained/NAME` or a hub name → pointer; a local folder or
    `debug` → full copy (the weights embedded in `model_state` when present: those are exactly the
    ones the run used).
    """
    source = cfg.get("compression_model_checkpoint")
    if is_hub_codec(source):
        return export_pretrained_compression_model(codec_source_name(source), out_file)
    norm = {"latent_mean": float(cfg.get("compression_model_latent_mean", PUBLISHED_LATENT_MEAN)),
            "latent_std": float(cfg.get("compression_model_latent_std", PUBLISHED_LATENT_STD))}
    if any(k.startswith(CODEC_PREFIX) for k in model_state):
        codec = EncodecCompressionModel.from_state_dict(model_state, prefix=CODEC_PREFIX, **norm)
    else:
        codec = get_compression_model(cfg)
    return export_encodec(codec, out_file)


def base_model_of(cfg: DictConfig, checkpoint_path: Path) -> str:
    """The model a run started from (`continue_from`) as a source `load_jasco` reads: a hub repo id, an
    absolute folder or file path.

    Raises:
        ValueError: the run has no continue_from.
    """
    source = cfg.get("continue_from")
    if not source:
        raise ValueError(f"{checkpoint_path}: the run has no continue_from, so its adapters have no base model; "
                         "pass --base BASE, or export it merged (without --adapter)")
    source = str(source)
    source = source.removeprefix(PRETRAINED_PREFIX)
    if source.startswith(SIG_PREFIX):
        return str(resolve_checkpoint(source, environment.dora_dir()))
    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else source


def export_adapter(checkpoint: dict, checkpoint_path: Path, out_dir: Path, base: str | None = None) -> Path:
    """Write the adapter folder of a LoRA run's best state (`jasco.models.adapters.save_adapter`)."""
    state = best_state_of(checkpoint, checkpoint_path)
    cfg = _checkpoint_cfg(checkpoint, checkpoint_path)
    if not adapters.has_lora(state):
        raise ValueError(f"{checkpoint_path} was not trained with LoRA adapters (finetune.lora.use=false): "
                         "export it without --adapter")
    model = adapted_model(state, cfg, checkpoint_path)
    raw = checkpoint["xp.cfg"]
    return adapters.save_adapter(model, out_dir, base or base_model_of(cfg, checkpoint_path),
                                 raw if isinstance(raw, str) else _yaml(cfg), whole_state(model, cfg),
                                 jasco.__version__)


def export_checkpoint(checkpoint_path: str | os.PathLike, out_dir: str | os.PathLike, adapter: bool = False,
                      base: str | None = None) -> Path:
    """Export a training `checkpoint.th` to `out_dir/{state_dict.bin, compression_state_dict.bin}`.

    The best state of a LoRA run is merged (published layout; the config written says
    `finetune.lora.use: false`); with `adapter`, an adapter folder is written instead (`export_adapter`,
    `base` defaulting to the run's continue_from).

    Returns:
        `out_dir`.
    """
    checkpoint_path = Path(checkpoint_path)
    checkpoint = read_checkpoint(checkpoint_path)
    out_dir = Path(out_dir)
    if adapter:
        export_adapter(checkpoint, checkpoint_path, out_dir, base)
        logger.info("exported the adapters of %s to %s", checkpoint_path, out_dir)
        return out_dir
    state = best_state_of(checkpoint, checkpoint_path)
    cfg = _checkpoint_cfg(checkpoint, checkpoint_path)
    if adapters.has_lora(state):
        state = merge_adapted_state(state, cfg, checkpoint_path)
        cfg.finetune.lora.use = False  # the weights written hold no adapters any more
    export_lm(state, cfg, out_dir / MODEL_FILE)
    export_codec_of(cfg, state, out_dir / CODEC_FILE)
    logger.info("exported %s to %s", checkpoint_path, out_dir)
    return out_dir


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = argparse.ArgumentParser(prog="jasco-export", description="Export a training run for inference.")
    parser.add_argument("source", metavar="SIG_OR_PATH", help="checkpoint.th, experiment folder or Dora signature")
    parser.add_argument("out_dir", metavar="OUT_DIR",
                        help="folder to write state_dict.bin and compression_state_dict.bin")
    parser.add_argument("--adapter", action="store_true",
                        help="LoRA runs: write the adapters in peft's format (adapter_config.json, "
                             "adapter_model.safetensors) and a pointer to the base model instead of merged weights")
    parser.add_argument("--base", default=None,
                        help="with --adapter: the base model the pointer names (default: the run's continue_from)")
    parser.add_argument("--dora-dir", default=None,
                        help="Dora folder for signatures (default $JASCO_DORA_DIR, else the team config)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    checkpoint = find_checkpoint(args.source, args.dora_dir)
    if args.base is not None and not args.adapter:
        parser.error("--base only goes with --adapter")
    out = export_checkpoint(checkpoint, args.out_dir, adapter=args.adapter, base=args.base)
    print(f"exported {checkpoint} -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
