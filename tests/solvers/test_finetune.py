"""Fine-tuning runs: LoRA from an exported base (what trains, EMA, export merged / as adapters, resume),
and new controls or chord vocabularies the base model lacks."""
from __future__ import annotations

import json
import logging

import pytest
import torch
from helpers_inference import debug_cfg, debug_model, export_model
from helpers_training import ensure_example, experiment

from jasco.controls.chords.vocabulary import ChordVocabulary
from jasco.data.attributes import ConditioningAttributes
from jasco.export import export_checkpoint
from jasco.models import adapters
from jasco.models.flow import interpolate
from jasco.models.jasco import JASCO
from jasco.models.loaders import load_jasco_model
from jasco.solvers.continuation import ContinuationError

QUICK = ["solver=jasco/debug", "optim.epochs=1", "optim.updates_per_epoch=2", "schedule.cosine.warmup=1", "generate.every=0", "evaluate.every=0"]
LORA = ["finetune.lora.use=true", "finetune.lora.rank=2", "finetune.lora.alpha=4"]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """An exported (published-layout) debug model with chords, drums and melody."""
    ensure_example()
    return export_model(debug_model(seed=7), tmp_path_factory.mktemp("base"))


def solver_for(dora_dir, overrides):
    from jasco.train import get_solver
    with experiment(dora_dir, overrides) as xp:
        return get_solver(xp.cfg), xp


def outputs(model, melody: bool = False) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(2, 1, 100, 128, generator=gen)
    symbolic = {"chords": torch.tensor([1] * 50 + [5] * 50)}
    if melody:
        symbolic["melody"] = torch.rand(53, 100, generator=gen)
    attrs = [ConditioningAttributes(text={"description": "calm piano"}, symbolic=symbolic)]
    t = torch.full((1, 1, 1), 0.4)
    with torch.no_grad():
        return model.eval()(interpolate(z0, z1, t), t, conditions=attrs)


@pytest.fixture(scope="module")
def lora_run(base_dir, tmp_path_factory):
    """A finished one-epoch LoRA run from the base: (dora dir, overrides, solver)."""
    dora_dir = tmp_path_factory.mktemp("dora")
    overrides = QUICK + LORA + [f"continue_from=//pretrained/{base_dir}"]
    solver, _ = solver_for(dora_dir, overrides)
    solver.run()
    return dora_dir, overrides, solver


def test_lora_run_trains_only_the_adapters(lora_run, base_dir):
    _, _, solver = lora_run
    trained = {n for n, p in solver.model.named_parameters() if p.requires_grad}
    assert trained and all(adapters.is_lora_parameter(n) for n in trained)
    in_optimizer = {id(p) for group in solver.optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in solver.model.parameters() if p.requires_grad}
    assert set(solver.ema.state["model"]) <= trained | {n for n, _ in solver.model.named_buffers()}
    assert any(adapters.is_lora_parameter(n) for n in solver.ema.state["model"])
    base = load_jasco_model(base_dir).state_dict()
    live = {adapters.published_name(k): v for k, v in solver.model.state_dict().items()
            if not adapters.is_lora_parameter(k)}
    assert set(live) == set(base) and all(torch.equal(live[k], v) for k, v in base.items())  # frozen
    moved = [n for n, p in solver.model.named_parameters() if "lora_B" in n and p.abs().sum() > 0]
    assert moved  # B starts at 0: the adapters did train
    checkpoint = torch.load(solver.checkpoint_path, weights_only=True)
    assert adapters.has_lora(checkpoint["model"]) and adapters.has_lora(checkpoint["best_state"]["model"])


