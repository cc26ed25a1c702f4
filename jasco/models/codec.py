"""The frozen EnCodec 32 kHz codec: audio <-> normalised latents, and codebook-0 drum codes.

The codec is `transformers.EncodecModel`, held as `self.model` so that published checkpoints load
with their `...compression_model.model.*` keys; the wrapper adds no parameters or buffers.

Shapes: `B` batch, `C` audio channels (1), `N` samples, `T` latent frames (`ceil(N / hop)`, 50 per
second at 32 kHz), `D` latent dim (128), `K` codebooks.
"""
from __future__ import annotations

import copy
import functools
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

import torch
from torch import nn
from transformers import EncodecConfig, EncodecModel

from jasco import environment, hub

_HUB_HELP = (
    "On a machine with internet run `huggingface-cli download {repo} --local-dir DIR`, copy DIR "
    "here and pass its path instead of the repo id (a folder with config.json and the weights)."
)


# The codec of the published models and the latent normalisation they were trained with.
DEFAULT_CODEC_SOURCE = "//pretrained/facebook/encodec_32khz"
PUBLISHED_LATENT_MEAN = -0.0074
PUBLISHED_LATENT_STD = 4.0102
DEBUG_CODEC = "debug"


def codec_source_name(source: str | os.PathLike | None) -> str:
    """The codec a `compression_model_checkpoint` value names: `debug`, a hub repo id or a folder.

    Accepted values: `debug` / `//debug` (a tiny random codec for tests), `//pretrained/NAME` or
    `NAME` (a hub repo id or a local folder); None means the published codec.
    """
    text = str(source) if source is not None and str(source) else DEFAULT_CODEC_SOURCE
    if text in (DEBUG_CODEC, "//" + DEBUG_CODEC):
        return DEBUG_CODEC
    return text.removeprefix("//pretrained/")


def is_hub_codec(source: str | os.PathLike | None) -> bool:
    """True when a codec source names a hub repo id (not `debug`, not an existing local folder)."""
    name = codec_source_name(source)
    return name != DEBUG_CODEC and not Path(name).expanduser().is_dir()


def encodec_32khz_config(**overrides) -> EncodecConfig:
    """The published `facebook/encodec_32khz` config (docs/MODEL.md, "Codec latents"), with optional overrides."""
    fields = dict(
        sampling_rate=32000, audio_channels=1, hidden_size=128, num_filters=64,
        num_residual_layers=1, upsampling_ratios=[8, 5, 4, 4], norm_type="weight_norm",
        kernel_size=7, last_kernel_size=7, residual_kernel_size=3, dilation_growth_rate=2,
        use_causal_conv=False, pad_mode="reflect", compress=2, num_lstm_layers=2,
        trim_right_ratio=1.0, codebook_size=2048, codebook_dim=128, use_conv_shortcut=False,
        normalize=False, target_bandwidths=[2.2],
    )
    fields.update(overrides)
    return EncodecConfig(**fields)


