"""T5Conditioner on a tiny T5 built and saved locally (no hub): loading, masking, freezing, dropout."""
from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

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
    cond.tokenize(["calm"])
    assert set(cond.state_dict()) == {"output_proj.weight", "output_proj.bias"}
    assert all(not p.requires_grad for p in cond.t5.parameters())
    tuned = T5Conditioner(tiny_t5, output_dim=8, finetune=True)
    assert any(k.startswith("t5.") for k in tuned.state_dict())


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
