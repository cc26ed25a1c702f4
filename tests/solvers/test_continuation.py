"""`continue_from`: //sig, checkpoint paths, //pretrained exports, export folders and files, unknown
sources, architecture mismatches."""
from __future__ import annotations

import pytest
import torch
from helpers_training import ensure_example, experiment

from jasco.export import export_checkpoint
from jasco.solvers.continuation import ContinuationError, load_source

QUICK = ["solver=jasco/debug", "optim.epochs=1", "generate.every=0", "evaluate.every=0"]


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A finished one-epoch debug experiment: (dora dir, signature, best state)."""
    ensure_example()
    from jasco.train import get_solver
    dora_dir = tmp_path_factory.mktemp("dora")
    with experiment(dora_dir, QUICK) as xp:
        solver = get_solver(xp.cfg)
        solver.run()
        return dora_dir, xp.sig, {k: v.clone() for k, v in solver.best_state["model"].items()}


def start(dora_dir, overrides):
    from jasco.train import get_solver
    with experiment(dora_dir, overrides) as xp:
        return get_solver(xp.cfg)


def assert_same_weights(model, state):
    ours = model.state_dict()
    assert set(ours) == set(state)
    for key, value in state.items():
        assert torch.equal(ours[key], value), key


def test_continue_from_sig_and_path(source_run):
    dora_dir, sig, best = source_run
    solver = start(dora_dir, QUICK + ["optim.lr=5e-4", f"continue_from=//sig/{sig}"])
    assert_same_weights(solver.model, best)
    assert solver.epoch == 1 and not solver.optimizer.state  # fresh optimizer
    checkpoint = dora_dir / "xps" / sig / "checkpoint.th"
    solver = start(dora_dir, QUICK + ["optim.lr=2e-4", f"continue_from={checkpoint}"])
    assert_same_weights(solver.model, best)


def test_architecture_mismatch_lists_keys_and_can_adopt(source_run):
    dora_dir, sig, best = source_run
    with pytest.raises(ContinuationError, match=r"transformer_lm\.num_layers: this run 3 / starting model 2"):
        start(dora_dir, QUICK + ["transformer_lm.num_layers=3", f"continue_from=//sig/{sig}"])
    solver = start(dora_dir, QUICK + ["transformer_lm.num_layers=3", f"continue_from=//sig/{sig}",
                                      "continue_from_config=true"])
    assert len(solver.model.transformer.layers) == 2
    assert_same_weights(solver.model, best)


def test_own_checkpoint_wins_over_continue_from(source_run, tmp_path):
    dora_dir, sig, best = source_run
    from jasco.train import get_solver
    overrides = QUICK + ["optim.lr=7e-4", f"continue_from=//sig/{sig}"]
    with experiment(dora_dir, overrides) as xp:
        solver = get_solver(xp.cfg)
        solver.run()
        own = {k: v.clone() for k, v in solver.model.state_dict().items()}
    solver = start(dora_dir, overrides)  # its own checkpoint.th exists now: continue_from is ignored
    assert solver.restore()
    assert_same_weights(solver.model, own)


def test_continue_from_pretrained_export(source_run, tmp_path):
    dora_dir, sig, best = source_run
    out = tmp_path / "exported"
    export_checkpoint(dora_dir / "xps" / sig / "checkpoint.th", out)
    solver = start(dora_dir, QUICK + ["optim.lr=3e-4", f"continue_from=//pretrained/{out}"])
    assert_same_weights(solver.model, best)


def test_missing_source_is_a_clear_error(source_run):
    dora_dir, _, _ = source_run
    with pytest.raises(FileNotFoundError, match="nonexistent"):
        start(dora_dir, QUICK + ["continue_from=//sig/nonexistent"])


def test_continue_from_export_folder_and_file(source_run, tmp_path):
    dora_dir, sig, best = source_run
    out = tmp_path / "exported"
    export_checkpoint(dora_dir / "xps" / sig / "checkpoint.th", out)
    # An export folder works without //pretrained/, and so does its state_dict.bin.
    solver = start(dora_dir, QUICK + ["optim.lr=4e-4", f"continue_from={out}"])
    assert_same_weights(solver.model, best)
    state, cfg = load_source(str(out / "state_dict.bin"))
    assert set(state) == set(best) and all(torch.equal(state[k], v) for k, v in best.items())
    assert cfg["transformer_lm"]["num_layers"] == 2
    renamed = out / "my_model.bin"  # an export under another name is recognised by its contents
    renamed.write_bytes((out / "state_dict.bin").read_bytes())
    state, _ = load_source(str(renamed))
    assert all(torch.equal(state[k], v) for k, v in best.items())
    # An experiment folder is still read through its checkpoint.th.
    state, _ = load_source(str(dora_dir / "xps" / sig))
    assert all(torch.equal(state[k], v) for k, v in best.items())


ACCEPTED = (r"Accepted sources: //pretrained/NAME_OR_DIR \(a Hugging Face repo id or an exported folder\), "
            r"//sig/SIG \(another experiment\), a checkpoint.th file, an experiment folder \(holding checkpoint.th\), "
            r"an export folder \(holding state_dict.bin, written by jasco-export\) or a state_dict.bin file")


def test_unknown_sources_list_the_accepted_forms(tmp_path):
    with pytest.raises(ContinuationError, match=rf"continue_from={tmp_path}/nothing: .*nothing does not exist. "
                                                rf"{ACCEPTED}"):
        load_source(str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ContinuationError, match=r"the folder .*empty holds neither checkpoint.th \(an experiment "
                                                rf"folder\) nor state_dict.bin \(an export folder\). {ACCEPTED}"):
        load_source(str(tmp_path / "empty"))
    with pytest.raises(ContinuationError, match=r"For a Hugging Face repo id write "
                                                r"continue_from=//pretrained/facebook/not-here"):
        load_source("facebook/not-here")
    with pytest.raises(ContinuationError, match=rf"continue_from=//pretrained/ names no model. {ACCEPTED}"):
        load_source("//pretrained/")


def test_chord_vocabulary_must_match_the_starting_model(source_run):
    dora_dir, sig, best = source_run  # trained with chords_vocabulary=builtin (recorded in its xp.cfg)
    with pytest.raises(ContinuationError, match=r"trained with the chord vocabulary 'builtin' but this run has "
                                                r"chords_vocabulary='published' .*set chords_vocabulary=builtin"):
        start(dora_dir, QUICK + ["chords_vocabulary=published", f"continue_from=//sig/{sig}"])
    solver = start(dora_dir, QUICK + ["optim.lr=6e-4", f"continue_from=//sig/{sig}"])  # the same vocabulary: fine
    assert_same_weights(solver.model, best)
