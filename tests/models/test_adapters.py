"""jasco.models.adapters: peft LoRA on the debug network: what trains, training, merging, adapter folders."""
from __future__ import annotations

import copy
import json
import sys

import pytest
import torch
from helpers_inference import debug_model, export_model
from omegaconf import OmegaConf

from jasco.data.attributes import ConditioningAttributes
from jasco.models import adapters
from jasco.models.flow import flow_matching_loss, interpolate
from jasco.models.jasco import JASCO
from jasco.models.loaders import ModelLoadError, load_jasco_with_adapter

DEFAULT_TARGETS = ["self_attn.in_proj_weight", "self_attn.out_proj", "cross_attention.in_proj_weight",
                   "cross_attention.out_proj", "linear1", "linear2"]


def settings(rank: int = 4, targets: list[str] | None = None, dropout: float = 0.0) -> adapters.LoraSettings:
    return adapters.LoraSettings.from_config({"rank": rank, "alpha": 2 * rank, "dropout": dropout,
                                              "target_modules": targets or DEFAULT_TARGETS})


_PLAIN: dict[int, torch.nn.Module] = {}


def plain_model(seed: int = 0) -> torch.nn.Module:
    """A fresh copy of the debug model of `seed` (built once: composing the config is the slow part)."""
    if seed not in _PLAIN:
        _PLAIN[seed] = debug_model(seed=seed)
    model = copy.deepcopy(_PLAIN[seed])
    model.cfg = _PLAIN[seed].cfg
    return model


def adapted(seed: int = 0, rank: int = 4, patterns: tuple[str, ...] = ()) -> torch.nn.Module:
    model = plain_model(seed)
    frozen = adapters.frozen_parameters(model)
    adapters.add_lora(model, adapters.lora_config(model, settings(rank)))
    adapters.set_trainable(model, True, list(patterns), frozen)
    return model


