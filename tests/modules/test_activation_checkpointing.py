"""Activation checkpointing (`transformer_lm.checkpointing`) recomputes each transformer block in backward
and changes nothing else: the same forward output and the same gradients as without it.

Tolerance: none (bitwise equal). With checkpointing, each block's forward is rerun in backward with
the same inputs, the same kernels and, for dropout, the random state it had in the forward
(`torch.utils.checkpoint` stashes and restores it), so every float operation is repeated exactly; on
the CPU the gradients come out bitwise equal (measured: max difference 0.0 over all parameters).
`tests/solvers/test_distributed_training.py::test_activation_checkpointing_trains_as_without`
checks the same under the solver's train step, with accumulated micro-batches.
"""
from __future__ import annotations

import pytest
import torch

from jasco.data.attributes import ConditioningAttributes
from jasco.models.flow_matching import FlowMatchingModel
from jasco.modules.conditioners import (
    ChordsConditioner,
    ConditionProvider,
    HashedTextConditioner,
)
from jasco.modules.fuser import ConditionFuser
from jasco.modules.transformer import TransformerLayer


def model(checkpointing: str, skip: bool) -> FlowMatchingModel:
    """A small training-mode model with dropout (and layer dropout of the skips) on: the random draws must repeat."""
    torch.manual_seed(0)
    provider = ConditionProvider({"description": HashedTextConditioner(32, num_buckets=32, dim=8),
                                  "chords": ChordsConditioner(4, card=10, n_frames=12)})
    return FlowMatchingModel(provider, ConditionFuser({"cross": ["description"], "ignore": ["chords"]}), dim=32,
                             num_heads=2, num_layers=4, flow_dim=8, chords_dim=4, skip_connections=skip,
                             layer_dropout_p=0.5 if skip else None, dropout=0.1, checkpointing=checkpointing).train()


def forward_backward(checkpointing: str, skip: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """Output, gradients and the number of transformer-block forwards of one training step."""
    net = model(checkpointing, skip)
    calls = []  # pre-hooks: the recompute stops right after the last tensor backward needs, before forward hooks
    for layer in net.modules():
        if isinstance(layer, TransformerLayer):
            layer.register_forward_pre_hook(lambda *args: calls.append(1))
    generator = torch.Generator().manual_seed(1)
    z = torch.randn(3, 12, 8, generator=generator)
    t = torch.rand(3, 1, 1, generator=generator)
    attributes = [ConditioningAttributes(text={"description": f"song number {i}"},
                                         symbolic={"chords": torch.arange(12) % 10}) for i in range(3)]
    torch.manual_seed(5)  # dropout's draws
    v = net(z, t, attributes)
    v.square().mean().backward()
    grads = {name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None}
    return v.detach(), grads, len(calls)


@pytest.mark.parametrize("skip", [False, True])
def test_checkpointing_gives_the_same_gradients(skip):
    out, grads, calls = forward_backward("none", skip)
    out_ck, grads_ck, calls_ck = forward_backward("torch", skip)
    assert calls == 4 and calls_ck == 8  # each of the 4 blocks recomputed once in backward
    assert torch.equal(out, out_ck)
    assert grads.keys() == grads_ck.keys() and len(grads) > 40
    for name, grad in grads.items():
        assert torch.equal(grad, grads_ck[name]), (name, float((grad - grads_ck[name]).abs().max()))


def test_checkpointing_is_off_in_eval():
    net = model("torch", skip=False).eval()
    calls = []
    for layer in net.transformer.layers:
        layer.register_forward_pre_hook(lambda *args: calls.append(1))
    attributes = [ConditioningAttributes(text={"description": "a song"}, symbolic={"chords": torch.arange(12) % 10})]
    net(torch.randn(1, 12, 8), torch.rand(1, 1, 1), attributes).sum().backward()
    assert len(calls) == 4
