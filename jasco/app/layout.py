"""The Gradio page: controls on the left, the audio and its controls picture on the right.

Thin by design: every handler calls one `Session` method (jasco/app/session.py) and turns an
`AppInputError` into a line in `#error`. Element ids for automation: `#model`, `#text`,
`#chords`, `#chords-check`, `#drums`, `#melody-audio`, `#melody-salience`, `#duration`,
`#sampler`, `#steps`, `#cfg-all`, `#cfg-text`, `#seed`, `#generate`, `#output-audio`,
`#controls-plot`, `#info`, `#error`.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from jasco.app.inputs import AppInputError, one_line
from jasco.app.session import SAMPLERS, Request, Session
from jasco.models.flow import DEFAULT_STEPS, DEFAULT_SOLVER
from jasco.models.arguments import MAX_CFG_COEF

logger = logging.getLogger(__name__)
GENERATE_QUEUE = "generate"  # the queue every generation waits in, one at a time
UPLOAD_HEIGHT = 150  # pixels of each upload box
GRADIO_MISSING = "jasco-app needs gradio: pip install 'jasco[app]'"
CSS = "#error { color: #b00020; font-weight: 600; min-height: 1.5em; }"


def import_gradio() -> Any:
    """gradio, or ImportError saying which extra to install."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local tool: no calls home
    try:
        import gradio
    except ImportError as err:
        raise ImportError(GRADIO_MISSING) from err
    return gradio


def _error(err: BaseException) -> str:
    return f"Error: {one_line(err)}"


def build_app(session: Session, models: list[str], default_model: str) -> Any:
    """The `gr.Blocks` page for `session`; `models` fill the picker (any path or hub id may be typed)."""
    gr = import_gradio()

    def on_model(name: str) -> tuple[str, str]:
        try:
            return session.describe(name), ""
        except AppInputError as err:
            return "", _error(err)

    def on_generate(model, text, chords, drums, melody_audio, melody_salience, duration, sampler, steps,
                    cfg_all, cfg_text, seed, progress=gr.Progress()):  # noqa: B008 (gradio injects it)
        request = Request(model=model, text=text or "", chords=chords or "", drums=drums, melody_audio=melody_audio,
                          melody_salience=melody_salience, duration=duration, sampler=sampler, steps=steps,
                          cfg_all=cfg_all, cfg_text=cfg_text, seed=None if seed is None or seed < 0 else int(seed))
        try:
            result = session.generate(request, report=lambda done, what: progress(done, desc=what))
        except AppInputError as err:
            return None, None, "", _error(err)
        except Exception as err:  # a bug: one line on the page, the traceback in the server log
            logger.exception("generation failed")
            return None, None, "", f"Internal error ({type(err).__name__}): {one_line(err)[:300]} (see the server log)"
        return str(result.wav_path), str(result.plot_path), result.info, ""

    with gr.Blocks(title="JASCO", analytics_enabled=False) as app:
        gr.Markdown("# JASCO: text to music with chords, drums and melody")
        with gr.Row():
            with gr.Column(scale=1):
                model = gr.Dropdown(models, value=default_model, allow_custom_value=True, label="model",
                                    info="exported folder, experiment folder or hub id", elem_id="model")
                model_info = gr.Markdown(elem_id="model-info")
                text = gr.Textbox(label="text", placeholder="80s pop with a synth lead", lines=2, elem_id="text")
                chords = gr.Textbox(label="chords", placeholder="C@0 Am@2 F@4 G@6", elem_id="chords",
                                    info="LABEL@START_SECONDS, separated by spaces")
                chords_check = gr.Markdown("no chords", elem_id="chords-check")
                # Numbers, not sliders: an emptied or out-of-range field reaches Session.generate, which
                # names it in #error (a slider's own bounds check fails inside gradio instead).
                duration = gr.Number(10, label="duration (s)", info="longer than the training segment: overlapping "
                                     "windows", elem_id="duration")
                generate = gr.Button("Generate", variant="primary", elem_id="generate")
                with gr.Accordion("drums and melody", open=True):
                    drums = gr.File(label="drum stem (audio)", type="filepath", height=UPLOAD_HEIGHT,
                                    elem_id="drums")
                    melody_audio = gr.File(label="melody from an audio clip", type="filepath", height=UPLOAD_HEIGHT,
                                           elem_id="melody-audio")
                    melody_salience = gr.File(label="melody from a salience file (.npz / .npy)", type="filepath",
                                              height=UPLOAD_HEIGHT, elem_id="melody-salience")
                with gr.Accordion("sampling", open=False):
                    sampler = gr.Radio(list(SAMPLERS), value=DEFAULT_SOLVER, label="sampler", elem_id="sampler")
                    steps = gr.Number(DEFAULT_STEPS, precision=0, label="steps (fixed-step samplers)", elem_id="steps")
                    with gr.Row():
                        cfg_all = gr.Number(1.25, label=f"CFG (all), 0 to {MAX_CFG_COEF:g}", elem_id="cfg-all")
                        cfg_text = gr.Number(2.5, label=f"CFG (text), 0 to {MAX_CFG_COEF:g}", elem_id="cfg-text")
                    seed = gr.Number(0, precision=0, label="seed (-1: random)", elem_id="seed")
            with gr.Column(scale=1):
                error = gr.Markdown("", elem_id="error")
                audio = gr.Audio(label="music", type="filepath", interactive=False, buttons=["download"],
                                 waveform_options=gr.WaveformOptions(show_recording_waveform=False),
                                 elem_id="output-audio")  # the browser's own player: a plain <audio> element
                info = gr.Markdown(elem_id="info")
                plot = gr.Image(label="controls", type="filepath", interactive=False, elem_id="controls-plot")

        model.change(on_model, [model], [model_info, error])
        app.load(on_model, [model], [model_info, error])
        for trigger in (chords.change, model.change, duration.change):
            trigger(session.check_chords, [model, chords, duration], [chords_check], queue=False,
                    show_progress="hidden")
        generate.click(on_generate, [model, text, chords, drums, melody_audio, melody_salience, duration, sampler,
                                     steps, cfg_all, cfg_text, seed], [audio, plot, info, error],
                       concurrency_limit=1, concurrency_id=GENERATE_QUEUE)
    app.queue(default_concurrency_limit=1)
    return app


def launch(app: Any, host: str, port: int | None, share: bool) -> None:
    """Serve `app` until interrupted (gradio 6 takes the theme and CSS here)."""
    gr = import_gradio()
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])  # system fonts: nothing to download
    app.launch(server_name=host, server_port=port, share=share, theme=theme, css=CSS)
