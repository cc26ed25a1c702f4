"""FlowMatchingModel behaviour beyond the reference vectors: fusing, skips, sampling options."""
from __future__ import annotations

import pytest
import torch

from jasco.data.attributes import ConditioningAttributes
from jasco.models import flow
from jasco.models.flow_matching import FlowMatchingModel
from jasco.modules.conditioners import (
    ChordsConditioner,
    ConditionProvider,
    HashedTextConditioner,
)
from jasco.modules.fuser import ConditionFuser


def tiny_model(fuse: dict, skip: bool = False) -> FlowMatchingModel:
    torch.manual_seed(0)
    provider = ConditionProvider({"description": HashedTextConditioner(32, num_buckets=32, dim=8),
                                  "chords": ChordsConditioner(4, card=10, n_frames=12)})
    return FlowMatchingModel(provider, ConditionFuser(fuse), dim=32, num_heads=2, num_layers=4,
                             flow_dim=8, chords_dim=4, skip_connections=skip).eval()


def attrs(n: int = 2) -> list[ConditioningAttributes]:
    return [ConditioningAttributes(text={"description": f"song {i}"}, symbolic={"chords": torch.arange(12) % 10})
            for i in range(n)]


def test_prepend_keeps_the_last_frames_along_time():
    model = tiny_model({"prepend": ["description"], "ignore": ["chords"]})
    z = torch.randn(2, 12, 8)
    seen = []
    hook = model.linear.register_forward_hook(lambda module, args, out: seen.append(out))
    try:
        with torch.no_grad():
            v = model(z, torch.rand(2), attrs())
    finally:
        hook.remove()
    (full,) = seen
    assert full.shape == (2, 2 + 12, 8)  # the 2 description tokens ("song i") are prepended
    assert v.shape == (2, 12, 8)
    assert torch.equal(v, full[:, -12:]) and not torch.allclose(v, full[:, :12])


def test_skip_connections_and_t_shapes():
    model = tiny_model({"cross": ["description"], "ignore": ["chords"]}, skip=True)
    assert len(model.transformer.skip_projections) == 2
    z = torch.randn(2, 12, 8)
    with torch.no_grad():
        tensors = model.condition_tensors(attrs())
        a = model(z, torch.full((2,), 0.3), condition_tensors=tensors)
        b = model(z, torch.full((2, 1, 1), 0.3), condition_tensors=tensors)
        c = model(z, 0.3, condition_tensors=tensors)
    assert torch.allclose(a, b) and torch.allclose(a, c)


def test_generate_reproducible_and_solvers():
    model = tiny_model({"cross": ["description"], "ignore": ["chords"]})
    noise = torch.randn(2, 12, 8, generator=torch.Generator().manual_seed(3))
    steps = []
    a = model.generate(attrs(), cfg_coef_all=3.0, cfg_coef_txt=1.0, euler_steps=5, initial_noise=noise,
                       callback=lambda i, n: steps.append((i, n)))
    b = model.generate(attrs(), cfg_coef_all=3.0, cfg_coef_txt=1.0, euler_steps=5, initial_noise=noise)
    assert torch.equal(a, b) and steps == [(i, 5) for i in range(1, 6)]
    g1 = model.generate(attrs(), max_gen_len=12, generator=torch.Generator().manual_seed(1), euler_steps=2)
    g2 = model.generate(attrs(), max_gen_len=12, generator=torch.Generator().manual_seed(1), euler_steps=2)
    assert torch.equal(g1, g2)
    d = model.generate(attrs(), solver="dopri5", initial_noise=noise, ode_atol=1e-3, ode_rtol=1e-3)
    assert d.shape == (2, 12, 8) and torch.isfinite(d).all()
    # Both solvers integrate the same ODE: fine Euler steps converge to the adaptive solution.
    fine = model.generate(attrs(), solver="euler", euler_steps=200, initial_noise=noise)
    coarse = model.generate(attrs(), solver="euler", euler_steps=5, initial_noise=noise)
    assert (fine - d).abs().max() < 0.02 < (coarse - d).abs().max()
    with pytest.raises(ValueError, match="Unknown solver"):
        model.generate(attrs(), solver="rk7")


def test_guidance_terms_drop_zero_weights():
    assert [t.name for t in flow.guidance_terms(1.0, 0.0)] == ["all"]
    assert [t.name for t in flow.guidance_terms(3.0, 0.0)] == ["all", "null"]
    terms = flow.guidance_terms(1.25, 2.5)
    assert [t.weight for t in terms] == pytest.approx([1.25, 2.5, -2.75])
    text_only = terms[1].apply(attrs(1)[0])
    assert text_only.text["description"] == "song 0" and text_only.symbolic["chords"] is None


def test_loss_weights_and_path():
    z0, z1 = torch.zeros(1, 2, 3), torch.ones(1, 2, 3)
    t = torch.full((1, 1, 1), 0.25)
    assert torch.allclose(flow.interpolate(z0, z1, t), torch.full((1, 2, 3), 0.25))
    v = torch.zeros(1, 2, 3)
    assert flow.flow_matching_loss(v, z0, z1, t, "uniform").item() == pytest.approx(1.0)
    assert flow.flow_matching_loss(v, z0, z1, t, "increasing").item() == pytest.approx(1.25)
    assert flow.flow_matching_loss(v, z0, z1, t, "decreasing").item() == pytest.approx(1.75)
    with pytest.raises(ValueError, match="loss_func"):
        flow.flow_matching_loss(v, z0, z1, t, "cubic")


def test_temporal_dim_must_match_conditioner():
    provider = ConditionProvider({"chords": ChordsConditioner(4, card=10)})
    with pytest.raises(ValueError, match="chords_dim=16"):
        FlowMatchingModel(provider, ConditionFuser({"ignore": ["chords"]}), dim=16, num_heads=2,
                          num_layers=1, chords_dim=16)