def test_lora_exports_merged_and_as_adapters(lora_run, base_dir, tmp_path):
    _, _, solver = lora_run
    with solver.swap_best_state():
        expected = outputs(solver.model)
    merged_dir = export_checkpoint(solver.checkpoint_path, tmp_path / "merged")
    merged = load_jasco_model(merged_dir)  # plain loader, strict
    assert not adapters.has_lora(merged.state_dict()) and merged.cfg.finetune.lora.use is False
    torch.testing.assert_close(outputs(merged), expected, atol=1e-5, rtol=0)
    adapter_dir = export_checkpoint(solver.checkpoint_path, tmp_path / "adapter", adapter=True)
    pointer = json.loads((adapter_dir / adapters.POINTER_FILE).read_text())
    assert pointer["base_model"] == str(base_dir.resolve()) and pointer["trained"] == []
    api = JASCO.get_pretrained(base_dir, device="cpu", adapter=adapter_dir)
    torch.testing.assert_close(outputs(api.model), expected, atol=1e-5, rtol=0)


def test_lora_run_resumes(lora_run):
    dora_dir, overrides, finished = lora_run
    solver, _ = solver_for(dora_dir, overrides)
    assert solver.restore()
    ours, theirs = solver.model.state_dict(), finished.model.state_dict()
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert solver.updates == finished.updates == 2 and solver.optimizer.state  # AdamW moments restored
    assert all(torch.equal(solver.ema.state["model"][k], v) for k, v in finished.ema.state["model"].items())
    solver.cfg.optim.epochs = 2  # one more epoch from the checkpoint
    solver.run()
    assert solver.epoch == 3 and solver.updates == 4


def test_new_control_is_created_and_the_rest_loads_strictly(tmp_path, caplog):
    """Melody on a chords+drums base: melody weights fresh, zero input columns, everything else the base's."""
    cfg = debug_cfg("conditioner=jasco_chords_drums")
    base = debug_model(cfg, seed=8)
    assert "melody" not in base.condition_provider.conditioners
    base_dir = export_model(base, tmp_path / "base_cd")
    run = QUICK + LORA + [f"continue_from={base_dir}"]
    with pytest.raises(ContinuationError, match="melody"):
        solver_for(tmp_path / "dora", run)
    with caplog.at_level(logging.INFO, logger="jasco.solvers.finetune"):
        solver, _ = solver_for(tmp_path / "dora", run + ["finetune.new_controls=[melody]"])
    assert "New controls ['melody']" in caplog.text and "emb.weight" in caplog.text
    model = solver.model
    trained = {adapters.published_name(n) for n, p in model.named_parameters()
               if p.requires_grad and not adapters.is_lora_parameter(n)}
    assert trained == {"emb.weight", "condition_provider.conditioners.melody.output_proj.weight",
                       "condition_provider.conditioners.melody.output_proj.bias"}
    state = {adapters.published_name(k): v for k, v in model.state_dict().items() if not adapters.is_lora_parameter(k)}
    base_state = base.state_dict()
    for key, value in base_state.items():
        if key != "emb.weight":
            assert torch.equal(state[key], value), key
    flow = 128 + 16 + 2
    assert torch.equal(state["emb.weight"][:, :flow], base_state["emb.weight"])
    assert not state["emb.weight"][:, flow:].any()
    # the new control does not change the output until it is trained
    torch.testing.assert_close(outputs(model, melody=True), outputs(base), atol=1e-5, rtol=0)


def test_new_chord_vocabulary(base_dir, tmp_path):
    labels = [*ChordVocabulary.builtin().labels[:39], "UNK"]
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps({label: i for i, label in enumerate(labels)}))
    run = QUICK + LORA + [f"continue_from={base_dir}", "conditioners.chords.chords_emb.card=40",
                          f"chords_vocabulary={vocab}"]
    with pytest.raises(ContinuationError, match=r"conditioners.chords.card: this run 40 / starting model 194"):
        solver_for(tmp_path / "dora", run)
    solver, _ = solver_for(tmp_path / "dora", run + ["finetune.new_controls=[chords]"])
    emb = solver.model.condition_provider.conditioners["chords"].emb.weight
    assert emb.shape[0] == 41 and emb.requires_grad
    base = load_jasco_model(base_dir).state_dict()
    state = {adapters.published_name(k): v for k, v in solver.model.state_dict().items()
             if not adapters.is_lora_parameter(k)}
    assert all(torch.equal(state[k], v) for k, v in base.items() if not k.startswith("condition_provider.conditioners.chords."))
