"""Load published and exported JASCO checkpoints: the flow model, its codec and chord vocabulary.

A source (`src`) is one of:
- a Hugging Face repo id (`facebook/jasco-chords-drums-400M`): `state_dict.bin` and
  `compression_state_dict.bin` are downloaded into `cache_dir`, `$JASCO_CACHE_DIR` or the HF cache;
- a local directory holding those files (what `jasco-export` writes);
- a file: an exported `state_dict.bin` (or a training `checkpoint.th`), or a codec file.

A training checkpoint of a LoRA run has its adapters folded into the weights when it is loaded
(`merge_adapted_state`); `load_jasco_with_adapter` applies an adapter folder (`jasco-export
--adapter`) to its base model.

Files are read with `torch.load(weights_only=True)` only: nothing arbitrary is unpickled.
File formats: docs/MODEL.md, "Checkpoints", and docs/INFERENCE.md.
"""
from __future__ import annotations

import logging
import os
import pickle
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import EncodecConfig

from jasco import environment, hub, safe_load
from jasco.controls.chords.symbols import chord_identity
from jasco.controls.chords.vocabulary import (
    PUBLISHED_VOCABULARY,
    ChordVocabulary,
    vocabulary_file,
)
from jasco.models import adapters
from jasco.models.builders import (
    CLASSIFIER_FREE_GUIDANCE_KEYS,
    CONDITIONER_REGISTRY,
    FUSER_KEYS,
    TRANSFORMER_LM_KEYS,
    get_compression_model,
    get_flow_matching_model,
)
from jasco.models.codec import EncodecCompressionModel, convert_weight_norm_keys
from jasco.models.flow_matching import FlowMatchingModel

logger = logging.getLogger(__name__)

MODEL_FILE = "state_dict.bin"
CODEC_FILE = "compression_state_dict.bin"
# Where a JASCO state_dict embeds the frozen codec (the drums conditioner owns it).
CODEC_PREFIX = "condition_provider.conditioners.self_wav.compression_model.model."
# Conv geometry buffers that older transformers kept in the state_dict; now rebuilt from the config.
_GEOMETRY_BUFFERS = ("stride", "kernel_size", "padding_total")
_HUB_HELP = (
    "Without access to the Hugging Face hub, download the files on a machine that has it "
    "(`huggingface-cli download {repo} --local-dir DIR`, or the files {files} from "
    "https://huggingface.co/{repo}), copy DIR here and pass the directory instead of the repo id."
)


class ModelLoadError(ValueError):
    """A checkpoint file is missing, corrupt, truncated or not in the expected format."""


@dataclass
class LoadedJasco:
    """What `load_jasco` returns: the model, the codec that decodes its latents, and where from.

    Attributes:
        model: the flow model in eval mode, with `.cfg` (OmegaConf) attached.
        compression_model: the codec (for drums models the same object as the drums conditioner's).
        cfg: the checkpoint's own config.
        source: the file the model weights were read from.
    """

    model: FlowMatchingModel
    compression_model: EncodecCompressionModel
    cfg: DictConfig
    source: Path


# ---------------------------------------------------------------- files
def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """`torch.load(path, weights_only=True)` on CPU, with a clear error for a bad or missing file.

    Raises:
        FileNotFoundError: no such file.
        safe_load.UnsafeTorchError: the installed torch is older than 2.6, whose safe loader can
            be bypassed (nothing is read).
        ModelLoadError: the file holds objects the safe loader refuses (named; nothing is
            executed), is corrupt or truncated, or is not a dict.
    """
    safe_load.check_safe_torch_load()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} does not exist.")
    try:
        package = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        refused = safe_load.refused_by_safe_loader(path, err)
        if refused is not None:
            raise ModelLoadError(
                f"{path} contains objects that the safe loader (torch.load weights_only=True) refuses: {refused}. "
                "jasco will not execute it (unpickling such objects can run arbitrary code). Use a model "
                "exported with `jasco-export` or downloaded from a source you trust.") from err
        if not isinstance(err, (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError,
                                ValueError)):
            raise
        # torch's text for an unreadable pickle suggests weights_only=False: not advice to pass on.
        lines = [] if isinstance(err, pickle.UnpicklingError) else str(err).strip().splitlines()
        said = f" ({type(err).__name__}: {lines[0][:300]})" if lines else ""
        raise ModelLoadError(
            f"cannot read {path}: it is corrupt or truncated, or not a torch.save file{said}. "
            "Download or export it again.") from err
    if not isinstance(package, dict):
        raise ModelLoadError(f"{path} holds a {type(package).__name__}, expected a dict "
                             "(docs/MODEL.md, 'Checkpoints').")
    return package


