"""The flow-matching objective can overfit a fixed tiny batch, reproducibly for a fixed seed."""
from __future__ import annotations

import torch
from hydra import compose, initialize_config_dir

from jasco.data.attributes import ConditioningAttributes
from jasco.environment import CONFIG_DIR
from jasco.models import flow
from jasco.models.builders import get_jasco_model

STEPS = 150


def debug_cfg():
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.1"):
        # Wider than the 128-d latents: the D=64 debug width cannot carry a 128-d noise vector per frame.
        return compose("config", overrides=["solver=jasco/debug", "transformer_lm.dim=256"])


def loss_curve(seed: int) -> list[float]:
    torch.manual_seed(seed)
    model = get_jasco_model(debug_cfg())
    model.train()
    codec = model.condition_provider.conditioners["self_wav"].compression_model
    generator = torch.Generator().manual_seed(seed)
    # Two 1-second "songs": a chord-like sum of sines and a noisy percussive pattern.
    time = torch.arange(32000) / 32000
    wav = torch.stack([0.3 * sum(torch.sin(2 * torch.pi * f * time) for f in (220, 277, 330)),
                       0.5 * torch.randn(32000, generator=generator) * (torch.sin(2 * torch.pi * 2 * time) > 0.9)])
    z1 = codec.encode(wav[:, None])  # [2, 50, 128]
    chords = [torch.full((50,), 2), torch.full((50,), 20)]
    attributes = [ConditioningAttributes(text={"description": text}, symbolic={"chords": c})
                  for text, c in zip(["calm chords", "noisy drums"], chords)]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    # A fixed batch includes its noise and times: only then can the loss go towards zero.
    z0, t, z_t = flow.sample_training_point(z1, generator=generator)
    losses = []
    for _ in range(STEPS):
        v = model(z_t, t, attributes)
        loss = flow.flow_matching_loss(v, z0, z1, t)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_overfits_fixed_batch_reproducibly():
    losses = loss_curve(seed=0)
    start, end = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    print(f"loss {start:.3f} -> {end:.3f}")
    assert end < 0.05 * start, f"loss did not fall enough: {start:.3f} -> {end:.3f}"
    assert loss_curve(seed=0) == losses
