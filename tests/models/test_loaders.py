"""jasco.models.loaders: published/exported checkpoints load strictly, offline, with clear errors."""
from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import time
import warnings

import pytest
import torch
from helpers_inference import (
    debug_cfg,
    debug_model,
    export_model,
    write_training_checkpoint,
)
from omegaconf import OmegaConf
from reference_files import (
    CHORD_MAPPING,
    CODEC_PREFIX,
    SHAPES,
    SMALL_REF,
    assert_close,
    require,
)
from transformers import EncodecModel

from jasco import hub, safe_load
from jasco.controls.chords.vocabulary import ChordVocabulary
from jasco.export import export_lm, export_pretrained_compression_model
from jasco.models import loaders
from jasco.models.builders import get_flow_matching_model
from jasco.models.codec import (
    EncodecCompressionModel,
    convert_weight_norm_keys,
    encodec_32khz_config,
)
from jasco.models.loaders import (
    ModelLoadError,
    UnknownChordVocabularyError,
    load_chord_vocabulary,
    load_compression_model,
    load_jasco,
    load_jasco_model,
    load_lm_state,
)

SMALL_EXPORT = SMALL_REF.parent / "export"
PUBLISHED_400M = "jasco-chords-drums-400M (solver=jasco/chords_drums, model/lm/model_scale=small)"


@pytest.fixture(scope="module")
def ref():
    return torch.load(require(SMALL_REF), weights_only=True)


def _forward_matches(model, ref) -> None:
    fwd = ref["forward"]
    with torch.no_grad():
        v = model(fwd["z"], fwd["t"], condition_tensors=ref["condition_tensors"])
    assert_close(v, fwd["v"], what="v")


def test_small_ref_export_loads_offline_and_reproduces_forward(ref):
    loaded = load_jasco(require(SMALL_EXPORT / "state_dict.bin").parent)
    model = loaded.model
    assert not model.training and OmegaConf.is_config(model.cfg)
    assert model.cfg.transformer_lm.dim == 64
    # The pointer says facebook/encodec_32khz, but the embedded reduced codec is used: no download.
    assert loaded.compression_model is model.condition_provider.conditioners["self_wav"].compression_model
    assert loaded.compression_model.model.config.num_filters == 4
    assert loaded.compression_model.latent_std == pytest.approx(4.0102)
    _forward_matches(model, ref)


def test_legacy_weight_norm_names_load(ref, tmp_path):
    package = torch.load(require(SMALL_EXPORT / "state_dict.bin"), weights_only=True)
    legacy = convert_weight_norm_keys(package["best_state"], "legacy")
    assert any(k.endswith(".weight_g") for k in legacy)
    torch.save({**package, "best_state": legacy}, tmp_path / "state_dict.bin")
    shutil.copy(SMALL_EXPORT / "compression_state_dict.bin", tmp_path)
    _forward_matches(load_jasco_model(tmp_path), ref)


def _reduced_published_cfg(dim: int, heads: int) -> dict:
    entry = json.loads(require(SHAPES).read_text())["models"][PUBLISHED_400M]
    cfg = {k: copy.deepcopy(entry[k]) for k in ("transformer_lm", "conditioners", "fuser", "attribute_dropout",
                                                 "classifier_free_guidance", "compression_model_latent_mean",
                                                 "compression_model_latent_std")}
    cfg["transformer_lm"].update(dim=dim, num_heads=heads, emb_lr=None, two_step_cfg=False, n_q=4, card=2048)
    cfg["compression_model_checkpoint"] = "//pretrained/facebook/encodec_32khz"
    cfg["dataset"] = {"segment_duration": 10}
    return cfg


def _round_trip(cfg: dict, codec: EncodecCompressionModel, tmp_path) -> tuple[dict, dict]:
    model = get_flow_matching_model(loaders.model_config(cfg), codec)
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
             for k, v in model.state_dict().items()}
    export_lm(state, cfg, tmp_path / "state_dict.bin")
    export_pretrained_compression_model("facebook/encodec_32khz", tmp_path / "compression_state_dict.bin")
    loaded = load_jasco_model(tmp_path)  # strict; the embedded codec avoids the pointer's download
    return state, loaded.state_dict()


