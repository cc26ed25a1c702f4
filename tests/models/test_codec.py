"""Tests for jasco.models.codec (tiny random codecs only; no download)."""
from __future__ import annotations

import json
import math
import time

import huggingface_hub.constants
import pytest
import torch
from helpers_codec import (
    CODEC_PREFIX,
    REF_PATH,
    SHAPES_PATH,
    noise_wav,
    ref_codec_state_dict,
    tiny_codec,
)
from transformers import EncodecModel

from jasco import hub
from jasco.models.codec import (
    EncodecCompressionModel,
    bandwidth_for_codebooks,
    config_from_state_dict,
    convert_weight_norm_keys,
    encodec_32khz_config,
)

# Fields a config derived from weights must reproduce.
SHAPE_FIELDS = ("audio_channels", "num_filters", "kernel_size", "hidden_size", "last_kernel_size",
                "upsampling_ratios", "num_residual_layers", "num_lstm_layers", "use_conv_shortcut",
                "norm_type", "codebook_size", "codebook_dim", "residual_kernel_size", "compress",
                "sampling_rate", "use_causal_conv", "pad_mode", "normalize")


@pytest.fixture(scope="module")
def codec() -> EncodecCompressionModel:
    return tiny_codec(seed=0)


def _meta_32khz() -> EncodecModel:
    with torch.device("meta"):
        return EncodecModel(encodec_32khz_config())


# ---- config and layout -------------------------------------------------------------------------
def test_32khz_config_matches_published_state_dict_shapes():
    if not SHAPES_PATH.is_file():
        pytest.skip(f"{SHAPES_PATH} not available")
    expected = json.loads(SHAPES_PATH.read_text())["encodec_32khz_hf_transformers"]["state_dict"]
    model = _meta_32khz()
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert got == expected
    assert model.config.num_quantizers == 4 and model.config.frame_rate == 50
    wrapper = EncodecCompressionModel(model)
    assert (wrapper.frame_rate, wrapper.num_codebooks, wrapper.cardinality, wrapper.hop_length) == (50.0, 4, 2048, 640)


def test_wrapper_adds_no_parameters_or_buffers(codec):
    inner = {"model." + k for k in codec.model.state_dict()}
    assert set(codec.state_dict()) == inner
    assert sum(1 for _ in codec.parameters()) == sum(1 for _ in codec.model.parameters())


def test_properties_of_debug_codec(codec):
    assert (codec.sample_rate, codec.frame_rate, codec.latent_dim) == (32000, 50.0, 128)
    assert (codec.num_codebooks, codec.cardinality, codec.channels, codec.hop_length) == (1, 2048, 1, 640)
    assert isinstance(codec.frame_rate, float)


def test_frozen_by_default_and_stays_in_eval(codec):
    assert not any(p.requires_grad for p in codec.parameters())
    parent = torch.nn.Sequential(codec)
    parent.train()
    assert not codec.training and not codec.model.training
    unfrozen = EncodecCompressionModel(codec.model, frozen=False)
    unfrozen.train()
    assert unfrozen.training
    codec.model.eval()  # shared with `unfrozen`; restore for the other tests


def test_debug_is_deterministic_per_seed():
    a, b, c = tiny_codec(seed=3), tiny_codec(seed=3), tiny_codec(seed=4)
    for (key, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), key
    weight = "model.encoder.layers.0.conv.parametrizations.weight.original1"
    assert not torch.equal(a.state_dict()[weight], c.state_dict()[weight])


@pytest.mark.parametrize("num_codebooks,codebook_size", [(1, 2048), (4, 2048), (2, 1024), (3, 512), (8, 256)])
def test_bandwidth_for_codebooks_gives_exact_count(num_codebooks, codebook_size):
    bw = bandwidth_for_codebooks(num_codebooks, 32000, 640, codebook_size)
    config = encodec_32khz_config(codebook_size=codebook_size, target_bandwidths=[bw])
    assert config.num_quantizers == num_codebooks


