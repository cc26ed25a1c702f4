"""The evaluate stage's metrics: samples scored against their own conditions, CSV, ablation rows,
unavailable metrics, `execute_only=evaluate` (also of an exported model) and the explorer table."""
from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from helpers_training import ensure_example, experiment
from omegaconf import OmegaConf

from jasco.data.attributes import ConditioningAttributes, WavCondition
from jasco.metrics import TEXT_ONLY, WITH_CONTROLS, EvaluationTable, SampleConditions
from jasco.solvers.evaluation import (
    evaluate_generations,
    evaluation_settings,
    text_only,
)

# One tiny training run whose last epoch evaluates with the default metrics and the ablation.
RUN = ["solver=jasco/debug", "optim.epochs=1", "optim.updates_per_epoch=1", "schedule.cosine.warmup=0",
       "generate.every=0", "evaluate.every=1", "evaluate.drop_controls=true"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    ensure_example()
    from jasco.train import get_solver
    dora_dir = tmp_path_factory.mktemp("dora")
    with experiment(dora_dir, RUN) as xp:
        solver = get_solver(xp.cfg)
        solver.run()
    return dora_dir, solver


def read_rows(folder):
    with (folder / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def test_evaluate_stage_writes_samples_csv_and_means(trained):
    _, solver = trained
    folder = solver.folder / "evaluate" / "1"
    rows = read_rows(folder)
    with_controls = [row for row in rows if row["controls"] == WITH_CONTROLS]
    assert len(with_controls) == len(solver.dataloaders["evaluate"].dataset)
    for row in with_controls:
        assert (folder / f"{row['sample']}.wav").is_file()
        for column in ("chords_iou", "onset_f1", "chroma_similarity"):  # the example has every condition
            assert 0.0 <= float(row[column]) <= 1.0, (column, row)
        assert row["unavailable"] == ""
    means = solver.history[-1]["evaluate"]
    assert {"loss", "loss_t0.5", "chords_iou", "onset_f1", "chroma_similarity", "fad"} <= set(means)
    assert means["fad"] > 0 and math.isfinite(means["fad"])
    assert means["onset_f1"] == pytest.approx(sum(float(r["onset_f1"]) for r in with_controls) / len(with_controls), abs=1e-5)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary[WITH_CONTROLS]["means"]["fad"] == pytest.approx(means["fad"])
    assert list((solver.folder / "evaluate" / "reference_statistics").glob("fad_mel_*.npz"))  # cached


def test_drop_controls_adds_text_only_rows(trained):
    _, solver = trained
    folder = solver.folder / "evaluate" / "1"
    rows = read_rows(folder)
    names = {c: sorted(r["sample"] for r in rows if r["controls"] == c) for c in (WITH_CONTROLS, TEXT_ONLY)}
    assert names[WITH_CONTROLS] == names[TEXT_ONLY] and names[TEXT_ONLY]
    assert all((folder / TEXT_ONLY / f"{name}.wav").is_file() for name in names[TEXT_ONLY])
    means = solver.history[-1]["evaluate"]
    assert {"text_only_chords_iou", "text_only_onset_f1", "text_only_fad"} <= set(means)
    # Same noise, other conditions: the text-only samples differ from the controlled ones.
    from jasco.audio.io import audio_read
    a, _ = audio_read(folder / f"{names[TEXT_ONLY][0]}.wav")
    b, _ = audio_read(folder / TEXT_ONLY / f"{names[TEXT_ONLY][0]}.wav")
    assert a.shape == b.shape and not torch.allclose(a, b)


def test_text_only_nulls_every_control():
    attributes = ConditioningAttributes(text={"description": "pop"},
                                        wav={"self_wav": WavCondition(torch.zeros(1, 8), 32000)},
                                        symbolic={"chords": torch.zeros(4, dtype=torch.long), "melody": torch.ones(53, 4)})
    out = text_only(attributes)
    assert out.text == {"description": "pop"} and out.wav["self_wav"].is_null
    assert out.symbolic == {"chords": None, "melody": None}
    assert attributes.symbolic["chords"] is not None  # the original is untouched


def test_unavailable_metric_is_reported_with_its_reason(trained, caplog):
    _, solver = trained
    cfg = OmegaConf.merge(solver.cfg.evaluate, {"path": "evaluate_vggish", "drop_controls": False, "metrics": {
        "chords": {"use": False}, "onsets": {"use": True}, "melody": {"use": False},
        "fad": {"use": True, "embedding": "vggish", "weights": None}}})
    with caplog.at_level("WARNING"):
        means = evaluate_generations(solver, solver.dataloaders["evaluate"], evaluation_settings(cfg))
    assert math.isnan(means["fad"])  # never 0
    assert "metric fad is unavailable" in caplog.text and "weights" in caplog.text
    folder = solver.folder / "evaluate_vggish" / str(solver.epoch)
    summary = json.loads((folder / "summary.json").read_text())
    assert "weights" in summary[WITH_CONTROLS]["unavailable"]["fad"]
    assert summary[WITH_CONTROLS]["means"]["fad"] is None
    assert all(row["onset_f1"] for row in read_rows(folder))


def test_unavailable_cell_and_reason_in_the_csv(tmp_path):
    table = EvaluationTable()
    table.add(WITH_CONTROLS, SampleConditions("a"), {"onset_f1": 0.5}, {"chords": "chordino is not installed"})
    table.add(WITH_CONTROLS, SampleConditions("b"), {"onset_f1": 1.0, "chords_iou": 0.25}, {})
    table.write(tmp_path)
    rows = read_rows(tmp_path)
    assert rows[0]["chords_iou"] == "unavailable" and "chords: chordino is not installed" in rows[0]["unavailable"]
    assert rows[1]["chords_iou"] == "0.25"
    assert table.means(WITH_CONTROLS) == {"onset_f1": 0.75, "chords_iou": 0.25}
    only_missing = EvaluationTable()
    only_missing.add(WITH_CONTROLS, SampleConditions("a"), {}, {"chords": "no chordino"})
    assert math.isnan(only_missing.means(WITH_CONTROLS)["chords_iou"])


@pytest.mark.parametrize(("override", "message"), [
    ({"metrics": {"fad": {"embeding": "mel"}}}, r"evaluate.metrics.fad: unknown key\(s\) \['embeding'\]"),
    ({"metrics": {"kld": {"use": True}}}, r"evaluate.metrics: unknown key\(s\) \['kld'\]"),
    ({"metrics": {"chords": {"backend": "magic"}}}, r"evaluate.metrics.chords.backend='magic'"),
    ({"metrics": {"fad": {"embedding": "pann"}}}, r"evaluate.metrics.fad.embedding='pann'"),
])
def test_settings_reject_unknown_keys_and_values(override, message):
    from helpers_inference import debug_cfg
    section = OmegaConf.merge(OmegaConf.to_container(debug_cfg().evaluate), override)
    with pytest.raises(ValueError, match=message):
        evaluation_settings(section)


def test_execute_only_evaluate(trained, caplog):
    dora_dir, solver = trained
    from jasco.train import get_solver
    with experiment(dora_dir, RUN + ["execute_only=evaluate"]) as xp:
        assert xp.folder == solver.folder
        again = get_solver(xp.cfg)
        with caplog.at_level("INFO"):
            again.run()
    assert "Evaluate Summary | Epoch 1" in caplog.text and "chords_iou" in caplog.text
    assert (solver.folder / "evaluate" / "1" / "metrics.csv").is_file()


def test_execute_only_evaluate_of_an_exported_model(trained, tmp_path):
    """`execute_only=evaluate continue_from=EXPORT` scores the exported model without training it."""
    dora_dir, solver = trained
    from helpers_inference import export_model

    from jasco.train import get_solver
    model = solver.model
    model.cfg = solver.cfg
    export = export_model(model, tmp_path / "export")
    overrides = RUN + ["execute_only=evaluate", f"continue_from={export}", "evaluate.drop_controls=false"]
    with experiment(dora_dir, overrides) as xp:
        assert not (xp.folder / "checkpoint.th").exists()
        evaluator = get_solver(xp.cfg)
        evaluator.run()
    rows = read_rows(xp.folder / "evaluate" / "0")  # epoch 0: the continue_from weights
    assert rows and all(row["controls"] == WITH_CONTROLS for row in rows)
    assert not (xp.folder / "checkpoint.th").exists()  # nothing saved


def test_explorer_table_shows_the_metrics(trained):
    import treetable as tt

    from jasco.grids._explorers import JascoExplorer
    _, solver = trained
    explorer = JascoExplorer.__new__(JascoExplorer)  # the table needs no Dora launcher
    history = json.loads(json.dumps(solver.history))  # as Dora reads history.json
    history[-1]["evaluate"]["clap"] = math.nan  # unavailable: NaN in the history
    line = explorer.process_history(history)
    table = tt.treetable([line], tt.table(shorten=True, groups=explorer.get_grid_metrics()))  # as `dora grid`
    for name in ("chord_iou", "onset_f1", "melody", "fad", "clap", "text only"):
        assert name in table, table
    assert f"{history[-1]['evaluate']['onset_f1']:.4g}" in table and "n/a" in table
    assert line["text only"]["onset_f1"] == f"{history[-1]['evaluate']['text_only_onset_f1']:.4g}"