def test_published_400m_layout_round_trips_at_reduced_width(tmp_path):
    """Every published key (24 layers, 4-codebook codec) survives export -> strict load; widths reduced."""
    cfg = _reduced_published_cfg(dim=16, heads=2)
    codec = EncodecCompressionModel(EncodecModel(encodec_32khz_config(num_filters=4)))
    state, reloaded = _round_trip(cfg, codec, tmp_path)
    published = json.loads(SHAPES.read_text())["models"][PUBLISHED_400M]["state_dict"]
    assert set(state) == set(published)
    assert set(reloaded) == set(state)
    assert all(torch.equal(reloaded[k], state[k]) for k in state)


@pytest.mark.slow
def test_published_400m_full_size_round_trip(tmp_path):
    cfg = _reduced_published_cfg(dim=1024, heads=16)
    codec = EncodecCompressionModel(EncodecModel(encodec_32khz_config()))
    state, reloaded = _round_trip(cfg, codec, tmp_path)
    published = json.loads(SHAPES.read_text())["models"][PUBLISHED_400M]["state_dict"]
    assert {k: list(v.shape) for k, v in reloaded.items()} == published
    assert all(torch.equal(reloaded[k], state[k]) for k in state)


# ---------------------------------------------------------------- our exports and checkpoints
@pytest.fixture(scope="module")
def chords_only(tmp_path_factory):
    """A debug model without drums (so no embedded codec) and its export."""
    model = debug_model(debug_cfg("conditioner=jasco_chords"))
    return model, export_model(model, tmp_path_factory.mktemp("chords_only"))


def test_codec_comes_from_the_codec_file_when_not_embedded(chords_only):
    model, folder = chords_only
    assert not any(k.startswith(CODEC_PREFIX) for k in model.state_dict())
    loaded = load_jasco(folder)
    assert set(loaded.model.condition_provider.conditioners) == {"description", "chords"}
    expected = EncodecCompressionModel.debug().model.state_dict()
    got = loaded.compression_model.model.state_dict()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    reloaded = loaded.model.state_dict()
    assert all(torch.equal(reloaded[k], v) for k, v in model.state_dict().items())


def test_training_checkpoint_loads_with_fsdp_state_preferred(chords_only, tmp_path):
    model, _ = chords_only
    state = model.state_dict()
    fsdp = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    path = write_training_checkpoint(tmp_path / "checkpoint.th", state, OmegaConf.to_yaml(model.cfg), fsdp)
    loaded_state, cfg, file = load_lm_state(path)
    assert file == path and cfg.transformer_lm.dim == 64
    assert torch.equal(loaded_state["emb.weight"], fsdp["emb.weight"])
    path = write_training_checkpoint(tmp_path / "checkpoint2.th", state, OmegaConf.to_yaml(model.cfg))
    assert torch.equal(load_jasco_model(path).emb.weight, state["emb.weight"])