# ---- latents -------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_samples", [1, 639, 640, 641, 1280, 3201])
def test_encode_decode_shapes(codec, num_samples):
    wav = noise_wav(batch=2, num_samples=num_samples)
    latents = codec.encode(wav)
    frames = math.ceil(num_samples / 640)
    assert latents.shape == (2, frames, 128)
    assert codec.decode(latents).shape == (2, 1, frames * 640)


def test_encode_is_normalised_pre_quantisation_encoder_output(codec):
    wav = noise_wav(batch=2, num_samples=3200)
    raw = codec.encode_latents(wav)
    torch.testing.assert_close(raw, codec.model.encoder(wav).transpose(1, 2))
    torch.testing.assert_close(codec.encode(wav), (raw + 0.0074) / 4.0102)
    torch.testing.assert_close(codec.decode(codec.encode(wav)), codec.model.decoder(raw.transpose(1, 2)))
    assert not codec.encode(wav).requires_grad


def test_normalize_denormalize_round_trip():
    codec = EncodecCompressionModel(tiny_codec().model, latent_mean=0.5, latent_std=2.0)
    x = torch.tensor([0.5, 2.5, -1.5])
    torch.testing.assert_close(codec.normalize(x), torch.tensor([0.0, 1.0, -1.0]))
    y = torch.randn(2, 7, 128)
    torch.testing.assert_close(codec.denormalize(codec.normalize(y)), y)
    torch.testing.assert_close(codec.normalize(codec.denormalize(y)), y)


# ---- codes ---------------------------------------------------------------------------------------
def test_dequantize_codebook0_is_embedding_lookup_and_codes_round_trip(codec):
    codes = torch.randint(0, codec.cardinality, (2, 50), generator=torch.Generator().manual_seed(0))
    latents = codec.dequantize_codebook0(codes)
    embed = codec.model.quantizer.layers[0].codebook.embed
    assert latents.shape == (2, 50, 128)
    torch.testing.assert_close(latents, embed[codes])
    torch.testing.assert_close(latents, codec.model.quantizer.decode(codes[None]).transpose(1, 2))
    # A codeword's nearest neighbour is itself.
    assert torch.equal(codec.codes_from_latents(latents)[:, 0], codes)


def test_encode_codes_equals_codes_from_encoder_latents(codec):
    wav = noise_wav(batch=2, num_samples=32000)
    codes = codec.encode_codes(wav)
    assert codes.shape == (2, 1, 50) and codes.dtype == torch.long
    assert torch.equal(codes, codec.codes_from_latents(codec.encode_latents(wav)))
    assert codes.unique().numel() > 5  # the debug codebook is spread around its latents


def test_multi_codebook_codes_match_transformers_quantizer():
    codec = tiny_codec(seed=1, num_codebooks=3)
    assert codec.num_codebooks == 3
    raw = codec.encode_latents(noise_wav(batch=2, num_samples=6400))
    codes = codec.codes_from_latents(raw, num_codebooks=3)  # [B, K, T]
    assert torch.equal(codes, codec.model.quantizer.encode(raw.transpose(1, 2)).transpose(0, 1))
    assert torch.equal(codes[:, :1], codec.codes_from_latents(raw, num_codebooks=1))
    quantized = codec.model.quantizer.decode(codes.transpose(0, 1))
    torch.testing.assert_close(codec.decode_codes(codes), codec.model.decoder(quantized))


def test_decode_codes_uses_codebook0_lookup(codec):
    codes = torch.randint(0, codec.cardinality, (2, 1, 10), generator=torch.Generator().manual_seed(1))
    wav = codec.decode_codes(codes)
    assert wav.shape == (2, 1, 6400)
    expected = codec.model.decoder(codec.dequantize_codebook0(codes[:, 0]).transpose(1, 2))
    torch.testing.assert_close(wav, expected)


