"""Conditioners, fuser and transformer pieces: shapes, masks, nulls, errors."""
from __future__ import annotations

import julius
import pytest
import torch

from jasco.data.attributes import WavCondition
from jasco.models.codec import EncodecCompressionModel
from jasco.modules.conditioners import (
    ChordsConditioner,
    DrumsConditioner,
    HashedTextConditioner,
    MelodyConditioner,
    temporal_blur,
)
from jasco.modules.fuser import ConditionFuser
from jasco.modules.transformer import MultiheadAttention, sin_embedding


def test_hashed_text_masks_empty_and_pads():
    cond = HashedTextConditioner(output_dim=8, num_buckets=64, dim=4).eval()
    tokens = cond.tokenize(["a calm song", None, ""])
    assert tokens["input_ids"].shape == (3, 3)
    assert tokens["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 0], [0, 0, 0]]
    out, mask = cond(tokens)
    assert out.shape == (3, 3, 8) and not out[1:].any()
    # Deterministic hashing: the same words give the same ids in another process/instance.
    assert torch.equal(HashedTextConditioner(8, num_buckets=64, dim=4).tokenize(["a calm song"])["input_ids"],
                       tokens["input_ids"][:1])


def test_chords_pad_short_rows_with_null_and_reject_bad_indices():
    cond = ChordsConditioner(4, card=194, n_frames=6)
    tokens = cond.tokenize([torch.tensor([1, 2, 3]), torch.tensor([5, 5, 5, 5, 5])])
    assert tokens.tolist() == [[1, 2, 3, 194, 194], [5, 5, 5, 5, 5]]
    assert cond.tokenize([None, None]).shape == (2, 6)
    with pytest.raises(ValueError, match="card=194"):
        cond.tokenize([torch.tensor([200])])
    with pytest.raises(ValueError, match="integer frame indices"):
        cond.tokenize([torch.zeros(3)])


def test_melody_wrong_bins():
    with pytest.raises(ValueError, match=r"\[53, T\]"):
        MelodyConditioner(16).tokenize([torch.zeros(12, 10)])


def test_drums_all_null_gives_bias_and_mixed_batch_encodes_silence():
    codec = EncodecCompressionModel.debug()
    cond = DrumsConditioner(2, codec, segment_duration=1.0).eval()
    out, mask = cond(cond.tokenize([None, None]))
    assert out.shape == (2, 50, 2) and torch.allclose(out, cond.output_proj.bias.expand(2, 50, 2))
    wav = torch.randn(1, 32000) * 0.3
    out, _ = cond(cond.tokenize([WavCondition(wav, 32000), None]))
    silence_codes = codec.encode_codes(torch.zeros(1, 1, 32000))[:, 0]
    expected = cond.output_proj(temporal_blur(codec.dequantize_codebook0(silence_codes), 3))
    assert torch.allclose(out[1:], expected, atol=1e-6)
    # Precomputed codes are used as they are (no codec pass).
    codes = codec.encode_codes(wav[None])[:, 0]
    out_codes, _ = cond(cond.tokenize([WavCondition(None, 32000, codes=codes[0]), None]))
    expected = cond.output_proj(temporal_blur(codec.dequantize_codebook0(codes), 3))
    assert torch.allclose(out_codes[:1], expected, atol=1e-6)


def test_drums_resample_other_rates():
    codec = EncodecCompressionModel.debug()
    cond = DrumsConditioner(2, codec, segment_duration=1.0).eval()
    wav = torch.randn(2, 44100, generator=torch.Generator().manual_seed(0)) * 0.1
    out, _ = cond(cond.tokenize([WavCondition(wav, 44100)]))
    assert out.shape == (1, 50, 2)
    # The same as giving the mono mix already resampled to the codec's 32 kHz...
    at_32k = julius.resample_frac(wav.mean(0, keepdim=True), 44100, 32000)
    expected, _ = cond(cond.tokenize([WavCondition(at_32k, 32000)]))
    assert torch.equal(out, expected)
    # ...and not the same as taking the 44.1 kHz samples for 32 kHz ones.
    wrong, _ = cond(cond.tokenize([WavCondition(wav.mean(0, keepdim=True), 32000)]))
    assert not torch.allclose(out, wrong[:, :50])


def test_fuser_methods():
    x = torch.zeros(2, 5, 4)
    conds = {"a": (torch.ones(2, 3, 4), torch.ones(2, 3)), "b": (torch.ones(2, 2, 4), torch.ones(2, 2)),
             "c": (2 * torch.ones(2, 7, 4), torch.ones(2, 7)), "d": (torch.ones(2, 10, 4), torch.ones(2, 10))}
    fuser = ConditionFuser({"sum": ["a"], "prepend": ["b"], "cross": ["c"], "input_interpolate": ["d"]})
    out, cross = fuser(x, {"a": conds["a"]})
    assert out[:, :3].eq(1).all() and out[:, 3:].eq(0).all() and cross is None  # summed at the start
    out, _ = fuser(x, {"b": conds["b"]})
    assert out.shape == (2, 7, 4) and out[:, :2].eq(1).all() and out[:, 2:].eq(0).all()
    out, _ = fuser(x, {"d": conds["d"]})
    assert out.shape == (2, 5, 4) and out.eq(1).all()
    out, cross = fuser(x, {"c": conds["c"]})
    assert torch.equal(out, x) and torch.equal(cross, conds["c"][0])
    with pytest.raises(ValueError, match="no fuse method"):
        fuser(x, {"unknown": conds["a"]})
    with pytest.raises(ValueError, match="Unknown fuse methods"):
        ConditionFuser({"concat": ["a"]})


def test_attention_matches_torch_multihead():
    torch.manual_seed(0)
    ours = MultiheadAttention(16, 4)
    ref = torch.nn.MultiheadAttention(16, 4, bias=False, batch_first=True)
    ref.in_proj_weight.data.copy_(ours.in_proj_weight.data)
    ref.out_proj.weight.data.copy_(ours.out_proj.weight.data)
    x = torch.randn(2, 7, 16)
    assert torch.allclose(ours(x), ref(x, x, x, need_weights=False)[0], atol=1e-5)


def test_sin_embedding_layout():
    emb = sin_embedding(torch.arange(3), 8)
    assert emb.shape == (3, 8)
    assert torch.allclose(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