def batch(n: int = 2, frames: int = 100) -> tuple[list[ConditioningAttributes], torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    attrs = [ConditioningAttributes(text={"description": f"calm piano {i}"},
                                    symbolic={"chords": torch.tensor([1 + i] * (frames // 2) + [5] * (frames // 2))})
             for i in range(n)]
    z1 = torch.randn(n, frames, 128, generator=gen)
    z0 = torch.randn(n, frames, 128, generator=gen)
    t = torch.rand(n, 1, 1, generator=gen)
    return attrs, z0, z1, t


def perturb_adapters(model: torch.nn.Module, seed: int = 5) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def expected_lora_count(model: torch.nn.Module, rank: int, targets: list[str]) -> int:
    """rank x (fan_in + fan_out) for every matched Linear or bare weight, from the plain model's shapes."""
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and any(name.endswith("." + t) for t in targets):
            total += rank * (module.in_features + module.out_features)
    for name, param in model.named_parameters():
        if any(name.endswith("." + t) for t in targets) and name.endswith("in_proj_weight"):
            total += rank * (param.shape[0] + param.shape[1])
    return total


def test_trainable_count_is_what_the_config_implies():
    plain = plain_model()
    for rank in (2, 4):
        model = adapted(rank=rank)
        trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
        assert all(adapters.is_lora_parameter(n) for n in trained)
        assert sum(p.numel() for p in trained.values()) == expected_lora_count(plain, rank, DEFAULT_TARGETS)
        # 2 layers x (4 attention projections + 2 feed-forward) = 12 adapted weights, A and B each
        assert len(trained) == 2 * 12
    # whole-trained patterns come on top, by their published names
    model = adapted(patterns=("condition_provider.conditioners.chords.*", "emb.weight"))
    whole = {n for n, p in model.named_parameters() if p.requires_grad and not adapters.is_lora_parameter(n)}
    assert whole == {"condition_provider.conditioners.chords.emb.weight", "emb.weight"}
    assert not any(p.requires_grad for n, p in model.named_parameters() if "compression_model" in n)


def test_lora_training_lowers_the_loss_and_leaves_the_base_alone():
    model = adapted(seed=1).train()
    base = {k: v.clone() for k, v in model.state_dict().items() if not adapters.is_lora_parameter(k)}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    attrs, z0, z1, t = batch(frames=50)
    losses = []
    for _ in range(12):
        optimizer.zero_grad()
        loss = flow_matching_loss(model(interpolate(z0, z1, t), t, conditions=attrs), z0, z1, t)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base.items())


def test_merged_model_gives_the_adapted_outputs_in_the_published_layout():
    model = adapted(seed=2).eval()
    perturb_adapters(model)
    attrs, z0, z1, t = batch()
    with torch.no_grad():
        before = model(interpolate(z0, z1, t), t, conditions=attrs)
        merged = adapters.merge_lora(copy.deepcopy(model))
        after = merged(interpolate(z0, z1, t), t, conditions=attrs)
        base_out = plain_model(2)(interpolate(z0, z1, t), t, conditions=attrs)
    assert (before - base_out).abs().max() > 1e-3  # the adapters do something
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)
    plain = plain_model()
    assert set(merged.state_dict()) == set(plain.state_dict())
    plain.load_state_dict(merged.state_dict(), strict=True)


def test_adapter_folder_round_trip(tmp_path):
    base_dir = export_model(plain_model(3), tmp_path / "base")
    model = adapted(seed=3, patterns=("emb.weight",)).eval()
    perturb_adapters(model)
    with torch.no_grad():
        model.emb.weight.mul_(1.5)  # a weight trained whole
    trained = {"emb.weight": model.emb.weight.detach()}
    out = adapters.save_adapter(model, tmp_path / "adapter", str(base_dir), OmegaConf.to_yaml(model.cfg), trained,
                                "test")
    assert sorted(p.name for p in out.iterdir()) == sorted([adapters.ADAPTER_CONFIG_FILE, adapters.ADAPTER_WEIGHTS_FILE,
                                                            adapters.POINTER_FILE, adapters.TRAINED_FILE])
    config = json.loads((out / adapters.ADAPTER_CONFIG_FILE).read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["base_model_name_or_path"] == str(base_dir)
    from safetensors.torch import load_file
    assert all(k.startswith(adapters.PEFT_PREFIX) and ".lora_" in k for k in load_file(out / adapters.ADAPTER_WEIGHTS_FILE))

    attrs, z0, z1, t = batch()
    with torch.no_grad():
        expected = model(interpolate(z0, z1, t), t, conditions=attrs)
        loaded = load_jasco_with_adapter(None, out).model  # the base named by the pointer
        torch.testing.assert_close(loaded(interpolate(z0, z1, t), t, conditions=attrs), expected, atol=1e-5, rtol=0)
        api = JASCO.get_pretrained(base_dir, device="cpu", adapter=out)
        torch.testing.assert_close(api.model(interpolate(z0, z1, t), t, conditions=attrs), expected,
                                   atol=1e-5, rtol=0)
        unmerged = load_jasco_with_adapter(base_dir, out, merge=False).model
        assert adapters.has_lora(unmerged.state_dict())


def test_adapter_on_the_wrong_base_is_refused(tmp_path):
    model = adapted(seed=4).eval()
    out = adapters.save_adapter(model, tmp_path / "adapter", "nowhere", OmegaConf.to_yaml(model.cfg), {}, "test")
    other = debug_model(OmegaConf.merge(model.cfg, {"transformer_lm": {"num_layers": 3}}), seed=0)
    other_dir = export_model(other, tmp_path / "other")
    with pytest.raises(ModelLoadError, match="does not fit adapter"):
        load_jasco_with_adapter(other_dir, out)
    (out / adapters.POINTER_FILE).unlink()
    with pytest.raises(adapters.AdapterError, match="has no jasco_adapter.json"):
        load_jasco_with_adapter(other_dir, out)


@pytest.mark.parametrize(("override", "message"), [
    ({"rank": 0}, r"finetune.lora.rank=0: must be >= 1"),
    ({"target_modules": ["linear9"]}, r"'linear9' matches no module or parameter"),
    ({"dropout": 0.1}, r"finetune.lora.dropout=0.1 with parameter targets"),
])
def test_bad_settings_name_the_key(override, message):
    model = plain_model()
    section = {"rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": DEFAULT_TARGETS, **override}
    with pytest.raises(adapters.AdapterError, match=message):
        adapters.lora_config(model, adapters.LoraSettings.from_config(section))
    with pytest.raises(adapters.AdapterError, match="finetune.trainable: 'nothing.*' matches no parameter"):
        adapters.set_trainable(model, True, ["nothing.*"], set())


def test_missing_peft_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ImportError, match=r"pip install 'jasco\[finetune\]'"):
        adapters.import_peft()