def test_user_errors_are_explicit(codec):
    with pytest.raises(ValueError, match=r"wav must be \[B, 1, N\]"):
        codec.encode(torch.zeros(1, 32000))
    with pytest.raises(ValueError, match=r"wav must be \[B, 1, N\]"):
        codec.encode(torch.zeros(1, 2, 32000))
    with pytest.raises(ValueError, match=r"latents must be \[B, T, 128\]"):
        codec.decode(torch.zeros(1, 128, 5))
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 2048\)"):
        codec.dequantize_codebook0(torch.full((1, 3), 2048))
    with pytest.raises(ValueError, match="integer"):
        codec.dequantize_codebook0(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"num_codebooks must be in 1..1"):
        codec.encode_codes(noise_wav(1, 640), num_codebooks=2)
    with pytest.raises(ValueError, match=r"codes must be \[B, K, T\]"):
        codec.decode_codes(torch.zeros(1, 2, 5, dtype=torch.long))


# ---- loading -------------------------------------------------------------------------------------
def test_save_pretrained_then_from_pretrained_gives_identical_outputs(codec, tmp_path):
    codec.save_pretrained(tmp_path / "codec")
    loaded = EncodecCompressionModel.from_pretrained(str(tmp_path / "codec"), latent_std=2.0)
    assert loaded.latent_std == 2.0 and not loaded.training
    wav = noise_wav(batch=1, num_samples=6400)
    torch.testing.assert_close(loaded.encode_latents(wav), codec.encode_latents(wav), rtol=0, atol=0)
    torch.testing.assert_close(loaded.encode_codes(wav), codec.encode_codes(wav), rtol=0, atol=0)
    latents = torch.randn(1, 5, 128)
    torch.testing.assert_close(loaded.decode_latents(latents), codec.decode_latents(latents), rtol=0, atol=0)


