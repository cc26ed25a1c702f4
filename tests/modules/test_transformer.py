"""The transformer's fast paths change speed only: the CPU attention equals SDPA, compiled layers keep
their parameter names, and a bf16-autocast training loss stays within 1% of fp32.

Tolerances: attention 1e-5 in fp32 (the same math in another order of float operations); the bf16
loss 1% relative (bf16 keeps 8 bits of mantissa; a loss averages over many frames, measured ~0.01%).
"""
from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from jasco.data.attributes import ConditioningAttributes
from jasco.models import flow
from jasco.models.flow_matching import FlowMatchingModel
from jasco.modules import transformer
from jasco.modules.conditioners import (
    ChordsConditioner,
    ConditionProvider,
    HashedTextConditioner,
)
from jasco.modules.fuser import ConditionFuser
from jasco.modules.transformer import Transformer, attention


@pytest.mark.parametrize(("keys", "causal"), [(24, False), (5, False), (24, True)])
def test_cpu_attention_equals_sdpa_with_gradients(keys, causal):
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 24, 8, generator=generator, requires_grad=True)
    k = torch.randn(2, 3, keys, 8, generator=generator, requires_grad=True)
    v = torch.randn(2, 3, keys, 8, generator=generator, requires_grad=True)
    grad = torch.randn(2, 3, 24, 8, generator=generator)
    out = attention(q, k, v, causal=causal)
    grads = torch.autograd.grad(out, (q, k, v), grad)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    expected_grads = torch.autograd.grad(expected, (q, k, v), grad)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_attention_uses_sdpa_above_the_score_budget(monkeypatch):
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(1) or sdpa(*a, **kw))
    q = torch.randn(1, 2, 6, 4)
    small = attention(q, q, q)
    assert calls == []
    monkeypatch.setattr(transformer, "MATH_ATTENTION_MAX_SCORES", 1 * 2 * 6 * 6 - 1)
    large = attention(q, q, q)
    assert calls == [1]
    torch.testing.assert_close(small, large, atol=1e-6, rtol=0)


def test_compiled_layers_keep_parameter_names_and_outputs():
    torch.manual_seed(0)
    net = Transformer(16, 2, 2).eval()
    x, cross = torch.randn(2, 5, 16), torch.randn(2, 3, 16)
    keys = {name: p.shape for name, p in net.state_dict().items()}
    with torch.no_grad():
        expected = net(x, cross)
    # backend="eager": dynamo traces the layers without code generation (fast); inductor is the default.
    net.compile_layers(backend="eager")
    assert {name: p.shape for name, p in net.state_dict().items()} == keys
    with torch.no_grad():
        torch.testing.assert_close(net(x, cross), expected)


def test_bf16_autocast_training_loss_within_one_percent_of_fp32():
    torch.manual_seed(0)
    provider = ConditionProvider({"description": HashedTextConditioner(64, num_buckets=64, dim=16),
                                  "chords": ChordsConditioner(8, card=20, n_frames=100)})
    model = FlowMatchingModel(provider, ConditionFuser({"cross": ["description"], "ignore": ["chords"]}),
                              dim=64, num_heads=4, num_layers=2, flow_dim=16, chords_dim=8).train()
    attributes = [ConditioningAttributes(text={"description": f"a song number {i}"},
                                         symbolic={"chords": torch.arange(100) % 20}) for i in range(2)]
    generator = torch.Generator().manual_seed(1)
    z1 = torch.randn(2, 100, 16, generator=generator)
    z0, t, z_t = flow.sample_training_point(z1, generator=generator)
    tensors = model.condition_tensors(attributes)
    losses = {}
    for dtype in (torch.float32, torch.bfloat16):
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            losses[dtype] = float(flow.flow_matching_loss(model(z_t, t, condition_tensors=tensors), z0, z1, t))
    assert abs(losses[torch.bfloat16] - losses[torch.float32]) <= 0.01 * losses[torch.float32]
    assert losses[torch.bfloat16] != losses[torch.float32]  # autocast did run in bf16
