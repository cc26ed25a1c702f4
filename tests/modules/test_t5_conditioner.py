"""T5Conditioner on a tiny T5 built and saved locally (no hub): loading, masking, freezing, dropout."""
from __future__ import annotations

import time

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

from jasco import hub
from jasco.modules.conditioners import T5Conditioner

WORDS = ["<pad>", "</s>", "<unk>", "calm", "piano", "song", "loud", "drums", "with"]


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_t5")
    torch.manual_seed(0)
    T5EncoderModel(T5Config(vocab_size=len(WORDS), d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)).save_pretrained(folder)
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_local_t5_masks_padding_and_empty_texts(tiny_t5):
    cond = T5Conditioner(tiny_t5, output_dim=8).eval()
    assert cond.encoder_dim == 16
    tokens = cond.tokenize(["calm piano song", None, "loud drums"])
    assert tokens["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 0], [1, 1, 0]]
    out, mask = cond(tokens)
    assert out.shape == (3, 3, 8)
    assert not out[1].any() and not out[2, 2].any() and out[0].abs().sum() > 0


def test_frozen_t5_stays_out_of_the_state_dict(tiny_t5):
    cond = T5Conditioner(tiny_t5, output_dim=8)
    cond(cond.tokenize(["calm"]))  # loads the encoder
    encoder = cond.encoder
    assert isinstance(encoder, T5EncoderModel)
    assert set(cond.state_dict()) == {"output_proj.weight", "output_proj.bias"}
    assert {name for name, _ in cond.named_parameters()} == {"output_proj.weight", "output_proj.bias"}
    assert all(module is not encoder for module in cond.modules())
    assert all(not p.requires_grad for p in encoder.parameters())
    cond.train()
    assert not encoder.training  # frozen: stays in eval mode (no dropout)
    # Loading a published-layout state_dict (no T5 keys) is strict and leaves the encoder alone.
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    cond.load_state_dict({k: torch.zeros_like(v) for k, v in cond.state_dict().items()}, strict=True)
    assert all(torch.equal(v, before[k]) for k, v in cond.encoder.state_dict().items())
    tuned = T5Conditioner(tiny_t5, output_dim=8, finetune=True)
    assert any(k.startswith("t5.") for k in tuned.state_dict())
    assert tuned.encoder is tuned.t5 and all(p.requires_grad for p in tuned.t5.parameters())


def test_frozen_t5_follows_the_conditioner_device(tiny_t5):
    cond = T5Conditioner(tiny_t5, output_dim=8)
    cond.tokenize(["calm"])
    assert next(cond.encoder.parameters()).device.type == "cpu"
    cond.to("meta")
    assert cond.output_proj.weight.device.type == "meta"
    assert all(p.device.type == "meta" for p in cond.encoder.parameters())
    assert all(not p.requires_grad for p in cond.encoder.parameters())


def test_frozen_t5_keeps_its_dtype(tiny_t5):
    cond = T5Conditioner(tiny_t5, output_dim=8).eval()
    tokens = cond.tokenize(["calm piano"])
    expected, _ = cond(tokens)
    cond.double()
    assert cond.output_proj.weight.dtype == torch.float64
    assert next(cond.encoder.parameters()).dtype == torch.float32
    out, _ = cond(tokens)
    torch.testing.assert_close(out, expected.double(), atol=1e-6, rtol=1e-6)


def test_word_dropout_only_in_training(tiny_t5):
    cond = T5Conditioner(tiny_t5, output_dim=8, word_dropout=0.5)
    text = " ".join(["calm"] * 40)
    cond.train()
    torch.manual_seed(0)
    assert 5 < int(cond.tokenize([text])["attention_mask"].sum()) < 36
    cond.eval()
    assert int(cond.tokenize([text])["attention_mask"].sum()) == 40


def test_missing_encoder_names_the_fix(tmp_path):
    with pytest.raises(RuntimeError, match="config.json"):
        T5Conditioner(str(tmp_path / "nowhere"), output_dim=8)


@pytest.mark.parametrize("name", ["jasco-tests/no-such-t5", "t5-base"])
def test_offline_encoder_not_in_the_cache_fails_fast(tmp_path, monkeypatch, name):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # set after huggingface_hub was imported: still honoured
    monkeypatch.setenv("JASCO_CACHE_DIR", str(tmp_path / "cache"))
    begin = time.monotonic()
    with pytest.raises(hub.HubUnavailableError) as err:  # unknown name: its config; t5-base: the encoder
        T5Conditioner(name, output_dim=8).tokenize(["calm piano"])
    assert time.monotonic() - begin < 5
    message = str(err.value)
    assert f"'{name}' is not in the local cache ({tmp_path / 'cache'}) and HF_HUB_OFFLINE is set" in message
    assert f"hf download {name} --local-dir DIR" in message
    assert "set conditioners.description.t5.name=DIR" in message and "JASCO_CACHE_DIR=CACHE" in message