def test_pointer_to_a_local_codec_folder(tmp_path):
    codec = EncodecCompressionModel.debug(seed=3)
    codec.save_pretrained(tmp_path / "codec")
    export_pretrained_compression_model(str(tmp_path / "codec"), tmp_path / "compression_state_dict.bin")
    loaded = load_compression_model(tmp_path, latent_std=2.0)
    assert loaded.latent_std == 2.0
    assert torch.equal(loaded.model.quantizer.layers[0].codebook.embed, codec.model.quantizer.layers[0].codebook.embed)


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("content", [b"", b"not a torch file at all", "truncated"])
def test_corrupt_or_truncated_file_names_the_file(chords_only, tmp_path, content):
    _, folder = chords_only
    bad = tmp_path / "state_dict.bin"
    data = (folder / "state_dict.bin").read_bytes()
    bad.write_bytes(data[: len(data) // 2] if content == "truncated" else content)
    with pytest.raises(ModelLoadError, match=r"corrupt or truncated.*") as info:
        load_jasco_model(bad)
    assert str(bad) in str(info.value)


def test_wrong_contents_give_clear_errors(chords_only, tmp_path):
    model, folder = chords_only
    torch.save([1, 2, 3], tmp_path / "list.bin")
    with pytest.raises(ModelLoadError, match="holds a list"):
        load_jasco_model(tmp_path / "list.bin")
    torch.save({"best_state": model.state_dict()}, tmp_path / "nocfg.bin")
    with pytest.raises(ModelLoadError, match="no 'xp.cfg'"):
        load_jasco_model(tmp_path / "nocfg.bin")
    extra = {**model.state_dict(), "rogue.weight": torch.zeros(1)}
    export_lm(extra, model.cfg, tmp_path / "extra" / "state_dict.bin")
    shutil.copy(folder / "compression_state_dict.bin", tmp_path / "extra")
    with pytest.raises(ModelLoadError, match=r"1 unexpected \(e.g. \['rogue.weight'\]\)"):
        load_jasco_model(tmp_path / "extra")
    torch.save({"weights": 1}, tmp_path / "codec.bin")
    with pytest.raises(ModelLoadError, match="neither a codec pointer"):
        load_compression_model(tmp_path / "codec.bin")


def test_unsafe_pickle_is_refused(tmp_path):
    torch.save({"best_state": {}, "xp.cfg": OmegaConf.create({"a": 1})}, tmp_path / "state_dict.bin")
    with pytest.raises(ModelLoadError, match="weights_only") as info:
        load_jasco_model(tmp_path / "state_dict.bin")
    assert "omegaconf.dictconfig.DictConfig" in str(info.value) and "corrupt" not in str(info.value)


class RunsACommand:
    """Unpickling this would call os.system: refused by the safe loader, never run."""

    def __reduce__(self):
        return os.system, ("touch SHOULD_NEVER_EXIST",)


@pytest.mark.parametrize("legacy", [False, True])
def test_malicious_file_is_named_as_such_and_not_executed(tmp_path, monkeypatch, legacy):
    monkeypatch.chdir(tmp_path)
    torch.save({"best_state": {"w": torch.zeros(2)}, "xp.cfg": RunsACommand()}, tmp_path / "state_dict.bin",
               _use_new_zipfile_serialization=not legacy)
    with pytest.raises(ModelLoadError) as info:
        load_jasco_model(tmp_path / "state_dict.bin")
    message = str(info.value)
    assert "contains objects that the safe loader (torch.load weights_only=True) refuses: the global" in message
    assert ("posix.system" in message or "nt.system" in message) and "jasco will not execute it" in message
    assert "corrupt or truncated" not in message
    assert not (tmp_path / "SHOULD_NEVER_EXIST").exists()


def test_torch_older_than_2_6_is_refused(chords_only, monkeypatch):
    _, folder = chords_only
    monkeypatch.setattr(torch, "__version__", "2.5.1+cu124")
    with pytest.raises(safe_load.UnsafeTorchError, match=r"torch 2\.5\.1\+cu124 .*CVE-2025-32434"):
        load_jasco_model(folder)


def test_missing_local_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no state_dict.bin"):
        load_jasco_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_jasco_model(str(tmp_path / "nowhere" / "model"))


def test_offline_repo_id_says_how_to_provide_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # set after huggingface_hub was imported: still honoured
    monkeypatch.setenv("JASCO_CACHE_DIR", str(tmp_path / "cache"))
    begin = time.monotonic()
    with pytest.raises(hub.HubUnavailableError, match="pass the directory instead of the repo id") as info:
        load_jasco_model("facebook/jasco-chords-drums-400M")
    assert time.monotonic() - begin < 5
    message = str(info.value)
    assert "hf download facebook/jasco-chords-drums-400M --local-dir DIR" in message
    assert "HF_HUB_OFFLINE is set" in message and "JASCO_CACHE_DIR=CACHE" in message
    assert str(tmp_path / "cache") in message


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_hub_fails_fast(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")  # refuses connections
    monkeypatch.setattr(hub, "_hub_probes", {})
    monkeypatch.setenv("JASCO_CACHE_DIR", str(tmp_path / "cache"))
    begin = time.monotonic()
    with pytest.raises(hub.HubUnavailableError, match=r"cannot be reached .*pass the directory"):
        loaders.resolve_file("someone/not-cached", "state_dict.bin")
    assert time.monotonic() - begin < 5


def test_repo_id_downloads_both_files_into_the_cache(chords_only, tmp_path, monkeypatch):
    _, folder = chords_only
    calls = []

    def fake_download(repo_id, filename, cache_dir, local_files_only):
        calls.append((repo_id, filename, cache_dir))
        target = tmp_path / "snapshot" / filename
        target.parent.mkdir(exist_ok=True)
        shutil.copy(folder / filename, target)
        return str(target)

    monkeypatch.setattr(loaders, "hf_hub_download", fake_download)
    monkeypatch.setenv("JASCO_CACHE_DIR", str(tmp_path / "cache"))
    model = load_jasco_model("someone/jasco-debug")
    assert model.cfg.transformer_lm.num_layers == 2
    assert calls[0] == ("someone/jasco-debug", "state_dict.bin", str(tmp_path / "cache"))
    assert calls[1][1] == "compression_state_dict.bin"


# ---------------------------------------------------------------- chord vocabulary
def test_chord_vocabulary_resolution(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_chord_vocabulary({"chords_vocabulary": "builtin"}).labels == ChordVocabulary.builtin().labels
    with pytest.raises(UnknownChordVocabularyError, match="records no chords_vocabulary.*chords_mapping_path="):
        load_chord_vocabulary({})  # nothing recorded, not a published model: refused, never guessed
    published = ChordVocabulary.from_spec("published").labels
    assert load_chord_vocabulary({}, source="facebook/jasco-chords-drums-400M").labels == published
    assert load_chord_vocabulary({"lm_model": "transformer_lm"}, source="/some/copy").labels == published
    custom = ChordVocabulary({"N": 0, "C": 1, "UNK": 2})
    custom.save_json(tmp_path / "vocab.json")
    assert load_chord_vocabulary({"chords_vocabulary": str(tmp_path / "vocab.json")}).labels == ["N", "C", "UNK"]
    assert load_chord_vocabulary({}, tmp_path / "vocab.json").card == 3
    with pytest.raises(UnknownChordVocabularyError, match=r"'published:/nowhere/map.pkl'.*/nowhere/map.pkl does not"):
        load_chord_vocabulary({"chords_vocabulary": "published:/nowhere/map.pkl"})
    assert load_chord_vocabulary({"chords_vocabulary": "published:/nowhere/map.pkl"}, tmp_path / "vocab.json").card == 3
    if CHORD_MAPPING.exists():
        assert load_chord_vocabulary(None, CHORD_MAPPING).index("C") == \
            ChordVocabulary.from_file(CHORD_MAPPING).index("C")


def test_best_state_of_reads_every_checkpoint_layout():
    from jasco.models.loaders import ModelLoadError, best_state_of

    weights = {"w": torch.ones(2)}
    assert best_state_of({"best_state": weights}) is weights  # an export
    assert best_state_of({"best_state": {"model": weights}}) is weights  # a training checkpoint
    assert best_state_of({"best_state": {"model": {"w": torch.zeros(2)}},
                          "fsdp_best_state": {"model": weights}}) is weights  # FSDP-trained, published
    assert best_state_of({"best_state": {"model": weights}, "fsdp_best_state": {}}) is weights
    with pytest.raises(ModelLoadError, match="ckpt.th has no best state"):
        best_state_of({"best_state": {}}, "ckpt.th")
    with pytest.raises(ModelLoadError, match="not a state_dict"):
        best_state_of({"best_state": {"w": [1.0]}})
