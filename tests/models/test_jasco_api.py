"""jasco.models.jasco.JASCO: shapes, windowed long generation, per-sample controls, input validation."""
from __future__ import annotations

import warnings

import pytest
import torch
from helpers_inference import debug_cfg, debug_model, export_model

from jasco.controls.chords.vocabulary import ChordVocabulary, frame_chords
from jasco.models.codec import EncodecCompressionModel
from jasco.models.jasco import JASCO, crossfade_weights, window_starts

SR = 32000


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return export_model(debug_model(seed=2), tmp_path_factory.mktemp("debug_export"))


@pytest.fixture(scope="module")
def api(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the debug model names its (builtin) vocabulary: no warning
        model = JASCO.get_pretrained(folder, device="cpu")
    model.set_generation_params(euler=True, euler_steps=2, duration=1.0)
    return model


def test_get_pretrained(api):
    assert api.segment_duration == 4.0 and api.sample_rate == SR and api.frame_rate == 50
    assert api.controls == ["chords", "drums", "melody"]
    assert api.chords_vocabulary.labels == ChordVocabulary.builtin().labels
    assert api.device.type == "cpu" and not api.model.training


def test_shapes_seed_and_controls(api):
    melody = torch.zeros(53, 50)
    melody[10] = 1
    kwargs = dict(chords=[("C", 0.0), ("G", 0.5)], drums_wav=torch.randn(2, 44100) * 0.3, drums_sample_rate=44100,
                  melody_salience_matrix=melody, seed=3)
    wav, latents = api.generate_music(["pop", "rock"], return_latents=True, **kwargs)
    assert wav.shape == (2, 1, SR) and latents.shape == (2, 50, 128)
    assert torch.isfinite(wav).all()
    assert torch.equal(api.generate_music(["pop", "rock"], **kwargs), wav)  # same seed, same audio
    assert not torch.equal(api.generate_music(["pop", "rock"], **{**kwargs, "seed": 4}), wav)
    # [T, K] melody is accepted and means the same.
    assert torch.equal(api.generate_music(["pop", "rock"], **{**kwargs, "melody_salience_matrix": melody.T}), wav)
    assert api.generate(["pop"], duration=0.3, seed=0).shape == (1, 1, int(0.3 * SR))


def test_per_sample_chords(api):
    first, second = [("C", 0.0), ("Am", 0.5)], [("F", 0.0)]
    both = api.generate_music(["jazz", "jazz"], chords=[first, second], seed=5)
    alone = api.generate_music(["jazz"], chords=first, seed=5)
    torch.testing.assert_close(both[:1], alone, atol=1e-5, rtol=0)
    same = api.generate_music(["jazz", "jazz"], chords=[first, first], seed=5)
    assert (same[1] - both[1]).abs().max() > 1e-4  # the second progression changed the second sample


def test_long_generation_is_windowed(api):
    seen = []
    generate = api.model.generate

    def spy(conditions, max_gen_len, **kwargs):
        seen.append((conditions, max_gen_len))
        return generate(conditions, max_gen_len=max_gen_len, **kwargs)

    api.model.generate = spy
    try:
        progression = [("C", 0.0), ("G", 5.0), ("D", 9.5)]
        wav, latents = api.generate_music(["long"], chords=progression, duration=10.5, seed=0, return_latents=True)
    finally:
        del api.model.generate
    assert wav.shape == (1, 1, int(10.5 * SR)) and latents.shape == (1, 525, 128)
    conditions, window = seen[0]
    assert window == 200  # the 4 s training segment
    starts = window_starts(525, 200, 100)  # overlap >= 2 s, evenly spaced
    assert starts == [0, 81, 162, 244, 325] and len(conditions) == len(starts)
    vocab = api.chords_vocabulary
    for cond, start in zip(conditions, starts):  # each window sees its own slice of the chords
        expected = frame_chords(progression, vocab, 200, 50, offset_s=start / 50)
        assert torch.equal(cond.symbolic["chords"], expected)
    assert conditions[2].symbolic["chords"][0] == vocab.index("C")  # 3.24 s: the chord still sounding
    assert torch.isfinite(latents).all()


def test_crossfade():
    starts = window_starts(525, 200, 50)
    assert starts == [0, 108, 217, 325]
    weights = crossfade_weights(starts, 200)
    cover = torch.zeros(525)
    for j, s in enumerate(starts):
        cover[s:s + 200] += weights[j]
    torch.testing.assert_close(cover, torch.ones(525))
    windows = torch.stack([torch.full((200, 1), float(j)) for j in range(len(starts))])[None]  # [1, k, W, 1]
    merged = JASCO._merge_windows(windows, starts, 525)[0, :, 0]
    assert merged[:108].eq(0).all() and merged[417:].eq(len(starts) - 1).all()
    assert (merged[1:] - merged[:-1] >= -1e-6).all()  # a monotone fade from each window to the next
    assert window_starts(150, 200, 100) == [0]


def test_validation_errors(api):
    with pytest.raises(ValueError, match=r"'G' starts at 2.5 s, outside the generated segment \[0, 1.0\)"):
        api.generate_music(["x"], chords=[("C", 0), ("G", 2.5)])
    with pytest.raises(ValueError, match="starts must be finite and >= 0"):
        api.generate_music(["x"], chords=[("C", -1.0)])
    with pytest.raises(ValueError, match="3 progressions for 2 descriptions"):
        api.generate_music(["x", "y"], chords=[[("C", 0)], [("D", 0)], None])
    with pytest.raises(ValueError, match="expected 53 pitch bins"):
        api.generate_music(["x"], melody_salience_matrix=torch.zeros(12, 100))
    with pytest.raises(ValueError, match="batch 3 but there are 1"):
        api.generate_music(["x"], melody_salience_matrix=torch.zeros(3, 53, 100))
    with pytest.raises(ValueError, match=r"tensor \[C, N\] or \[B, C, N\], got \(32000,\)"):
        api.generate_music(["x"], drums_wav=torch.zeros(32000))
    with pytest.raises(ValueError, match="if it is \\[N, C\\], transpose it"):
        api.generate_music(["x"], drums_wav=torch.zeros(32000, 2))
    with pytest.raises(ValueError, match="positive int"):
        api.generate_music(["x"], drums_wav=torch.zeros(1, 32000), drums_sample_rate=0)
    with pytest.raises(ValueError, match="positive number of seconds"):
        api.generate_music(["x"], duration=0)
    with pytest.raises(ValueError, match="non-empty list"):
        api.generate_music([])


def test_missing_controls_and_vocabulary_size(tmp_path):
    model = debug_model(debug_cfg("conditioner=jasco_chords"))
    api = JASCO("chords-only", model, EncodecCompressionModel.debug())
    assert api.controls == ["chords"]
    with pytest.raises(ValueError, match="model chords-only has no melody control .its controls: chords."):
        api.generate_music(["x"], melody_salience_matrix=torch.zeros(53, 10))
    with pytest.raises(ValueError, match="has no drums control"):
        api.generate_music(["x"], drums_wav=torch.zeros(1, 100))
    small = ChordVocabulary({"N": 0, "C": 1, "UNK": 2})
    with pytest.raises(ValueError, match="3 labels but model x was trained with 194"):
        JASCO("x", model, api.compression_model, small)
