"""jasco.export and `jasco-export`: training checkpoints become loadable, equivalent exports."""
from __future__ import annotations

import errno
import os

import pytest
import torch
from helpers_inference import debug_cfg, debug_model, write_training_checkpoint
from omegaconf import OmegaConf

import jasco
from jasco import files
from jasco.data.attributes import ConditioningAttributes
from jasco.export import (
    export_checkpoint,
    export_encodec,
    export_lm,
    export_pretrained_compression_model,
    find_checkpoint,
)
from jasco.export import main as export_main
from jasco.models.codec import EncodecCompressionModel
from jasco.models.loaders import load_compression_model, load_jasco


@pytest.fixture(scope="module")
def model():
    return debug_model(seed=1)


@pytest.fixture(scope="module")
def run_dir(model, tmp_path_factory):
    """A Dora-like experiment folder `<dora>/xps/SIG/checkpoint.th` of the debug model."""
    dora = tmp_path_factory.mktemp("dora")
    xp = dora / "xps" / "abc123"
    xp.mkdir(parents=True)
    write_training_checkpoint(xp / "checkpoint.th", model.state_dict(), OmegaConf.to_yaml(model.cfg))
    return xp


def _generate(model, seed: int = 0) -> torch.Tensor:
    attrs = [ConditioningAttributes(text={"description": "calm piano"},
                                    symbolic={"chords": torch.tensor([1] * 50 + [5] * 50)})]
    noise = torch.randn(1, 100, 128, generator=torch.Generator().manual_seed(seed))
    return model.generate(attrs, cfg_coef_all=3.0, cfg_coef_txt=1.0, solver="euler", euler_steps=3,
                          initial_noise=noise)


def test_export_lm_format(model, tmp_path):
    path = export_lm(model.state_dict(), model.cfg, tmp_path / "state_dict.bin")
    package = torch.load(path, weights_only=True)
    assert set(package) == {"best_state", "xp.cfg", "version", "exported"}
    assert package["exported"] is True and package["version"] == jasco.__version__
    assert isinstance(package["xp.cfg"], str)
    assert OmegaConf.create(package["xp.cfg"]).transformer_lm.dim == 64
    assert all(torch.equal(package["best_state"][k], v) for k, v in model.state_dict().items())
    assert [p.name for p in tmp_path.iterdir()] == ["state_dict.bin"]  # no temporary file left


def test_codec_exports(tmp_path):
    pointer = torch.load(export_pretrained_compression_model("facebook/encodec_32khz", tmp_path / "p.bin"),
                         weights_only=True)
    assert pointer == {"pretrained": "facebook/encodec_32khz", "exported": True, "version": jasco.__version__}
    codec = EncodecCompressionModel.debug(seed=2, num_codebooks=2, latent_mean=0.5, latent_std=3.0)
    reloaded = load_compression_model(export_encodec(codec, tmp_path / "full.bin"))
    assert (reloaded.latent_mean, reloaded.latent_std, reloaded.num_codebooks) == (0.5, 3.0, 2)
    wav = torch.randn(1, 1, 3200)
    assert torch.equal(reloaded.encode_codes(wav, 2), codec.encode_codes(wav, 2))


def test_export_checkpoint_gives_identical_generations(model, run_dir, tmp_path):
    out = export_checkpoint(run_dir / "checkpoint.th", tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == ["compression_state_dict.bin", "state_dict.bin"]
    codec_file = torch.load(out / "compression_state_dict.bin", weights_only=True)
    assert "best_state" in codec_file  # `debug` codec: a full copy, not a pointer
    loaded = load_jasco(out)
    assert torch.equal(_generate(loaded.model), _generate(model))
    wav = torch.randn(1, 1, 6400)
    assert torch.equal(loaded.compression_model.encode(wav), model.condition_provider.conditioners[
        "self_wav"].compression_model.encode(wav))


def test_export_prefers_fsdp_best_state_and_points_to_hub_codecs(model, tmp_path):
    cfg = OmegaConf.to_container(model.cfg, resolve=True)
    cfg["compression_model_checkpoint"] = "//pretrained/facebook/encodec_32khz"
    fsdp = {k: v * 2 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    ckpt = write_training_checkpoint(tmp_path / "checkpoint.th", model.state_dict(), OmegaConf.to_yaml(cfg), fsdp)
    out = export_checkpoint(ckpt, tmp_path / "out")
    assert torch.load(out / "compression_state_dict.bin", weights_only=True)["pretrained"] == "facebook/encodec_32khz"
    exported = torch.load(out / "state_dict.bin", weights_only=True)["best_state"]
    assert torch.equal(exported["emb.weight"], fsdp["emb.weight"])


def test_export_checkpoint_without_best_state(tmp_path):
    torch.save({"xp.cfg": "a: 1", "best_state": {}, "model": {"w": torch.zeros(1)}}, tmp_path / "checkpoint.th")
    with pytest.raises(ValueError, match="no best state"):
        export_checkpoint(tmp_path / "checkpoint.th", tmp_path / "out")
    assert not (tmp_path / "out" / "state_dict.bin").exists()


def test_find_checkpoint(run_dir, tmp_path, monkeypatch):
    ckpt = run_dir / "checkpoint.th"
    assert find_checkpoint(ckpt) == ckpt
    assert find_checkpoint(run_dir) == ckpt
    monkeypatch.setenv("JASCO_DORA_DIR", str(run_dir.parents[1]))
    assert find_checkpoint("abc123") == ckpt
    assert find_checkpoint("//sig/abc123") == ckpt
    with pytest.raises(FileNotFoundError, match="JASCO_DORA_DIR"):
        find_checkpoint("nosuchsig")
    with pytest.raises(FileNotFoundError, match="has no checkpoint.th"):
        find_checkpoint(tmp_path)


def test_export_cli_with_a_signature(model, run_dir, tmp_path, capsys):
    assert export_main(["abc123", str(tmp_path / "out"), "--dora-dir", str(run_dir.parents[1])]) == 0
    assert "exported" in capsys.readouterr().out
    loaded = load_jasco(tmp_path / "out")
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in model.state_dict().items())


def test_debug_cfg_round_trips_through_yaml():
    cfg = debug_cfg()
    assert OmegaConf.create(OmegaConf.to_yaml(cfg, resolve=True)).transformer_lm.flow_dim == 128


# ---------------------------------------------------------------- file hygiene
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_exported_files_get_the_umask_mode_not_0600(run_dir, tmp_path, umask):
    previous = os.umask(umask)
    try:
        out = export_checkpoint(run_dir / "checkpoint.th", tmp_path / "shared")
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes == {"state_dict.bin": 0o666 & ~umask, "compression_state_dict.bin": 0o666 & ~umask}


def test_full_disk_while_exporting_is_a_clear_error(model, tmp_path, monkeypatch):
    def full_disk(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 part of an export")
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:  # torch.save reports it like this, the OSError only in the chain
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0") from None

    monkeypatch.setattr(torch, "save", full_disk)
    target = tmp_path / "out" / "state_dict.bin"
    with pytest.raises(files.DiskFullError) as info:
        export_lm(model.state_dict(), model.cfg, target)
    message = str(info.value)
    assert message.startswith(f"No space left on device while writing {target} (needs ~")
    assert "MB" in message and message.endswith("free space or export to a folder on another disk")
    assert os.listdir(tmp_path / "out") == []  # no temp file left behind