def test_from_pretrained_bad_local_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        EncodecCompressionModel.from_pretrained(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        EncodecCompressionModel.from_pretrained(str(tmp_path / "empty"))


@pytest.mark.parametrize("huggingface_hub_knows", [True, False])
def test_from_pretrained_offline_repo_id_explains_how_to_get_it(tmp_path, monkeypatch, huggingface_hub_knows):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if huggingface_hub_knows:  # set before huggingface_hub was imported; otherwise jasco alone reads it
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("JASCO_CACHE_DIR", str(tmp_path / "cache"))
    begin = time.monotonic()
    with pytest.raises(hub.HubUnavailableError) as err:
        EncodecCompressionModel.from_pretrained("jasco-tests/no-such-codec")
    assert time.monotonic() - begin < 5  # no retries
    message = str(err.value)
    assert "the codec 'jasco-tests/no-such-codec' is not in the local cache" in message
    assert "HF_HUB_OFFLINE is set" in message and str(tmp_path / "cache") in message
    assert "hf download jasco-tests/no-such-codec --local-dir DIR" in message
    assert "pass DIR instead of the repo id" in message and "JASCO_CACHE_DIR=CACHE" in message


def test_weight_norm_key_conversion_round_trip(codec):
    state = codec.model.state_dict()
    legacy = convert_weight_norm_keys(state, "legacy")
    assert "encoder.layers.0.conv.weight_g" in legacy and "encoder.layers.0.conv.weight_v" in legacy
    assert not any("parametrizations" in k for k in legacy)
    assert list(convert_weight_norm_keys(legacy, "parametrizations")) == list(state)
    assert list(convert_weight_norm_keys(legacy)) == list(state)  # installed torch uses parametrizations
    reloaded = EncodecCompressionModel.from_state_dict(legacy)
    for key, value in reloaded.model.state_dict().items():
        assert torch.equal(value, state[key]), key
    with pytest.raises(ValueError, match="style must be"):
        convert_weight_norm_keys(state, "new")


def test_config_from_state_dict_of_32khz_model():
    config = config_from_state_dict(_meta_32khz().state_dict())
    reference = encodec_32khz_config()
    for name in SHAPE_FIELDS:
        assert getattr(config, name) == getattr(reference, name), name
    assert config.num_quantizers == 4 and config.target_bandwidths == [2.2]
    legacy = convert_weight_norm_keys(_meta_32khz().state_dict(), "legacy")
    assert config_from_state_dict(legacy).to_dict() == config.to_dict()


def test_config_from_state_dict_errors(codec):
    state = codec.model.state_dict()
    with pytest.raises(ValueError, match="strip it first"):
        config_from_state_dict({CODEC_PREFIX + k: v for k, v in state.items()})
    with pytest.raises(ValueError, match="num_filters=8 contradicts the weights, which give 4"):
        config_from_state_dict(state, num_filters=8)
    assert config_from_state_dict(state, sampling_rate=24000).sampling_rate == 24000
    with pytest.raises(ValueError, match="no key of the state_dict starts with prefix"):
        EncodecCompressionModel.from_state_dict(state, prefix="nothing.")


def test_conv_geometry_buffers_from_old_exports(codec):
    state = dict(codec.model.state_dict())
    state["encoder.layers.3.stride"] = torch.tensor(4)
    loaded = EncodecCompressionModel.from_state_dict(state)
    assert int(loaded.model.encoder.layers[3].stride) == 4
    state["encoder.layers.3.stride"] = torch.tensor(5)
    with pytest.raises(ValueError, match="encoder.layers.3.stride"):
        EncodecCompressionModel.from_state_dict(state)


def test_reference_codec_config_and_strict_load():
    state = ref_codec_state_dict()
    config = config_from_state_dict(state)
    reference = encodec_32khz_config(num_filters=4, target_bandwidths=[0.55])
    for name in SHAPE_FIELDS:
        assert getattr(config, name) == getattr(reference, name), name
    assert config.num_quantizers == 1
    EncodecModel(config).load_state_dict(state, strict=True)


def test_reference_codec_dequantize_matches_published_drums_latents():
    if not REF_PATH.is_file():
        pytest.skip(f"{REF_PATH} not available")
    ref = torch.load(REF_PATH)
    codec = EncodecCompressionModel.from_state_dict(ref["state_dict"], prefix=CODEC_PREFIX)
    drums = ref["conditioners"]["drums"]
    torch.testing.assert_close(codec.dequantize_codebook0(drums["codes"]), drums["decoded_latents"],
                               rtol=0, atol=1e-6)


def test_codec_source_forms_name_one_codec(tmp_path):
    from jasco.models.codec import DEFAULT_CODEC_SOURCE, codec_source_name, is_hub_codec

    assert codec_source_name(None) == codec_source_name(DEFAULT_CODEC_SOURCE) == "facebook/encodec_32khz"
    assert codec_source_name("//pretrained/facebook/encodec_32khz") == "facebook/encodec_32khz"
    assert codec_source_name("//debug") == codec_source_name("debug") == "debug"
    assert codec_source_name(tmp_path) == str(tmp_path)
    assert is_hub_codec("//pretrained/facebook/encodec_32khz") and is_hub_codec("org/codec")
    assert not is_hub_codec("debug") and not is_hub_codec(f"//pretrained/{tmp_path}")


def test_codec_from_source_debug_and_local_folder(tmp_path):
    from jasco.models.codec import EncodecCompressionModel

    debug = EncodecCompressionModel.from_source("//debug", latent_mean=0.5, latent_std=2.0)
    debug.save_pretrained(tmp_path / "codec")
    local = EncodecCompressionModel.from_source(f"//pretrained/{tmp_path / 'codec'}")
    wav = torch.randn(1, 1, debug.hop_length * 4)
    assert torch.equal(local.encode_latents(wav), debug.encode_latents(wav))
    assert (debug.latent_mean, debug.latent_std) == (0.5, 2.0)