def bandwidth_for_codebooks(num_codebooks: int, sampling_rate: int, hop_length: int,
                            codebook_size: int) -> float:
    """Target bandwidth (kbps) for which transformers' EncodecConfig gives `num_codebooks`."""
    frame_rate = math.ceil(sampling_rate / hop_length)  # as EncodecConfig.frame_rate
    bits = frame_rate * math.ceil(math.log2(codebook_size))
    bandwidth = num_codebooks * bits / 1000
    # EncodecConfig floors 1000 * bw / bits: nudge up past float round-off so the floor is exact.
    while int(1000 * bandwidth // bits) < num_codebooks:
        bandwidth = math.nextafter(bandwidth, math.inf)
    return bandwidth


def convert_weight_norm_keys(
    state_dict: dict[str, torch.Tensor],
    style: Literal["parametrizations", "legacy"] | None = None,
) -> dict[str, torch.Tensor]:
    """Rename weight-norm keys between `weight_g/weight_v` (legacy) and `parametrizations.weight.original0/1`.

    Args:
        state_dict: any state_dict; keys without weight-norm parameters are kept unchanged.
        style: target naming; None picks the one the installed torch/transformers produce.
    """
    if style is None:
        has_new = hasattr(nn.utils, "parametrizations") and hasattr(nn.utils.parametrizations, "weight_norm")
        style = "parametrizations" if has_new else "legacy"
    if style == "parametrizations":
        renames = {".weight_g": ".parametrizations.weight.original0",
                   ".weight_v": ".parametrizations.weight.original1"}
    elif style == "legacy":
        renames = {".parametrizations.weight.original0": ".weight_g",
                   ".parametrizations.weight.original1": ".weight_v"}
    else:
        raise ValueError(f"style must be 'parametrizations', 'legacy' or None, got {style!r}.")
    out = {}
    for key, value in state_dict.items():
        for old, new in renames.items():
            if key.endswith(old):
                key = key[: -len(old)] + new
                break
        out[key] = value
    return out


def _conv_weight_shape(sd: dict[str, torch.Tensor], prefix: str) -> torch.Size | None:
    """Shape of the (direction) weight of the conv under `prefix`, whatever the weight-norm naming."""
    for suffix in ("parametrizations.weight.original1", "weight_v", "weight"):
        if prefix + suffix in sd:
            return sd[prefix + suffix].shape
    return None


def config_from_state_dict(state_dict: dict[str, torch.Tensor], **overrides) -> EncodecConfig:
    """Derive the EncodecConfig of an `EncodecModel` state_dict from its weights' shapes.

    Fields that weights cannot tell (sample rate, padding mode, causality, ...) default to the
    32 kHz config; `overrides` sets them. Overriding a weight-derived field with a different value
    is an error.
    """
    sd = state_dict
    first = _conv_weight_shape(sd, "encoder.layers.0.conv.")
    if first is None:
        raise ValueError(
            "state_dict is not an EncodecModel state_dict: no 'encoder.layers.0.conv' weight. "
            "If its keys carry a prefix (e.g. '...compression_model.model.'), strip it first."
        )
    enc_convs = _indices(sd, r"encoder\.layers\.(\d+)\.conv\.")
    enc_blocks = _indices(sd, r"encoder\.layers\.(\d+)\.block\.")
    lstm_layers = _indices(sd, r"encoder\.layers\.\d+\.lstm\.weight_ih_l(\d+)$")
    quantizers = _indices(sd, r"quantizer\.layers\.(\d+)\.codebook\.embed$")
    if len(enc_convs) < 3 or not lstm_layers or not quantizers:
        raise ValueError(
            "state_dict is missing EncodecModel parts (downsampling convs, encoder LSTM or "
            f"quantizer codebooks); found conv layers {enc_convs}, LSTM layers {sorted(lstm_layers)}, "
            f"codebooks {sorted(quantizers)}."
        )
    last = _conv_weight_shape(sd, f"encoder.layers.{enc_convs[-1]}.conv.")
    # Encoder downsampling convs have kernel 2 * stride and run the ratios in reverse order.
    strides = [_conv_weight_shape(sd, f"encoder.layers.{i}.conv.")[2] // 2 for i in enc_convs[1:-1]]
    num_res = len([i for i in enc_blocks if i < enc_convs[1]])
    fields: dict = {}
    if num_res:
        res_conv = _conv_weight_shape(sd, f"encoder.layers.{min(enc_blocks)}.block.1.conv.")
        fields.update(residual_kernel_size=res_conv[2], compress=res_conv[1] // res_conv[0])
    embed = sd["quantizer.layers.0.codebook.embed"]
    fields.update(
        audio_channels=first[1], num_filters=first[0], kernel_size=first[2],
        hidden_size=last[0], last_kernel_size=last[2], upsampling_ratios=strides[::-1],
        num_residual_layers=num_res, num_lstm_layers=len(lstm_layers),
        use_conv_shortcut=any(".shortcut." in k for k in sd),
        norm_type="time_group_norm" if "encoder.layers.0.norm.weight" in sd else "weight_norm",
        codebook_size=embed.shape[0], codebook_dim=embed.shape[1],
    )
    for name, value in overrides.items():
        if name in fields and fields[name] != value:
            raise ValueError(f"override {name}={value!r} contradicts the weights, "
                             f"which give {fields[name]!r}.")
    num_q = max(quantizers) + 1
    if "target_bandwidths" not in overrides:
        fields["target_bandwidths"] = [bandwidth_for_codebooks(
            num_q, overrides.get("sampling_rate", 32000), math.prod(fields["upsampling_ratios"]),
            fields["codebook_size"])]
    config = encodec_32khz_config(**{**overrides, **fields})
    if config.num_quantizers != num_q:
        raise ValueError(f"target_bandwidths={config.target_bandwidths} gives {config.num_quantizers} "
                         f"codebooks but the weights hold {num_q}.")
    return config


_Method = TypeVar("_Method", bound=Callable)


def full_precision(method: _Method) -> _Method:
    """Run a codec method without gradients and in float32, whatever autocast the caller is in.

    The codes and latents the flow model sees must not depend on the caller's mixed precision:
    training (inside the solver's autocast), inference and the caches all get the same bits.
    Autocast is switched off for the device the codec's weights sit on (autocast on another device
    type does not reach them).
    """
    @functools.wraps(method)
    def wrapper(self: EncodecCompressionModel, *args, **kwargs):
        device = next(self.model.parameters()).device
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            return method(self, *args, **kwargs)
    return wrapper  # type: ignore[return-value]


def _indices(sd: dict[str, torch.Tensor], pattern: str) -> list[int]:
    """Sorted distinct integers captured by `pattern` (one group) over the keys of `sd`."""
    return sorted({int(m.group(1)) for key in sd if (m := re.match(pattern, key))})


class EncodecCompressionModel(nn.Module):
    """Frozen EnCodec wrapper: wav <-> normalised latents, and residual-quantizer codes.

    Args:
        model: the transformers codec (kept as `self.model`, the checkpoint key prefix).
        latent_mean: mean removed from the raw encoder latents.
        latent_std: std the raw latents are divided by.
        frozen: freeze the codec (no gradients, eval mode); JASCO always does.
    """

    def __init__(self, model: EncodecModel, latent_mean: float = PUBLISHED_LATENT_MEAN, latent_std: float = PUBLISHED_LATENT_STD,
                 frozen: bool = True) -> None:
        super().__init__()
        if latent_std <= 0:
            raise ValueError(f"latent_std must be > 0, got {latent_std}.")
        self.model = model
        _keep_conv_geometry_on_host(model)
        # Plain floats, not buffers: the checkpoint must hold exactly EncodecModel's keys.
        self.latent_mean = float(latent_mean)
        self.latent_std = float(latent_std)
        # (num_samples, num_codebooks) -> (weights_state(), codes [K, T]): see `silence_codes`.
        self._silence: dict[tuple[int, int], tuple[tuple, torch.Tensor]] = {}
        self.frozen = False
        if frozen:
            self.freeze()

    # ---- constructors ----------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_dir: str, cache_dir: str | None = None,
                        **kwargs) -> EncodecCompressionModel:
        """Load from a local folder (config.json + weights) or a Hugging Face repo id.

        Args:
            name_or_dir: a folder written by `save_pretrained`, or a repo id such as
                `facebook/encodec_32khz`.
            cache_dir: hub cache folder; defaults to `$JASCO_CACHE_DIR` when set.
            **kwargs: forwarded to the constructor (`latent_mean`, `latent_std`, `frozen`).

        Raises:
            hub.HubUnavailableError: offline or the hub is unreachable, and the codec is
                not cached (raised at once, saying what to do).
        """
        path = Path(name_or_dir).expanduser()
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise FileNotFoundError(
                    f"{path} has no config.json: a codec folder needs the config.json and weights "
                    "written by EncodecModel.save_pretrained (or downloaded from the hub)."
                )
            try:
                model, info = EncodecModel.from_pretrained(str(path), output_loading_info=True)
            except OSError as err:
                raise FileNotFoundError(f"could not load the codec weights from {path}: {err}") from err
            _check_loading_info(info, str(path))
            return cls(model, **kwargs)
        if path.exists() or name_or_dir.startswith((".", "/", "~")) or name_or_dir.count("/") > 1:
            raise FileNotFoundError(
                f"codec folder {name_or_dir} does not exist (give a folder with config.json + weights, "
                "or a Hugging Face repo id such as facebook/encodec_32khz)."
            )
        cache_dir = cache_dir if cache_dir is not None else environment.cache_dir()
        try:  # offline or unreachable hub: the cache only, failing at once (HubUnavailableError)
            model, info = hub.from_hub(
                lambda local_only: EncodecModel.from_pretrained(name_or_dir, cache_dir=cache_dir,
                                                                output_loading_info=True,
                                                                local_files_only=local_only),
                name_or_dir, what="the codec", cache=cache_dir,
                local_fix="pass DIR instead of the repo id (a folder with config.json and the weights)")
        except OSError as err:
            raise RuntimeError(
                f"could not download the codec {name_or_dir!r} from the Hugging Face hub and it is "
                f"not in the cache ({cache_dir or 'default HF cache'}): {err}\n"
                + _HUB_HELP.format(repo=name_or_dir)
            ) from err
        _check_loading_info(info, name_or_dir)
        return cls(model, **kwargs)

    @classmethod
    def from_source(cls, source: str | os.PathLike | None, cache_dir: str | None = None,
                    **kwargs) -> EncodecCompressionModel:
        """The codec a `compression_model_checkpoint` value names (see `codec_source_name`)."""
        name = codec_source_name(source)
        if name == DEBUG_CODEC:
            return cls.debug(**kwargs)
        return cls.from_pretrained(name, cache_dir=cache_dir, **kwargs)

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor], prefix: str = "",
                        config: EncodecConfig | None = None, **kwargs) -> EncodecCompressionModel:
        """Build the codec from weights alone, e.g. those embedded in a JASCO checkpoint.

        Args:
            state_dict: EncodecModel weights (either weight-norm naming); keys outside `prefix` are ignored.
            prefix: key prefix to select and strip, e.g.
                `condition_provider.conditioners.self_wav.compression_model.model.`.
            config: the codec config; derived from the weights' shapes when None.
            **kwargs: forwarded to the constructor.
        """
        sd = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not sd:
            raise ValueError(f"no key of the state_dict starts with prefix {prefix!r}.")
        sd = convert_weight_norm_keys(sd)
        config = config if config is not None else config_from_state_dict(sd)
        model = EncodecModel(config)
        model.load_state_dict(_drop_conv_geometry(model, sd, prefix), strict=True)
        return cls(model, **kwargs)

    @classmethod
    def debug(cls, seed: int = 0, num_filters: int = 4, num_codebooks: int = 1, codebook_size: int = 2048,
              num_lstm_layers: int = 1, **kwargs) -> EncodecCompressionModel:
        """A tiny random codec with the 32 kHz / 50 fps / 128-d layout, deterministic per `seed`.

        The weights are the same bits whatever torch's thread count (so the latent-cache identity,
        `jasco.data.latents.codec_identity`, of a cache prepared with 4 threads matches a training
        run with 1): the layers are initialised from the CPU generator seeded with `seed` (torch's
        CPU samplers draw serially), inside `fork_rng` so the caller's RNG state is untouched, and
        the codebooks, which come from the encoder's own output, are computed in float64 and rounded
        (`_init_debug_codebooks`) so that thread-dependent summation order cannot reach them.
        """
        hop = 8 * 5 * 4 * 4
        config = encodec_32khz_config(
            num_filters=num_filters, num_lstm_layers=num_lstm_layers, codebook_size=codebook_size,
            target_bandwidths=[bandwidth_for_codebooks(num_codebooks, 32000, hop, codebook_size)],
        )
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # the CPU generator only: no CUDA RNG is touched
            model = EncodecModel(config)
        _init_debug_codebooks(model, seed)
        return cls(model, **kwargs)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the codec (config.json + weights) so that `from_pretrained(directory)` reloads it."""
        self.model.save_pretrained(str(directory))

    # ---- properties -------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        """Audio sample rate in Hz."""
        return int(self.model.config.sampling_rate)

    @property
    def hop_length(self) -> int:
        """Audio samples per latent frame."""
        return int(math.prod(self.model.config.upsampling_ratios))

    @property
    def frame_rate(self) -> float:
        """Latent frames per second."""
        return self.sample_rate / self.hop_length

    @property
    def latent_dim(self) -> int:
        """Latent width D."""
        return int(self.model.config.hidden_size)

    @property
    def num_codebooks(self) -> int:
        """Number of residual-quantizer codebooks."""
        return len(self.model.quantizer.layers)

    @property
    def cardinality(self) -> int:
        """Codes per codebook."""
        return int(self.model.config.codebook_size)

    @property
    def channels(self) -> int:
        """Audio channels."""
        return int(self.model.config.audio_channels)

    def freeze(self) -> EncodecCompressionModel:
        """Disable gradients and switch to eval mode, for good."""
        for param in self.model.parameters():
            param.requires_grad_(False)
        self.frozen = True
        return self.train(False)

    def train(self, mode: bool = True) -> EncodecCompressionModel:
        """Set train mode; a frozen codec stays in eval mode whatever its parent asks."""
        return super().train(mode and not getattr(self, "frozen", False))

    # ---- latents ------------------------------------------------------------------------------
    def normalize(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw latents -> normalised latents `(x - mean) / std`."""
        return (latents - self.latent_mean) / self.latent_std

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> raw latents `x * std + mean`."""
        return latents * self.latent_std + self.latent_mean

    @full_precision
    def encode_latents(self, wav: torch.Tensor) -> torch.Tensor:
        """Raw encoder latents before quantisation: wav `[B, C, N]` -> `[B, T, D]`, `T = ceil(N / hop)`.

        transformers' encoder pads every strided conv at the end (`ceil` framing), so it already
        yields `ceil(N / hop)` frames without padding here.
        """
        self._check_wav(wav)
        param = next(self.model.parameters())
        latents = self.model.encoder(wav.to(device=param.device, dtype=param.dtype))  # [B, D, T]
        return latents.transpose(1, 2)  # [B, T, D]

    @full_precision
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """Normalised latents the flow model trains on: wav `[B, C, N]` -> `[B, T, D]`."""
        return self.normalize(self.encode_latents(wav))

    @full_precision
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw (un-normalised) latents `[B, T, D]` -> wav `[B, C, T * hop]`."""
        self._check_latents(latents, "latents")
        param = next(self.model.parameters())
        return self.model.decoder(latents.transpose(1, 2).to(device=param.device, dtype=param.dtype))

    @full_precision
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents `[B, T, D]` -> wav `[B, C, T * hop]`."""
        self._check_latents(latents, "latents")
        return self.decode_latents(self.denormalize(latents))

    # ---- codes --------------------------------------------------------------------------------
    @full_precision
    def codes_from_latents(self, latents: torch.Tensor, num_codebooks: int = 1) -> torch.Tensor:
        """Residual-quantise raw latents `[B, T, D]` with the first K codebooks -> codes `[B, K, T]`."""
        self._check_latents(latents, "latents")
        if not 1 <= num_codebooks <= self.num_codebooks:
            raise ValueError(f"num_codebooks must be in 1..{self.num_codebooks}, got {num_codebooks}.")
        residual = latents.transpose(1, 2).to(self.model.quantizer.layers[0].codebook.embed)  # [B, D, T]
        codes = []
        for layer in self.model.quantizer.layers[:num_codebooks]:
            indices = layer.encode(residual)  # [B, T]
            residual = residual - layer.decode(indices)
            codes.append(indices)
        return torch.stack(codes, dim=1)  # [B, K, T]

    @full_precision
    def encode_codes(self, wav: torch.Tensor, num_codebooks: int = 1) -> torch.Tensor:
        """wav `[B, C, N]` -> codes `[B, K, T]` (K=1: the codebook-0 drum codes)."""
        return self.codes_from_latents(self.encode_latents(wav), num_codebooks)

    @full_precision
    def silence_codes(self, num_samples: int, num_codebooks: int = 1) -> torch.Tensor:
        """Codes `[K, T]` of `num_samples` samples of silence, encoded once per length and weights.

        The drums conditioner gives null rows these codes (published: zero audio through the codec).
        The result is reused while the codec's weights stay the same tensors, unmodified, on the same
        device (`weights_state`); moving the codec or loading other weights encodes again.
        """
        key = (int(num_samples), int(num_codebooks))
        state = self.weights_state()
        cached = self._silence.get(key)
        if cached is None or cached[0] != state:
            param = next(self.model.parameters())
            silence = torch.zeros(1, self.channels, key[0], device=param.device)
            cached = self._silence[key] = (state, self.encode_codes(silence, num_codebooks)[0])
        return cached[1]

    def weights_state(self) -> tuple:
        """What identifies the codec's current weights without reading them: each parameter's and
        buffer's storage, in-place version counter, device and dtype (no host-device sync)."""
        tensors = [*self.model.parameters(), *self.model.buffers()]
        return tuple((t.data_ptr(), t._version, t.device, t.dtype) for t in tensors)

    @full_precision
    def dequantize_codebook0(self, codes: torch.Tensor, check: bool = True) -> torch.Tensor:
        """Codebook-0 lookup: codes `[B, T]` -> raw latents `[B, T, D]` (`embed[codes]`).

        `check=False` skips the range check, for codes already checked or made by this codec.
        """
        if codes.dim() != 2:
            raise ValueError(f"codes must be [B, T], got shape {tuple(codes.shape)}.")
        if check:
            self.check_codes(codes)
        embed = self.model.quantizer.layers[0].codebook.embed  # [cardinality, D]
        return embed[codes.to(device=embed.device, dtype=torch.long)]

    @full_precision
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes `[B, K, T]` -> wav `[B, C, T * hop]` (sum of the K codewords, then the decoder)."""
        if codes.dim() != 3 or not 1 <= codes.shape[1] <= self.num_codebooks:
            raise ValueError(f"codes must be [B, K, T] with 1 <= K <= {self.num_codebooks}, "
                             f"got shape {tuple(codes.shape)}.")
        self.check_codes(codes)
        device = self.model.quantizer.layers[0].codebook.embed.device
        codes = codes.transpose(0, 1).to(device=device, dtype=torch.long)  # [K, B, T], the RVQ layout
        latents = self.model.quantizer.decode(codes)  # [B, D, T]
        return self.decode_latents(latents.transpose(1, 2))

    # ---- checks -------------------------------------------------------------------------------
    def _check_wav(self, wav: torch.Tensor) -> None:
        if wav.dim() != 3 or wav.shape[1] != self.channels:
            raise ValueError(f"wav must be [B, {self.channels}, N] at {self.sample_rate} Hz, "
                             f"got shape {tuple(wav.shape)}; add the batch/channel axes or downmix.")
        if wav.shape[-1] == 0:
            raise ValueError("wav is empty (N = 0 samples).")

    def _check_latents(self, latents: torch.Tensor, name: str) -> None:
        if latents.dim() != 3 or latents.shape[-1] != self.latent_dim:
            raise ValueError(f"{name} must be [B, T, {self.latent_dim}], got shape {tuple(latents.shape)}.")

    def check_codes(self, codes: torch.Tensor, what: str = "codes") -> None:
        """Raise ValueError unless `codes` are integers in `[0, cardinality)`.

        CPU tensors are checked at once. On an accelerator the range is checked with
        `torch._assert_async`, which does not wait for the device (a training step does not stall on
        it): a failure shows at a later kernel launch, with this message.
        """
        if codes.is_floating_point() or codes.is_complex():
            raise ValueError(f"{what} must be an integer tensor, got {codes.dtype}.")
        if not codes.numel():
            return
        if codes.device.type != "cpu":
            inside = (codes.min() >= 0) & (codes.max() < self.cardinality)
            torch._assert_async(inside, f"{what} must lie in [0, {self.cardinality})")
            return
        low, high = int(codes.min()), int(codes.max())
        if low < 0 or high >= self.cardinality:
            raise ValueError(f"{what} must lie in [0, {self.cardinality}), got range [{low}, {high}].")


def _round_mantissa(x: torch.Tensor, bits: int = 12) -> torch.Tensor:
    """Round float64 values to `bits` mantissa bits (exact arithmetic: frexp, round, ldexp)."""
    mantissa, exponent = torch.frexp(x)  # x = mantissa * 2**exponent, 0.5 <= |mantissa| < 1
    return torch.ldexp(torch.round(mantissa * 2.0 ** bits) / 2.0 ** bits, exponent)


@torch.no_grad()
def _init_debug_codebooks(model: EncodecModel, seed: int, num_frames: int = 64) -> None:
    """Give a random codec codewords near its own latents, so that codes vary with the input.

    transformers initialises codebooks to zeros (every code 0), and plain random codewords sit far
    from the latents of a random encoder (again a single code). Codebook 0 gets the latents of
    seeded noise at random loudness plus jittered copies; later codebooks cover the residuals.

    Thread-count independence: the encoder pass over the noise, and the mean/std of its latents,
    sum in an order that depends on torch's thread count (BLAS/oneDNN blocking), which changed
    the last bits of the codebooks and so the codec's weight hash. They are computed in float64 on a
    copy of the encoder and rounded to 12 mantissa bits, far above float64 round-off, so every
    thread count gives the same codewords (all random draws come from one seeded CPU generator).
    """
    gen = torch.Generator().manual_seed(seed)
    hop = int(math.prod(model.config.upsampling_ratios))
    amp = torch.logspace(-2, 0, num_frames)[torch.randperm(num_frames, generator=gen)]
    noise = torch.randn(1, model.config.audio_channels, num_frames * hop, generator=gen)
    noise = noise * amp.repeat_interleave(hop)  # per-frame loudness
    encoder = copy.deepcopy(model.encoder).double()
    latents = _round_mantissa(encoder(noise.double())[0].t())  # [F, D], exact from here on
    mean = _round_mantissa(latents.mean(0)).float()
    std = _round_mantissa(latents.std(0)).float()
    latents = latents.float()
    for i, layer in enumerate(model.quantizer.layers):
        codebook = layer.codebook
        jitter = torch.randn(codebook.embed.shape, generator=gen) * 0.1 * std
        embed = mean + jitter if i == 0 else jitter
        if i == 0:
            count = min(num_frames, embed.shape[0])
            embed[:count] = latents[:count]
        codebook.embed.copy_(embed)
        codebook.embed_avg.copy_(embed)
        codebook.cluster_size.fill_(1.0)


CONV_GEOMETRY = ("stride", "kernel_size", "padding_total")


def _keep_conv_geometry_on_host(model: EncodecModel) -> None:
    """Make the conv geometry buffers of transformers' EncodecConv1d plain CPU attributes.

    Each conv computes its padding from these 0-d integer tensors and reads the result on the host;
    as buffers they would follow the codec to an accelerator and every conv of every encoding would
    wait for the device. As plain attributes (non-persistent buffers: no checkpoint holds them) they
    stay on the CPU wherever the codec goes, and DDP/FSDP do not see them.
    """
    for module in model.modules():
        if not all(name in module._buffers for name in CONV_GEOMETRY):
            continue
        conv = module.conv  # the values, from the conv itself (the buffers may be on the meta device)
        kernel = (conv.kernel_size[0] - 1) * conv.dilation[0] + 1  # with dilation, as transformers computes it
        values = {"stride": conv.stride[0], "kernel_size": kernel, "padding_total": kernel - conv.stride[0]}
        for name, value in values.items():
            del module._buffers[name]
            module._non_persistent_buffers_set.discard(name)
            object.__setattr__(module, name, torch.tensor(value, dtype=torch.int64))


def _drop_conv_geometry(model: EncodecModel, sd: dict[str, torch.Tensor],
                        prefix: str) -> dict[str, torch.Tensor]:
    """Remove conv geometry buffers (stride, kernel_size, padding_total) after checking them.

    Some transformers versions saved them; recent ones rebuild them from the config, so a strict
    load would reject them. They are dropped only when they agree with the model.
    """
    expected = model.state_dict()
    out = dict(sd)
    for key in sd:
        owner, _, name = key.rpartition(".")
        if key in expected or name not in CONV_GEOMETRY:
            continue
        value = getattr(model.get_submodule(owner), name)
        if not torch.equal(sd[key].to(torch.int64), value.to(torch.int64)):
            raise ValueError(f"state_dict entry {prefix}{key}={sd[key].tolist()} contradicts the codec "
                             f"config, which gives {value.tolist()}.")
        del out[key]
    return out


def _check_loading_info(info: dict, source: str) -> None:
    """Raise when a pretrained codec left weights unloaded or carried unknown ones."""
    missing, unexpected = info.get("missing_keys") or [], info.get("unexpected_keys") or []
    if missing or unexpected:
        raise RuntimeError(f"codec weights in {source} do not match its config: missing "
                           f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]} "
                           "(is it an EncodecModel checkpoint?).")
