"""Classifier-free-guidance and attribute dropout: what gets nulled, per batch or per sample."""
from __future__ import annotations

import torch

from jasco.data.attributes import ConditioningAttributes, WavCondition
from jasco.modules.dropout import AttributeDropout, ClassifierFreeGuidanceDropout


def batch(n: int = 64) -> list[ConditioningAttributes]:
    return [ConditioningAttributes(
        text={"description": f"song {i}"},
        wav={"self_wav": WavCondition(torch.ones(1, 640), 32000, path="a.wav")},
        symbolic={"chords": torch.full((10,), 3), "melody": torch.ones(53, 10)}) for i in range(n)]


def is_null(attr: ConditioningAttributes) -> dict[str, bool]:
    return {"text": attr.text["description"] is None, "wav": attr.wav["self_wav"].is_null,
            "chords": attr.symbolic["chords"] is None, "melody": attr.symbolic["melody"] is None}


def test_cfg_dropout_nulls_every_condition_for_the_whole_batch():
    torch.manual_seed(0)
    dropout = ClassifierFreeGuidanceDropout(p=0.5)
    outcomes = set()
    for _ in range(20):
        out = dropout(batch(8))
        states = [is_null(a) for a in out]
        assert all(s == states[0] for s in states), "per-batch dropout must treat every sample alike"
        assert len(set(states[0].values())) == 1, "CFG dropout drops all conditions or none"
        outcomes.add(states[0]["text"])
    assert outcomes == {True, False}


def test_cfg_dropout_per_sample_and_input_untouched():
    torch.manual_seed(0)
    original = batch(64)
    out = ClassifierFreeGuidanceDropout(p=0.5, per_sample=True)(original)
    dropped = [is_null(a)["text"] for a in out]
    assert 10 < sum(dropped) < 54
    assert all(not any(is_null(a).values()) for a in original), "input attributes were modified"


def test_cfg_dropout_inactive_in_eval():
    dropout = ClassifierFreeGuidanceDropout(p=1.0).eval()
    assert not any(is_null(dropout(batch(4))[0]).values())


def test_attribute_dropout_drops_only_its_condition():
    torch.manual_seed(0)
    dropout = AttributeDropout({"symbolic": {"chords": 1.0}, "wav": {"self_wav": 0.0}, "text": {}})
    out = dropout(batch(4))
    assert all(is_null(a) == {"text": False, "wav": False, "chords": True, "melody": False} for a in out)


def test_attribute_dropout_granularity():
    torch.manual_seed(1)
    per_batch = AttributeDropout({"wav": {"self_wav": 0.5}})
    per_sample = AttributeDropout({"wav": {"self_wav": 0.5}}, per_sample=True)
    for _ in range(10):
        states = {is_null(a)["wav"] for a in per_batch(batch(16))}
        assert len(states) == 1
    mixed = [is_null(a)["wav"] for a in per_sample(batch(64))]
    assert 0 < sum(mixed) < 64


def test_null_values_reach_the_conditioners():
    from jasco.modules.conditioners import ChordsConditioner, MelodyConditioner
    chords, melody = ChordsConditioner(16, card=194, n_frames=10), MelodyConditioner(16, n_frames=10)
    attrs = ClassifierFreeGuidanceDropout(p=1.0)(batch(2))
    tokens = chords.tokenize([a.symbolic["chords"] for a in attrs])
    assert tokens.shape == (2, 10) and (tokens == 194).all()
    salience = melody.tokenize([a.symbolic["melody"] for a in attrs])
    assert salience.shape == (2, 53, 10) and not salience.any()


def test_a_given_generator_decides_for_every_micro_batch_alike():
    """The solver passes one generator per update: micro-batches of any size drop the same conditions."""
    cfg, att = ClassifierFreeGuidanceDropout(p=0.5), AttributeDropout({"wav": {"self_wav": 0.5}, "symbolic": {"chords": 0.5}})

    def decisions(size: int, seed: int) -> list[dict[str, bool]]:
        generator = torch.Generator().manual_seed(seed)
        return [is_null(a) for a in att(cfg(batch(size), generator), generator)]

    outcomes = set()
    for seed in range(16):
        whole, part = decisions(4, seed), decisions(1, seed)
        assert whole == part * 4
        outcomes.add(tuple(whole[0].values()))
    assert len(outcomes) > 2
