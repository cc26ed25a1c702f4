"""Tests for jasco.metrics.clap with a tiny random CLAP model saved to a folder (no download)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers_audio import sine

from jasco.metrics import (
    ClapEmbedding,
    MetricUnavailable,
    clap_score,
    embedding_statistics,
    frechet_audio_distance,
    get_embedding,
)

SR = 48000


@pytest.fixture(scope="module")
def tiny_clap(tmp_path_factory) -> str:
    """A random ClapModel (8-d projections) and its processor, saved with `save_pretrained`."""
    from transformers import (
        ClapConfig,
        ClapFeatureExtractor,
        ClapModel,
        ClapProcessor,
        RobertaTokenizer,
    )

    folder = tmp_path_factory.mktemp("clap")
    vocab = ["<s>", "<pad>", "</s>", "<unk>", "<mask>", "Ġ", *"abcdefghijklmnopqrstuvwxyz"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = RobertaTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    config = ClapConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 16, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 64},
        audio_config={"patch_embeds_hidden_size": 8, "hidden_size": 64, "depths": [1, 1, 1, 1],
                      "num_attention_heads": [1, 1, 1, 1]},
        projection_dim=8)
    torch.manual_seed(0)
    model_dir = folder / "model"
    ClapModel(config).save_pretrained(model_dir)
    ClapProcessor(feature_extractor=ClapFeatureExtractor(), tokenizer=tokenizer).save_pretrained(model_dir)
    return str(model_dir)


def test_embedding_windows_and_score(tiny_clap: str) -> None:
    embedding = get_embedding("clap", model=tiny_clap)
    assert isinstance(embedding, ClapEmbedding) and embedding.sample_rate == SR
    assert embedding.identity == f"clap:{tiny_clap}"
    # 12.5 s -> a 10 s window and a 2.5 s one; unit-norm projections; stereo/other rates accepted.
    vectors = embedding.embed(sine(12.5, 16000, 440.0, channels=2), 16000)
    assert vectors.shape == (2, 8)
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(2))
    assert embedding.embed(sine(10.5, SR, 440.0), SR).shape == (1, 8)  # a 0.5 s tail is dropped
    # Each window costs about a second on CPU even for this tiny model: few windows below.
    wav = sine(2.0, SR, 440.0)[0]
    score = clap_score([wav], SR, ["a sine"], model=embedding)
    audio = torch.nn.functional.normalize(embedding.embed(wav, SR), dim=-1)
    by_hand = (audio * embedding.embed_texts(["a sine"])).sum()
    assert -1.0 <= score <= 1.0 and score == pytest.approx(float(by_hand), abs=1e-5)
    with pytest.raises(ValueError, match="one text per clip"):
        clap_score([wav], SR, ["one", "two"], model=embedding)
    sines = embedding_statistics([sine(1.0, SR, f)[0] for f in (300.0, 500.0)], embedding, sample_rate=SR)
    assert sines.count == 2 and frechet_audio_distance(sines, sines, embedding) == pytest.approx(0.0, abs=1e-6)


def test_unavailable_offline_without_a_cached_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("JASCO_CACHE_DIR", str(tmp_path))
    with pytest.raises(MetricUnavailable, match="laion/clap-htsat-unfused") as info:
        clap_score([torch.zeros(SR)], SR, ["silence"])
    assert info.value.metric == "clap" and "not in the local cache" in info.value.reason
