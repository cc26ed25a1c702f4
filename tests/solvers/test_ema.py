"""Tests for jasco/solvers/ema.py: averaging formula, frozen params, swap, state round trip."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from jasco.solvers.ema import ModuleDictEMA


class Tiny(nn.Module):
    """A linear layer, a float buffer, an int buffer and a frozen sub-module (the 'codec')."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 2)
        self.register_buffer("scale", torch.ones(2))
        self.register_buffer("counter", torch.zeros(1, dtype=torch.long))
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def make_dict(seed: int = 0) -> nn.ModuleDict:
    torch.manual_seed(seed)
    return nn.ModuleDict({"model": Tiny()})


@torch.no_grad()
def set_all(module: Tiny, value: float) -> None:
    module.proj.weight.fill_(value)
    module.proj.bias.fill_(value)
    module.scale.fill_(value)


def test_tracks_trainable_float_tensors_only():
    ema = ModuleDictEMA(make_dict())
    assert set(ema.state) == {"model"}
    assert set(ema.state["model"]) == {"proj.weight", "proj.bias", "scale"}


def test_constant_params_are_reproduced():
    modules = make_dict()
    ema = ModuleDictEMA(modules, decay=0.9)
    for _ in range(5):
        ema.step()
    for key, value in modules["model"].state_dict().items():
        if key in ema.state["model"]:
            assert torch.equal(ema.state["model"][key], value)


@pytest.mark.parametrize("unbias", [True, False])
def test_changing_params_match_formula(unbias):
    modules = make_dict()
    decay = 0.8
    set_all(modules["model"], 10.0)
    ema = ModuleDictEMA(modules, decay=decay, unbias=unbias)
    values = [1.0, 2.0, 4.0]
    expected, count = 10.0, 0.0
    for value in values:
        set_all(modules["model"], value)
        ema.step()
        if unbias:
            count = count * decay + 1
            weight = 1 / count
        else:
            weight = 1 - decay
        expected = expected * (1 - weight) + value * weight
    if unbias:
        # By hand: c = 1, 1.8, 2.44; w = 1, 1/1.8, 1/2.44.
        hand = ((1.0 * (1 - 1 / 1.8) + 2.0 / 1.8) * (1 - 1 / 2.44) + 4.0 / 2.44)
        assert expected == pytest.approx(hand)
        assert ema.count == pytest.approx(2.44)
    else:
        # Plain EMA starts from the construction-time weights (10).
        assert expected == pytest.approx(((10 * 0.8 + 0.2) * 0.8 + 0.4) * 0.8 + 0.8)
    for key in ("proj.weight", "proj.bias", "scale"):
        torch.testing.assert_close(ema.state["model"][key],
                                   torch.full_like(ema.state["model"][key], expected))


def test_frozen_params_ignored():
    modules = make_dict()
    ema = ModuleDictEMA(modules)
    with torch.no_grad():
        modules["model"].frozen.weight.fill_(3.0)
    ema.step()
    assert not any(key.startswith("frozen.") for key in ema.state["model"])
    with ema.swap():
        assert torch.all(modules["model"].frozen.weight == 3.0)


def test_swap_uses_ema_then_restores_exactly():
    modules = make_dict()
    ema = ModuleDictEMA(modules, decay=0.5)
    set_all(modules["model"], 1.0)
    ema.step()
    set_all(modules["model"], 3.0)
    ema.step()  # c = 1.5, w = 2/3: ema = 1/3 + 2 = 7/3
    live = {k: v.clone() for k, v in modules["model"].state_dict().items()}
    with ema.swap():
        torch.testing.assert_close(modules["model"].proj.weight,
                                   torch.full_like(modules["model"].proj.weight, 7 / 3))
        torch.testing.assert_close(modules["model"].scale, torch.full((2,), 7 / 3))
    for key, value in modules["model"].state_dict().items():
        assert torch.equal(value, live[key]), key
    assert modules["model"].proj.weight.requires_grad


def test_swap_restores_on_exception():
    modules = make_dict()
    ema = ModuleDictEMA(modules)
    set_all(modules["model"], 5.0)
    before = modules["model"].proj.weight.clone()
    with pytest.raises(RuntimeError, match="boom"):
        with ema.swap():
            raise RuntimeError("boom")
    assert torch.equal(modules["model"].proj.weight, before)


def test_state_dict_round_trip(tmp_path):
    modules = make_dict()
    ema = ModuleDictEMA(modules, decay=0.7)
    for value in (1.0, 2.0, 5.0):
        set_all(modules["model"], value)
        ema.step()
    path = tmp_path / "ema.th"
    torch.save(ema.state_dict(), path)
    loaded = torch.load(path, weights_only=True)
    assert set(loaded) == {"state", "count"}

    other = ModuleDictEMA(make_dict(seed=1), decay=0.7)
    other.load_state_dict(loaded)
    assert other.count == pytest.approx(ema.count)
    for key, value in ema.state["model"].items():
        assert torch.equal(other.state["model"][key], value)
    # Both continue identically.
    set_all(other.module_dict["model"], 9.0)
    set_all(modules["model"], 9.0)
    ema.step()
    other.step()
    for key, value in ema.state["model"].items():
        assert torch.equal(other.state["model"][key], value)


def test_copy_to_other_module_dict():
    modules = make_dict()
    ema = ModuleDictEMA(modules)
    set_all(modules["model"], 2.0)
    ema.step()
    target = make_dict(seed=3)
    ema.copy_to(target)
    assert torch.all(target["model"].proj.weight == 2.0)
    assert torch.all(target["model"].scale == 2.0)
    with pytest.raises(KeyError, match="'model'"):
        ema.copy_to(nn.ModuleDict({"other": Tiny()}))


def test_load_state_dict_errors():
    ema = ModuleDictEMA(make_dict())
    with pytest.raises(ValueError, match="'state' and 'count'"):
        ema.load_state_dict({"state": {}})
    with pytest.raises(ValueError, match="holds modules"):
        ema.load_state_dict({"state": {"lm": {}}, "count": 1.0})
    state = {"state": {"model": {k: v.clone() for k, v in ema.state["model"].items()}}, "count": 1.0}
    del state["state"]["model"]["scale"]
    with pytest.raises(ValueError, match=r"missing \['scale'\]"):
        ema.load_state_dict(state)
    state["state"]["model"]["scale"] = torch.zeros(5)
    with pytest.raises(ValueError, match=r"model.scale has shape \(5,\)"):
        ema.load_state_dict(state)


def test_bad_decay():
    with pytest.raises(ValueError, match="optim.ema.decay"):
        ModuleDictEMA(make_dict(), decay=1.0)
