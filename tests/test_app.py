"""`jasco-app` without a browser: chord text checks, uploads, model errors, a generation, the page's ids."""
from __future__ import annotations

import sys

import pytest
import soundfile as sf
import torch
from helpers_inference import debug_model, export_model, write_training_checkpoint
from omegaconf import OmegaConf
from reference_files import DEEPSALIENCE, require

from jasco.app.__main__ import main
from jasco.app.inputs import (
    AppInputError,
    check_chords,
    melody_from_audio,
    parse_chord_text,
    read_drums,
    read_salience_upload,
)
from jasco.app.session import (
    PUBLISHED_MODELS,
    Request,
    Session,
    local_models,
    model_choices,
    model_source,
)
from jasco.audio.io import audio_write
from jasco.controls.chords.vocabulary import ChordVocabulary
from jasco.controls.melody.salience import write_salience


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return export_model(debug_model(seed=4), tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return Session(device="cpu", out_dir=tmp_path_factory.mktemp("out"))


def test_chord_text_shows_normalised_spellings_and_unknown_chords():
    check = check_chords("C@0 Db@1 A:min@2 Cmaj@3 Db@3.5 Csus2@4 N@5", ChordVocabulary.builtin(), 6.0)
    assert check.changes == [(0.0, "C"), (1.0, "Db"), (2.0, "A:min"), (3.0, "Cmaj"), (3.5, "Db"), (4.0, "Csus2"),
                             (5.0, "N")]
    assert check.notes == ["Db → C#", "A:min → Am", "Cmaj → C", "Csus2 → UNK (not in the model's vocabulary)"]
    assert check.unknown == ["Csus2"]
    assert check.summary() == ("7 chord changes; Db → C#; A:min → Am; Cmaj → C; Csus2 → UNK (not in the model's "
                               "vocabulary)")
    assert check_chords("  ", ChordVocabulary.builtin(), 6.0).summary() == "no chords"


@pytest.mark.parametrize("text, message", [
    ("C Am@2", r"^chords: cannot read chord change 'C'; write LABEL@START"),
    ("C@0 Hm@1", r"^chords: 'Hm' is not a chord label; write e.g. C, Am"),
    ("C@2 G@1", r"^chords: row 1 starts at 1.0 before the previous row \(2.0\); rows must be sorted"),
    ("C@0 G@4", r"^chords: G@4 starts at or after the end of the 4 s piece; drop it or raise the duration."),
    ("C@nan", r"^chords: cannot read chord change 'C@nan'"),
])
def test_bad_chord_text_is_one_line(text, message):
    with pytest.raises(AppInputError, match=message) as info:
        check_chords(text, ChordVocabulary.builtin(), 4.0)
    assert "\n" not in str(info.value)


def test_chord_text_is_never_read_as_a_file(tmp_path, monkeypatch):
    (tmp_path / "song.txt").write_text("C@0\nG@2\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AppInputError, match="cannot read chord change 'song.txt'"):
        parse_chord_text("song.txt")


def test_chords_for_a_model_without_chords():
    with pytest.raises(AppInputError, match=r"this model has no chords control \(its controls: drums\)"):
        check_chords("C@0", None, 4.0, controls=["drums"])


def test_wrong_file_types_name_the_field(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(AppInputError, match=r"^drums: notes.txt is not an audio file; upload one of .*\.wav"):
        read_drums(tmp_path / "notes.txt")
    with pytest.raises(AppInputError, match=r"^melody salience: notes.txt is not a salience file; upload one of "
                                            r"\.npy, \.npz\.$"):
        read_salience_upload(tmp_path / "notes.txt")
    with pytest.raises(AppInputError, match=r"^melody audio: notes.txt is not an audio file"):
        melody_from_audio(tmp_path / "notes.txt", None)
    (tmp_path / "broken.wav").write_bytes(b"RIFF junk")
    with pytest.raises(AppInputError, match=r"^drums: cannot read broken.wav \("):
        read_drums(tmp_path / "broken.wav")


def test_melody_audio_without_weights_says_how_to_configure_them(tmp_path):
    audio_write(tmp_path / "tune.wav", torch.zeros(1, 16000), 16000, normalize=False)
    with pytest.raises(AppInputError, match=r"needs the deepsalience weights; start jasco-app with --melody-weights "
                                            r".*or upload a salience file"):
        melody_from_audio(tmp_path / "tune.wav", None)


def test_unknown_model_is_a_one_line_error(session):
    with pytest.raises(AppInputError, match=r"^model /nowhere/model: /nowhere/model does not exist: give an "
                                            r"exported folder"):
        session.model("/nowhere/model")
    with pytest.raises(AppInputError, match="^model: pick a model"):
        session.model(" ")
    assert session.check_chords("/nowhere/model", "C@0", 4.0).startswith("⚠ model /nowhere/model: ")


def test_model_picker_lists_experiments_and_published_models(tmp_path):
    xp = tmp_path / "xps" / "abc123"
    xp.mkdir(parents=True)
    (xp / "checkpoint.th").write_bytes(b"")
    (tmp_path / "xps" / "empty").mkdir()
    assert local_models(tmp_path) == [str(xp)]
    assert model_choices(["mine", str(xp)], tmp_path) == ["mine", str(xp), *PUBLISHED_MODELS]
    assert model_source(str(xp)) == str(xp / "checkpoint.th")
    assert model_source("facebook/jasco-chords-drums-400M") == "facebook/jasco-chords-drums-400M"


def test_an_experiment_folder_loads_its_checkpoint(session, tmp_path):
    model = debug_model(seed=5)
    xp = tmp_path / "xps" / "abc123"
    xp.mkdir(parents=True)
    write_training_checkpoint(xp / "checkpoint.th", model.state_dict(), OmegaConf.to_yaml(model.cfg))
    assert "controls text, chords, drums, melody" in session.describe(str(xp))


def test_generate_writes_audio_and_controls_picture(session, folder, tmp_path):
    audio_write(tmp_path / "drums.wav", torch.randn(2, 44100 * 2) * 0.2, 44100, normalize=False)
    salience = torch.zeros(53, 86 * 3)
    salience[20, :150] = 1.0
    write_salience(tmp_path / "melody.npz", salience, frame_rate=86.0)
    reports = []
    result = session.generate(Request(model=str(folder), text="funky bass", chords="C@0 Db@1.5 Am@2", duration=2.5,
                                      drums=str(tmp_path / "drums.wav"), melody_salience=str(tmp_path / "melody.npz"),
                                      steps=2, seed=3), report=lambda done, what: reports.append(done))
    info = sf.info(str(result.wav_path))
    assert info.samplerate == 32000 and info.frames == 2.5 * 32000 and result.duration == 2.5
    assert result.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert reports[0] == 0.0 and reports[-1] == 1.0 and reports == sorted(reports)
    assert result.info == f"2.5 s from {folder}, midpoint 2 steps, cfg 1.25/2.5, seed 3"


def test_generate_reports_api_range_errors_by_field(session, folder):
    with pytest.raises(AppInputError, match=r"^steps: steps must be an integer >= 1"):
        session.generate(Request(model=str(folder), duration=1.0, steps=0))
    with pytest.raises(AppInputError, match=r"^duration: the field is empty; type a number.$"):
        session.generate(Request(model=str(folder), duration=None))
    with pytest.raises(AppInputError, match=r"^duration: duration must be a positive number of seconds"):
        session.generate(Request(model=str(folder), duration=0.0))
    with pytest.raises(AppInputError, match=r"^melody: give a melody audio clip or a salience file, not both"):
        session.generate(Request(model=str(folder), melody_audio="a.wav", melody_salience="b.npz"))


def test_melody_extracted_from_an_audio_clip(folder, tmp_path):
    pytest.importorskip("h5py", reason="h5py (jasco[melody]) reads the deepsalience weights")
    t = torch.arange(22050 * 2) / 22050
    audio_write(tmp_path / "tune.wav", 0.5 * torch.sin(2 * torch.pi * 440.0 * t)[None], 22050, normalize=False)
    melody, rate = melody_from_audio(tmp_path / "tune.wav", Session(melody_weights=str(require(DEEPSALIENCE))).extractor())
    assert rate == 50.0 and melody.shape == (53, 100)
    voiced = melody.amax(0) > 0
    assert voiced.float().mean() > 0.5 and (melody.argmax(0)[voiced] + 43 == 69).float().mean() > 0.9  # A4


def test_cli_refuses_an_unknown_model_in_one_line(capsys):
    assert main(["--model", "/nowhere/model", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jasco-app: error: --model /nowhere/model: ") and err.count("\n") == 1


def test_missing_gradio_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)
    assert main(["--model", "/nowhere/model"]) == 2
    assert "pip install 'jasco[app]'" in capsys.readouterr().err


def test_page_has_the_automation_ids(session, folder):
    pytest.importorskip("gradio", reason="gradio (jasco[app]) builds the page")
    from jasco.app.layout import build_app

    app = build_app(session, [str(folder)], str(folder))
    ids = {block.elem_id for block in app.blocks.values()}
    assert {"text", "chords", "duration", "generate", "output-audio", "controls-plot", "error"} <= ids