def _is_local(src: str) -> bool:
    """True when `src` must be a local path (exists, or cannot be a `namespace/name` repo id)."""
    return Path(src).expanduser().exists() or src.startswith((".", "/", "~")) or src.count("/") != 1


def hf_hub_download(**kwargs: Any) -> str:
    """`huggingface_hub.hf_hub_download` (a module attribute so tests can replace it)."""
    from huggingface_hub import hf_hub_download as download

    return download(**kwargs)


def resolve_file(src: str | os.PathLike, filename: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Local path of `filename` for a source: the file itself, `<dir>/<filename>`, or a hub download.

    Raises:
        FileNotFoundError: a local source lacks the file.
        hub.HubUnavailableError: offline (`HF_HUB_OFFLINE`) or the hub is unreachable, and
            the file is not cached: raised at once, saying what to do.
        RuntimeError: the hub refused the download (missing repo, auth, HTTP error).
    """
    text = str(src)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if not (path / filename).is_file():
            raise FileNotFoundError(f"{path} has no {filename}: an exported JASCO folder holds "
                                    f"{MODEL_FILE} and {CODEC_FILE} (written by `jasco-export`).")
        return path / filename
    if _is_local(text):
        raise FileNotFoundError(f"{text} does not exist: give an exported folder, a {MODEL_FILE} file "
                                "or a Hugging Face repo id such as facebook/jasco-chords-drums-400M.")
    cache = cache_dir if cache_dir is not None else environment.cache_dir()
    try:
        return Path(hub.from_hub(
            lambda local_only: hf_hub_download(repo_id=text, filename=filename, cache_dir=cache,
                                               local_files_only=local_only),
            text, what=f"{filename} of", cache=cache,
            local_fix="pass the directory instead of the repo id"))
    except hub.HubUnavailableError:
        raise
    except Exception as err:  # hub errors have many types (404, auth, HTTP)
        raise RuntimeError(
            f"could not get {filename} of {text!r} from the Hugging Face hub, and it is not in the cache "
            f"({cache or 'default HF cache'}): {err}\n"
            + _HUB_HELP.format(repo=text, files=f"{MODEL_FILE} and {CODEC_FILE}")) from err


def _cfg_from_package(package: dict, path: Path) -> DictConfig:
    raw = package.get("xp.cfg")
    if raw is None:
        raise ModelLoadError(f"{path} has no 'xp.cfg': a JASCO checkpoint carries its config "
                             "(docs/MODEL.md, 'Checkpoints').")
    try:
        cfg = OmegaConf.create(raw) if isinstance(raw, (str, dict)) else None
    except Exception as err:
        raise ModelLoadError(f"'xp.cfg' of {path} is not valid YAML: {err}") from err
    if not isinstance(cfg, DictConfig):
        raise ModelLoadError(f"'xp.cfg' of {path} must be a YAML mapping (or dict), got {type(raw).__name__}.")
    return cfg


def best_state_of(package: dict, source: str | os.PathLike = "checkpoint") -> dict[str, torch.Tensor]:
    """The model weights a checkpoint holds, from any of the layouts this project reads.

    An export's `best_state` is the state_dict itself; a training checkpoint's is
    `{'model': state_dict}`; published training checkpoints written with FSDP keep it under
    `fsdp_best_state` (read first when non-empty).

    Raises:
        ModelLoadError: no non-empty best state, or one that is not name -> tensor.
    """
    for key in ("fsdp_best_state", "best_state"):
        state = package.get(key)
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]
        if isinstance(state, dict) and state:
            if not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise ModelLoadError(f"'{key}' of {source} is not a state_dict (name -> tensor).")
            return state
    raise ModelLoadError(f"{source} has no best state yet: expected 'best_state' (an exported state_dict, or a "
                         "training checkpoint's {'model': state_dict} written after at least one validated epoch).")


def load_lm_state(src: str | os.PathLike, cache_dir: str | os.PathLike | None = None
                  ) -> tuple[dict[str, torch.Tensor], DictConfig, Path]:
    """Weights and config of a model source without building the model: `(state_dict, cfg, file)`.

    A training `checkpoint.th` gives its FSDP best state when non-empty, else its best state.
    """
    path = resolve_file(src, MODEL_FILE, cache_dir)
    package = read_checkpoint(path)
    state, cfg = best_state_of(package, path), _cfg_from_package(package, path)
    if adapters.has_lora(state):
        state = merge_adapted_state(state, cfg, path)
    return state, cfg, path


def _embedded_codec(state: dict[str, torch.Tensor], cfg: DictConfig | dict) -> EncodecCompressionModel | None:
    """The codec whose weights a drums model's state_dict embeds (None when it embeds none)."""
    if not any(k.startswith(CODEC_PREFIX) for k in state):
        return None
    return EncodecCompressionModel.from_state_dict(state, prefix=CODEC_PREFIX, **_latent_norm(cfg))


def adapted_model(state: dict[str, torch.Tensor], cfg: DictConfig | dict, source: str | os.PathLike,
                  compression_model: EncodecCompressionModel | None = None) -> FlowMatchingModel:
    """The network of a LoRA run (`finetune.lora` of `cfg`), adapters added, `state` loaded strictly.

    Raises:
        ModelLoadError: `cfg` has no `finetune.lora` with `use: true`, or the weights do not fit.
    """
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    lora = OmegaConf.select(cfg, "finetune.lora")
    if lora is None or not lora.get("use"):
        raise ModelLoadError(f"{source} holds LoRA adapters but its xp.cfg has no finetune.lora.use=true: "
                             "it cannot be rebuilt (was the config edited?)")
    codec = compression_model or _embedded_codec(state, cfg) or get_compression_model(cfg)
    model = get_flow_matching_model(model_config(cfg), codec)
    adapters.add_lora(model, adapters.lora_config(model, adapters.LoraSettings.from_config(lora)))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ModelLoadError(f"the weights in {source} do not fit the LoRA model built from its xp.cfg: {err}") from err
    return model


def merge_adapted_state(state: dict[str, torch.Tensor], cfg: DictConfig | dict,
                        source: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A LoRA run's state_dict with its adapters folded in (peft's merge): the published layout."""
    model = adapters.merge_lora(adapted_model(state, cfg, source))
    return {k: v.detach() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- codec
def _latent_norm(cfg: DictConfig | dict | None) -> dict[str, float]:
    cfg = cfg or {}
    norm = {}
    if cfg.get("compression_model_latent_mean") is not None:
        norm["latent_mean"] = float(cfg["compression_model_latent_mean"])
    if cfg.get("compression_model_latent_std") is not None:
        norm["latent_std"] = float(cfg["compression_model_latent_std"])
    return norm


def codec_from_package(package: dict, source: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                       **norm: float) -> EncodecCompressionModel:
    """Codec from a `compression_state_dict.bin` dict: a `{'pretrained': name}` pointer or a full export.

    Args:
        package: the loaded file.
        source: its path (for messages).
        cache_dir: hub cache for a pointer to a hub codec.
        **norm: `latent_mean` / `latent_std`, overriding those of a full export.
    """
    if "pretrained" in package:
        return EncodecCompressionModel.from_source(package["pretrained"], cache_dir=cache_dir, **norm)
    if "best_state" not in package:
        raise ModelLoadError(f"{source} is neither a codec pointer ({{'pretrained': name}}) nor a full codec "
                              "export ('best_state' + 'xp.cfg').")
    cfg = _cfg_from_package(package, Path(source)) if "xp.cfg" in package else OmegaConf.create({})
    state = best_state_of(package, source)
    encodec = cfg.get("encodec")
    config = EncodecConfig(**OmegaConf.to_container(encodec)) if encodec is not None else None
    try:
        return EncodecCompressionModel.from_state_dict(state, config=config, **{**_latent_norm(cfg), **norm})
    except (ValueError, RuntimeError) as err:
        raise ModelLoadError(f"the codec weights in {source} do not form a transformers EncodecModel "
                              f"(only transformers-format EnCodec exports are supported): {err}") from err


def load_compression_model(src: str | os.PathLike, device: str | torch.device = "cpu",
                           cache_dir: str | os.PathLike | None = None, **norm: float) -> EncodecCompressionModel:
    """Load a codec from a hub repo id, an exported folder, a codec file or a transformers codec folder.

    Args:
        src: repo id / folder with `compression_state_dict.bin` / that file / a folder with the
            `config.json` of a transformers EnCodec (e.g. a download of facebook/encodec_32khz).
        device: where to put it.
        cache_dir: hub cache (default `$JASCO_CACHE_DIR`, else the HF cache).
        **norm: `latent_mean` / `latent_std` of the normalised latents.
    """
    path = Path(str(src)).expanduser()
    if path.is_dir() and not (path / CODEC_FILE).is_file() and (path / "config.json").is_file():
        return EncodecCompressionModel.from_pretrained(str(path), **norm).to(device)
    file = resolve_file(src, CODEC_FILE, cache_dir)
    return codec_from_package(read_checkpoint(file), file, cache_dir, **norm).to(device)


def _codec_for(state: dict[str, torch.Tensor], cfg: DictConfig, src: str | os.PathLike, model_file: Path,
               cache_dir: str | os.PathLike | None) -> EncodecCompressionModel:
    """The codec of a model: embedded weights first (no download), then the codec file, then the config."""
    norm = _latent_norm(cfg)
    if any(k.startswith(CODEC_PREFIX) for k in state):
        try:
            return EncodecCompressionModel.from_state_dict(state, prefix=CODEC_PREFIX, **norm)
        except (ValueError, RuntimeError) as err:
            raise ModelLoadError(f"the codec weights embedded in {model_file} are inconsistent: {err}") from err
    codec_file = model_file.parent / CODEC_FILE
    if not codec_file.is_file() and not _is_local(str(src)):
        codec_file = resolve_file(src, CODEC_FILE, cache_dir)  # hub: the sibling is not downloaded yet
    if codec_file.is_file():
        return codec_from_package(read_checkpoint(codec_file), codec_file, cache_dir, **norm)
    logger.info("%s has no %s next to it: using compression_model_checkpoint=%s of its config",
                model_file, CODEC_FILE, cfg.get("compression_model_checkpoint"))
    return get_compression_model(cfg)


def _match_state_keys(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Rename the codec's weight-norm keys to the installed naming; drop derived geometry buffers."""
    codec = {k: v for k, v in state.items() if k.startswith(CODEC_PREFIX)}
    if not codec:
        return state
    new_style = any(k.endswith(".parametrizations.weight.original0") for k in expected)
    codec = convert_weight_norm_keys(codec, "parametrizations" if new_style else "legacy")
    codec = {k: v for k, v in codec.items() if k in expected or k.rsplit(".", 1)[-1] not in _GEOMETRY_BUFFERS}
    return {**{k: v for k, v in state.items() if not k.startswith(CODEC_PREFIX)}, **codec}


# ---------------------------------------------------------------- model
def _section(cfg: DictConfig | dict, key: str) -> Any:
    value = cfg.get(key)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def model_config(cfg: DictConfig | dict) -> dict[str, Any]:
    """What the builders need of a checkpoint's `xp.cfg`, with only the keys they know.

    The builders reject unknown keys, but a published `xp.cfg` also describes the rest of the
    published training code, e.g. `transformer_lm.{n_q, card, memory_efficient, ...}`,
    `conditioners.self_wav.drum_latents.{sample_rate, cache_path, ...}` or
    `classifier_free_guidance.inference_coef`: those are dropped here (listed at debug level).
    Kept: `transformer_lm`, `conditioners` (each one's `model` and the section of that kind),
    `fuser`, `classifier_free_guidance`, `attribute_dropout`, `condition_dropout_per_sample`,
    `compression_model_framerate` and `dataset.segment_duration`.
    """
    dropped: list[str] = []

    def known_only(section: Any, known: Iterable[str], where: str) -> dict[str, Any]:
        section, known = section or {}, set(known)
        dropped.extend(f"{where}.{key}" for key in section if key not in known)
        return {key: value for key, value in section.items() if key in known}

    conditioners = {}
    for name, section in (_section(cfg, "conditioners") or {}).items():
        kind = section.get("model") if isinstance(section, dict) else None
        if kind not in CONDITIONER_REGISTRY:
            if kind is None:  # not a conditioner, e.g. the `args` section of older configs
                dropped.append(f"conditioners.{name}")
            else:  # an unknown kind: the builder says which kinds exist
                conditioners[name] = section
            continue
        dropped.extend(f"conditioners.{name}.{key}" for key in section if key not in ("model", kind))
        conditioners[name] = {"model": kind, kind: known_only(section.get(kind), CONDITIONER_REGISTRY[kind].keys,
                                                             f"conditioners.{name}.{kind}")}
    out: dict[str, Any] = {
        "transformer_lm": known_only(_section(cfg, "transformer_lm"), TRANSFORMER_LM_KEYS, "transformer_lm"),
        "conditioners": conditioners,
        "fuser": known_only(_section(cfg, "fuser"), FUSER_KEYS, "fuser"),
        "classifier_free_guidance": known_only(_section(cfg, "classifier_free_guidance"),
                                               CLASSIFIER_FREE_GUIDANCE_KEYS, "classifier_free_guidance"),
        "attribute_dropout": _section(cfg, "attribute_dropout") or {},
    }
    for key in ("condition_dropout_per_sample", "compression_model_framerate"):
        if cfg.get(key) is not None:
            out[key] = _section(cfg, key)
    segment_duration = (_section(cfg, "dataset") or {}).get("segment_duration")
    if segment_duration is not None:
        out["dataset"] = {"segment_duration": segment_duration}
    if dropped:
        logger.debug("xp.cfg keys that do not concern the model, not used to build it: %s", dropped)
    return out


def load_jasco(src: str | os.PathLike, device: str | torch.device = "cpu", cache_dir: str | os.PathLike | None = None,
               compression_model: EncodecCompressionModel | None = None) -> LoadedJasco:
    """Build a JASCO model from its own `xp.cfg`, load its weights strictly, and get its codec.

    The codec comes from, in order: `compression_model`; the weights embedded in the state_dict
    (drums models: no download); `compression_state_dict.bin` next to the weights; the config's
    `compression_model_checkpoint`.
    """
    state, cfg, path = load_lm_state(src, cache_dir)
    codec = compression_model if compression_model is not None else _codec_for(state, cfg, src, path, cache_dir)
    try:
        model = get_flow_matching_model(model_config(cfg), codec)
    except (KeyError, TypeError, ValueError) as err:
        raise ModelLoadError(f"cannot build the model described by the 'xp.cfg' of {path}: {err!r}") from err
    state = _match_state_keys(state, set(model.state_dict()))
    _load_exactly(model, state, f"the weights in {path} do not fit the model built from its own xp.cfg")
    model.eval().to(device)
    codec.to(device).eval()
    model.cfg = cfg
    return LoadedJasco(model=model, compression_model=codec, cfg=cfg, source=path)


def _load_exactly(model: torch.nn.Module, state: dict[str, torch.Tensor], problem: str, hint: str = "") -> None:
    """Load `state` into `model` strictly; a mismatch raises ModelLoadError `problem: <what differs><hint>`."""
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ModelLoadError(f"{problem}: {len(missing)} weights missing (e.g. {missing[:4]}), {len(unexpected)} "
                             f"unexpected (e.g. {unexpected[:4]}){hint}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ModelLoadError(f"{problem}: {err}") from err


def load_jasco_with_adapter(base: str | os.PathLike | None, adapter: str | os.PathLike,
                            device: str | torch.device = "cpu", cache_dir: str | os.PathLike | None = None,
                            merge: bool = True) -> LoadedJasco:
    """A base model with an adapter folder (`jasco-export --adapter`) applied.

    The network is built from the adapter's own config (it may have a new control or chord
    vocabulary); the base weights load strictly, except the weights the adapter carries whole
    (`jasco_trained.safetensors`), which replace or complete them; then the LoRA adapters are
    added and loaded (all of them), and with `merge` folded into the weights.

    Args:
        base: the base model (hub repo id, export folder, file); None: the one the adapter names.
        adapter: the adapter folder.
        device, cache_dir: as for `load_jasco`.
        merge: fold the adapters in (faster generation); False keeps peft's layers.

    Raises:
        adapters.AdapterError: the folder is incomplete or its adapters do not fit.
        ModelLoadError: the base weights do not fit the adapter's network.
    """
    folder = adapters.read_adapter(adapter)
    base = folder.base_model if base is None else base
    if str(base) != folder.base_model:
        logger.warning("adapter %s was trained on %s; applying it to %s as asked", folder.path,
                       folder.base_model, base)
    state, base_cfg, path = load_lm_state(base, cache_dir)
    cfg = _cfg_from_package({"xp.cfg": folder.cfg_yaml}, folder.path / adapters.POINTER_FILE)
    codec = _codec_for(state, base_cfg, base, path, cache_dir)
    model = get_flow_matching_model(model_config(cfg), codec)
    state = {**_match_state_keys(state, set(model.state_dict())), **folder.trained}
    _load_exactly(model, state, f"the base model {base} does not fit adapter {folder.path}",
                  f"; was it trained on another base ({folder.base_model})?")
    adapters.add_lora(model, folder.config)
    adapters.load_lora_state(model, folder.lora, folder.path / adapters.ADAPTER_WEIGHTS_FILE)
    if merge:
        adapters.merge_lora(model)
    model.eval().to(device)
    codec.to(device).eval()
    model.cfg = cfg
    return LoadedJasco(model=model, compression_model=codec, cfg=cfg, source=folder.path)


def load_jasco_model(src: str | os.PathLike, device: str | torch.device = "cpu",
                     cache_dir: str | os.PathLike | None = None,
                     compression_model: EncodecCompressionModel | None = None) -> FlowMatchingModel:
    """The flow model of a hub repo id / exported folder / `state_dict.bin` / `checkpoint.th`, eval mode, `.cfg` set."""
    return load_jasco(src, device, cache_dir, compression_model).model


# ---------------------------------------------------------------- chords
class ChordVocabularyError(ValueError):
    """A chord vocabulary that does not fit the model: other labels or order than it was trained with."""


class UnknownChordVocabularyError(ChordVocabularyError):
    """The chord vocabulary a model was trained with cannot be determined: its chords are refused."""


# Hub repos of the published JASCO models: their chords use the `published` vocabulary.
PUBLISHED_REPO_PREFIX = "facebook/jasco-"
# A key of the published (audiocraft) training config that jasco's configs never have: a checkpoint
# whose xp.cfg holds it was written by the published code, which indexed chords in the published order.
PUBLISHED_CONFIG_MARKER = "lm_model"


def recorded_chord_vocabulary(cfg: DictConfig | dict | None, source: str | os.PathLike | None = None) -> str | None:
    """The `chords_vocabulary` spec a checkpoint was trained with, None when it cannot be told.

    A jasco checkpoint records it in its xp.cfg (`chords_vocabulary`). The published ones record
    none: a hub id `facebook/jasco-*`, or an xp.cfg written by the published code (it has the
    published config's `lm_model` key, e.g. a downloaded or exported copy), means `published`.
    """
    cfg = cfg or {}
    name = cfg.get("chords_vocabulary")
    if name is not None:
        return str(name)
    if str(source or "").startswith(PUBLISHED_REPO_PREFIX) or PUBLISHED_CONFIG_MARKER in cfg:
        return PUBLISHED_VOCABULARY
    return None


def load_chord_vocabulary(cfg: DictConfig | dict | None = None,
                          chords_mapping_path: str | os.PathLike | ChordVocabulary | None = None,
                          source: str | os.PathLike | None = None) -> ChordVocabulary:
    """The chord vocabulary a model was trained with.

    Which one (`recorded_chord_vocabulary`): the xp.cfg's `chords_vocabulary` (`builtin`,
    `published`, `published:PATH` or `PATH`); else `published` for the published models (hub id
    `facebook/jasco-*` in `source`, or a published xp.cfg). An explicit `chords_mapping_path` (a
    file, or a ChordVocabulary) is checked against a vocabulary the xp.cfg records (one with another
    size or order raises ChordVocabularyError naming both); it overrides the implied `published` one,
    and is the only way to use a model whose vocabulary cannot be determined or whose recorded file
    is not available here.

    Raises:
        ChordVocabularyError: the explicit vocabulary differs from the recorded one.
        UnknownChordVocabularyError: no explicit vocabulary, and the model's cannot be determined
            or its recorded file is missing.
        FileNotFoundError, ValueError: the explicit file is missing or not a vocabulary.
    """
    explicit, given = None, ""
    if isinstance(chords_mapping_path, ChordVocabulary):
        explicit, given = chords_mapping_path, "the given chord vocabulary"
    elif chords_mapping_path is not None:
        explicit, given = ChordVocabulary.from_file(chords_mapping_path), f"chords_mapping_path={chords_mapping_path}"
    name = (cfg or {}).get("chords_vocabulary")
    if name is None:  # nothing recorded: the published models' order, or unknown
        implied = recorded_chord_vocabulary(cfg, source)
        if explicit is not None:
            return explicit
        if implied is not None:
            return ChordVocabulary.from_spec(implied)
        raise UnknownChordVocabularyError(
            f"cannot tell which chord vocabulary {source or 'the model'} was trained with: its xp.cfg records no "
            "chords_vocabulary and it is not a published model; pass chords_mapping_path= (--chords-mapping) "
            "to the vocabulary file it was trained with (docs/CHORDS.md)")
    path = vocabulary_file(name)
    if path is not None and not path.is_file():
        if explicit is not None:
            return explicit
        raise UnknownChordVocabularyError(
            f"{source or 'the model'} was trained with the chord vocabulary chords_vocabulary={name!r} (its xp.cfg), "
            f"and {path} does not exist here: pass chords_mapping_path= (--chords-mapping) to a copy of that file")
    recorded = ChordVocabulary.from_spec(name)
    if explicit is not None:
        mismatch = None
        if explicit.card != recorded.card:
            mismatch = f"{explicit.card} labels vs {recorded.card}"
        else:
            for i, (ours, theirs) in enumerate(zip(explicit.labels, recorded.labels)):
                if ours != theirs and chord_identity(ours) != chord_identity(theirs):
                    mismatch = f"index {i} is {ours!r} in the given one but {theirs!r} in the model's"
                    break
        if mismatch is not None:
            raise ChordVocabularyError(
                f"{given} ({explicit.card} labels) is not the chord vocabulary the model was trained with, "
                f"chords_vocabulary={name!r} recorded in its xp.cfg ({recorded.card} labels): {mismatch}. "
                "Drop chords_mapping_path= (--chords-mapping): the model's own vocabulary is used.")
    return recorded
