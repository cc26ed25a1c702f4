"""jasco.models.jasco.JASCO: shapes, windowed long generation, per-sample controls, input validation,
the chord vocabulary rule, and the docs/INFERENCE.md Python example run as written."""
from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import pytest
import torch
from helpers_inference import debug_cfg, debug_model, export_model
from omegaconf import open_dict

from jasco.audio.io import audio_read, audio_write
from jasco.controls.chords.vocabulary import ChordVocabulary, frame_chords
from jasco.controls.melody.salience import one_hot_frames, write_salience
from jasco.models.arguments import InvalidInputError
from jasco.models.codec import EncodecCompressionModel
from jasco.models.jasco import JASCO, crossfade_weights, window_starts
from jasco.models.loaders import ChordVocabularyError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "INFERENCE.md"

SR = 32000


@pytest.fixture(scope="module")
def model():
    return debug_model(seed=2)


@pytest.fixture(scope="module")
def folder(model, tmp_path_factory):
    return export_model(model, tmp_path_factory.mktemp("debug_export"))


@pytest.fixture(scope="module")
def api(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the debug model names its (builtin) vocabulary: no warning
        model = JASCO.get_pretrained(folder, device="cpu")
    model.set_generation_params(euler=True, euler_steps=2, duration=1.0)
    return model


def test_get_pretrained(api):
    assert api.segment_duration == 4.0 and api.sample_rate == SR and api.frame_rate == 50
    assert api.controls == ["chords", "drums", "melody"]
    assert api.chords_vocabulary.labels == ChordVocabulary.builtin().labels
    assert api.device.type == "cpu" and not api.model.training


def test_shapes_seed_and_controls(api):
    melody = torch.zeros(53, 50)
    melody[10] = 1
    kwargs = dict(chords=[("C", 0.0), ("G", 0.5)], drums_wav=torch.randn(2, 44100) * 0.3, drums_sample_rate=44100,
                  melody_salience_matrix=melody, seed=3)
    wav, latents = api.generate_music(["pop", "rock"], return_latents=True, **kwargs)
    assert wav.shape == (2, 1, SR) and latents.shape == (2, 50, 128)
    assert torch.isfinite(wav).all()
    assert torch.equal(api.generate_music(["pop", "rock"], **kwargs), wav)  # same seed, same audio
    assert not torch.equal(api.generate_music(["pop", "rock"], **{**kwargs, "seed": 4}), wav)
    # [T, K] melody is accepted and means the same.
    assert torch.equal(api.generate_music(["pop", "rock"], **{**kwargs, "melody_salience_matrix": melody.T}), wav)
    assert api.generate(["pop"], duration=0.3, seed=0).shape == (1, 1, int(0.3 * SR))


def test_per_sample_chords(api):
    first, second = [("C", 0.0), ("Am", 0.5)], [("F", 0.0)]
    both = api.generate_music(["jazz", "jazz"], chords=[first, second], seed=5)
    alone = api.generate_music(["jazz"], chords=first, seed=5)
    torch.testing.assert_close(both[:1], alone, atol=1e-5, rtol=0)
    same = api.generate_music(["jazz", "jazz"], chords=[first, first], seed=5)
    assert (same[1] - both[1]).abs().max() > 1e-4  # the second progression changed the second sample


def test_long_generation_is_windowed(api):
    seen = []
    generate = api.model.generate

    def spy(conditions, max_gen_len, **kwargs):
        seen.append((conditions, max_gen_len))
        return generate(conditions, max_gen_len=max_gen_len, **kwargs)

    api.model.generate = spy
    try:
        progression = [("C", 0.0), ("G", 5.0), ("D", 9.5)]
        wav, latents = api.generate_music(["long"], chords=progression, duration=10.5, seed=0, return_latents=True)
    finally:
        del api.model.generate
    assert wav.shape == (1, 1, int(10.5 * SR)) and latents.shape == (1, 525, 128)
    conditions, window = seen[0]
    assert window == 200  # the 4 s training segment
    starts = window_starts(525, 200, 100)  # overlap >= 2 s, evenly spaced
    assert starts == [0, 81, 162, 244, 325] and len(conditions) == len(starts)
    vocab = api.chords_vocabulary
    for cond, start in zip(conditions, starts):  # each window sees its own slice of the chords
        expected = frame_chords(progression, vocab, 200, 50, offset_s=start / 50)
        assert torch.equal(cond.symbolic["chords"], expected)
    assert conditions[2].symbolic["chords"][0] == vocab.index("C")  # 3.24 s: the chord still sounding
    assert torch.isfinite(latents).all()


def test_crossfade():
    starts = window_starts(525, 200, 50)
    assert starts == [0, 108, 217, 325]
    weights = crossfade_weights(starts, 200)
    cover = torch.zeros(525)
    for j, s in enumerate(starts):
        cover[s:s + 200] += weights[j]
    torch.testing.assert_close(cover, torch.ones(525))
    windows = torch.stack([torch.full((200, 1), float(j)) for j in range(len(starts))])[None]  # [1, k, W, 1]
    merged = JASCO._merge_windows(windows, starts, 525)[0, :, 0]
    assert merged[:108].eq(0).all() and merged[417:].eq(len(starts) - 1).all()
    assert (merged[1:] - merged[:-1] >= -1e-6).all()  # a monotone fade from each window to the next
    assert window_starts(150, 200, 100) == [0]


def test_validation_errors(api):
    with pytest.raises(ValueError, match=r"'G' starts at 2.5 s, outside the generated segment \[0, 1.0\)"):
        api.generate_music(["x"], chords=[("C", 0), ("G", 2.5)])
    with pytest.raises(ValueError, match="starts must be finite and >= 0"):
        api.generate_music(["x"], chords=[("C", -1.0)])
    with pytest.raises(ValueError, match="3 progressions for 2 descriptions"):
        api.generate_music(["x", "y"], chords=[[("C", 0)], [("D", 0)], None])
    with pytest.raises(ValueError, match="expected 53 pitch bins"):
        api.generate_music(["x"], melody_salience_matrix=torch.zeros(12, 100))
    with pytest.raises(ValueError, match="batch 3 but there are 1"):
        api.generate_music(["x"], melody_salience_matrix=torch.zeros(3, 53, 100))
    with pytest.raises(ValueError, match=r"tensor \[C, N\] or \[B, C, N\], got \(32000,\)"):
        api.generate_music(["x"], drums_wav=torch.zeros(32000))
    with pytest.raises(ValueError, match="if it is \\[N, C\\], transpose it"):
        api.generate_music(["x"], drums_wav=torch.zeros(32000, 2))
    with pytest.raises(ValueError, match=r"drums_sample_rate must be an integer >= 1, got 0"):
        api.generate_music(["x"], drums_wav=torch.zeros(1, 32000), drums_sample_rate=0)
    with pytest.raises(ValueError, match="positive number of seconds"):
        api.generate_music(["x"], duration=0)
    with pytest.raises(ValueError, match="non-empty list"):
        api.generate_music([])


def test_missing_controls_and_vocabulary_size(tmp_path):
    model = debug_model(debug_cfg("conditioner=jasco_chords"))
    api = JASCO("chords-only", model, EncodecCompressionModel.debug())
    assert api.controls == ["chords"]
    with pytest.raises(ValueError, match="model chords-only has no melody control .its controls: chords."):
        api.generate_music(["x"], melody_salience_matrix=torch.zeros(53, 10))
    with pytest.raises(ValueError, match="has no drums control"):
        api.generate_music(["x"], drums_wav=torch.zeros(1, 100))
    small = ChordVocabulary({"N": 0, "C": 1, "UNK": 2})
    with pytest.raises(ChordVocabularyError, match="3 labels vs 194"):  # the model records `builtin`
        JASCO("x", model, api.compression_model, small)
    model.cfg = {}  # a model that records no vocabulary (like the published ones): only the size is checked
    with pytest.raises(ChordVocabularyError, match="3 labels but model x was trained with 194"):
        JASCO("x", model, api.compression_model, small)


# ---------------------------------------------------------------- argument validation
NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("kwargs, argument, fragment", [
    ({"cfg_coef_all": NAN}, "cfg_coef_all", r"cfg_coef_all must be a finite number in \[0, 100\], got nan"),
    ({"cfg_coef_all": INF}, "cfg_coef_all", r"cfg_coef_all must be a finite number in \[0, 100\], got inf"),
    ({"cfg_coef_all": -1.0}, "cfg_coef_all", r"cfg_coef_all must be .* got -1.0"),
    ({"cfg_coef_all": 1e9}, "cfg_coef_all", r"cfg_coef_all must be .* got 1000000000.0"),
    ({"cfg_coef_all": "5"}, "cfg_coef_all", r"cfg_coef_all must be a finite number .* got '5'"),
    ({"cfg_coef_txt": NAN}, "cfg_coef_txt", r"cfg_coef_txt must be a finite number in \[0, 100\], got nan"),
    ({"euler": True, "euler_steps": 0}, "euler_steps", r"euler_steps must be an integer >= 1, got 0"),
    ({"euler_steps": 2.5}, "euler_steps", r"euler_steps must be an integer >= 1, got 2.5"),
    ({"euler_steps": True}, "euler_steps", r"euler_steps must be an integer >= 1, got True"),
    ({"ode_rtol": 0.0}, "ode_rtol", r"ode_rtol must be a finite number > 0, got 0.0"),
    ({"ode_atol": NAN}, "ode_atol", r"ode_atol must be a finite number > 0, got nan"),
    ({"duration": 0}, "duration", r"duration must be a positive number of seconds .finite, in \(0, 3600\]\), got 0"),
    ({"duration": 1e308}, "duration", r"duration must be a positive number of seconds .*got 1e\+308"),
    ({"duration": NAN}, "duration", r"duration must be a positive number of seconds .*got nan"),
    ({"duration": INF}, "duration", r"duration must be a positive number of seconds .*got inf"),
    ({"overlap": NAN}, "overlap", r"overlap must be a finite number in \[0, 4\), got nan seconds"),
    ({"overlap": -0.5}, "overlap", r"overlap must be a finite number in \[0, 4\), got -0.5"),
    ({"overlap": 4.0}, "overlap", r"overlap must be .* got 4.0 seconds .model .* was trained on 4 s segments"),
])
def test_generation_params_are_checked(api, kwargs, argument, fragment):
    before = (dict(api.generation_params), api.duration, api.overlap)
    with pytest.raises(InvalidInputError, match=fragment) as info:
        api.set_generation_params(**{"euler": True, "euler_steps": 2, "duration": 1.0, **kwargs})
    assert info.value.argument == argument and isinstance(info.value, ValueError)
    assert (api.generation_params, api.duration, api.overlap) == before  # a failed call changes nothing


@pytest.mark.parametrize("kwargs, argument, fragment", [
    ({"seed": -1}, "seed", r"seed must be an integer in \[0, 18446744073709551615\], got -1"),
    ({"seed": 1.5}, "seed", r"seed must be an integer .* got 1.5"),
    ({"seed": "0"}, "seed", r"seed must be an integer .* got '0'"),
    ({"duration": NAN}, "duration", r"duration must be a positive number of seconds .*got nan"),
    ({"duration": -2.0}, "duration", r"duration must be a positive number of seconds .*got -2.0"),
    ({"chords": "C@0 G@2"}, "chords", r"chords must be one progression .*jasco.generate.parse_chords"),
    ({"chords": [("C", 0.0), None]}, "chords", r"a mix of rows and progressions"),
    ({"chords": [("C", INF)]}, "chords", r"chords of sample 0: .*starts must be finite and >= 0"),
    ({"chords": [("C", 0.0), ("G",)]}, "chords", r"chords of sample 0: row 1 is \('G',\); expected \(label, start_s\)"),
    ({"chords": [(0.0, 1)]}, "chords", r"chords of sample 0: .*expected \[start_s \(number\), label \(string\)\]"),
    ({"drums_wav": torch.full((1, 32000), NAN)}, "drums_wav", r"drums_wav has 32000 NaN or infinite samples"),
    ({"drums_wav": torch.zeros(1, 32000, dtype=torch.int16)}, "drums_wav", r"drums_wav must be float audio"),
    ({"drums_wav": torch.zeros(1, 0)}, "drums_wav", r"drums_wav has no samples"),
    ({"drums_wav": torch.zeros(0, 100)}, "drums_wav", r"drums_wav has 0 channels"),
    ({"drums_wav": torch.zeros(1, 100), "drums_sample_rate": 44100.0}, "drums_sample_rate",
     r"drums_sample_rate must be an integer >= 1, got 44100.0"),
    ({"melody_salience_matrix": torch.full((53, 50), NAN)}, "melody_salience_matrix",
     r"melody_salience_matrix has 2650 NaN or infinite values"),
    ({"melody_salience_matrix": -torch.ones(53, 50)}, "melody_salience_matrix",
     r"melody_salience_matrix has negative values .min -1."),
])
def test_generate_music_arguments_are_checked(api, kwargs, argument, fragment):
    with pytest.raises(InvalidInputError, match=fragment) as info:
        api.generate_music(["x"], **kwargs)
    assert info.value.argument == argument


def test_real_valued_melody_is_one_hot_encoded_with_a_warning(api):
    salience = torch.rand(53, 50)
    salience[:, 40:] = 0  # unvoiced frames stay unvoiced
    with pytest.warns(UserWarning, match=r"not binary .*argmax"):
        wav = api.generate_music(["x"], melody_salience_matrix=salience, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a binary one-hot matrix passes silently
        expected = api.generate_music(["x"], melody_salience_matrix=one_hot_frames(salience), seed=1)
    assert torch.equal(wav, expected)
    assert torch.isfinite(wav).all()


# ---------------------------------------------------------------- the chord vocabulary rule
def _export_recording(model, tmp_path: Path, vocabulary: str | None) -> Path:
    """Export `model` with `chords_vocabulary` set to `vocabulary` in its config (None: removed, as published)."""
    original = model.cfg
    cfg = original.copy()
    with open_dict(cfg):
        if vocabulary is None:
            del cfg["chords_vocabulary"]
        else:
            cfg.chords_vocabulary = vocabulary
    model.cfg = cfg
    try:
        return export_model(model, tmp_path)
    finally:
        model.cfg = original


def _permuted_builtin(path: Path) -> Path:
    """The builtin labels with indices 1 and 2 swapped (same size, other order), as .json."""
    labels = ChordVocabulary.builtin().labels
    labels[1], labels[2] = labels[2], labels[1]
    ChordVocabulary({label: i for i, label in enumerate(labels)}).save_json(path)
    return path


def test_recorded_vocabulary_wins(model, folder, tmp_path):
    permuted = _permuted_builtin(tmp_path / "permuted.json")
    # The debug model records `builtin`: another order is an error naming both vocabularies.
    with pytest.raises(ChordVocabularyError, match=(
            rf"chords_mapping_path={re.escape(str(permuted))} \(194 labels\) is not the chord vocabulary the model "
            r"was trained with, chords_vocabulary='builtin' recorded in its xp.cfg \(194 labels\): index 1 is "
            r"'Cm' in the given one but 'C' in the model's.*Drop chords_mapping_path=")):
        JASCO.get_pretrained(folder, device="cpu", chords_mapping_path=permuted)
    small = tmp_path / "small.json"
    ChordVocabulary({"N": 0, "C": 1, "UNK": 2}).save_json(small)
    with pytest.raises(ChordVocabularyError, match=r"\(3 labels\) is not .*: 3 labels vs 194"):
        JASCO.get_pretrained(folder, device="cpu", chords_mapping_path=small)
    # The same vocabulary given explicitly (other spellings of the same chords too) is accepted.
    same = ChordVocabulary.builtin().to_dict()
    same = {("Db" if label == "C#" else label): i for label, i in same.items()}
    (tmp_path / "same.pkl").write_bytes(pickle.dumps(same))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        api = JASCO.get_pretrained(folder, device="cpu", chords_mapping_path=tmp_path / "same.pkl")
    assert api.chords_vocabulary.index("C#") == ChordVocabulary.builtin().index("C#")
    # A model recording its own vocabulary file uses it without any mapping.
    recorded = _export_recording(model, tmp_path / "custom", str(permuted))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        api = JASCO.get_pretrained(recorded, device="cpu")
    assert api.chords_vocabulary.labels == ChordVocabulary.from_file(permuted).labels


def test_models_without_a_known_vocabulary_refuse_chords(model, tmp_path):
    unknown = _export_recording(model, tmp_path / "unknown", None)  # a jasco xp.cfg without chords_vocabulary
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        api = JASCO.get_pretrained(unknown, device="cpu")
    api.set_generation_params(euler=True, euler_steps=1, duration=0.5)
    assert api.chords_vocabulary is None
    assert api.generate_music(["x"], seed=0).shape == (1, 1, SR // 2)  # other controls still work
    with pytest.raises(InvalidInputError, match=r"cannot tell which chord vocabulary .*unknown was trained with.*"
                                                r"pass chords_mapping_path= \(--chords-mapping\)") as refused:
        api.generate_music(["x"], chords=[("C", 0.0)], seed=0)
    assert refused.value.argument == "chords"
    permuted = _permuted_builtin(tmp_path / "chord_to_index_mapping.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        api = JASCO.get_pretrained(unknown, device="cpu", chords_mapping_path=permuted)
    assert api.chords_vocabulary.labels == ChordVocabulary.from_file(permuted).labels  # the given one is used


def test_published_layout_models_use_the_published_vocabulary(model, tmp_path):
    original = model.cfg
    model.cfg = original.copy()
    with open_dict(model.cfg):
        model.cfg.lm_model = "transformer_lm"  # what the published code writes in every xp.cfg
    try:
        published_like = _export_recording(model, tmp_path / "published_like", None)
    finally:
        model.cfg = original
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        api = JASCO.get_pretrained(published_like, device="cpu")
    published = ChordVocabulary.from_spec("published")
    assert api.chords_vocabulary.labels == published.labels != ChordVocabulary.builtin().labels
    permuted = _permuted_builtin(tmp_path / "mine.json")  # an explicit mapping still overrides
    api = JASCO.get_pretrained(published_like, device="cpu", chords_mapping_path=permuted)
    assert api.chords_vocabulary.labels == ChordVocabulary.from_file(permuted).labels
    # A hub id of the published models implies it too (no xp.cfg marker needed).
    plain = JASCO(name="facebook/jasco-chords-drums-400M", model=api.model, compression_model=api.compression_model)
    assert plain.chords_vocabulary.labels == published.labels


# ---------------------------------------------------------------- docs/INFERENCE.md
def python_blocks(markdown: str) -> list[str]:
    """The ```python code blocks of a Markdown text."""
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.DOTALL | re.MULTILINE)


def write_doc_inputs(folder: Path) -> None:
    """The files the docs examples read: a drum stem, a melody salience and the chord mapping.

    The mapping holds the debug model's own (builtin) vocabulary: a published model's
    chord_to_index_mapping.pkl would not match it.
    """
    audio_write(folder / "drums.wav", torch.randn(2, 44100 * 3) * 0.2, 44100, normalize=False)
    salience = torch.zeros(53, 86 * 3)
    salience[20, :150] = 1.0
    write_salience(folder / "melody.npz", salience, frame_rate=86.0)
    (folder / "chord_to_index_mapping.pkl").write_bytes(pickle.dumps(ChordVocabulary.builtin().to_dict()))


def test_docs_python_example_runs_as_written(folder, tmp_path, monkeypatch):
    blocks = python_blocks(DOCS.read_text(encoding="utf-8"))
    assert blocks and any("generate_music" in block for block in blocks)
    write_doc_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        code = re.sub(r"facebook/jasco-chords-drums(-melody)?-(400M|1B)", str(folder), block)
        assert code != block  # the example names a published model, replaced by the tiny one
        namespace: dict = {}
        exec(compile(code, f"{DOCS}:python", "exec"), namespace)  # noqa: S102 - the docs example itself
    assert audio_read(tmp_path / "pop.wav")[0].shape[-1] == 10 * SR
    assert namespace["wav"].shape == (1, 1, 10 * SR) and namespace["latents"].shape == (1, 500, 128)
