"""The `jasco-app` web page (Gradio): generate music from a text, chords, a drum stem and a melody.

`inputs` (chord text, uploads), `session` (models, generation, the controls picture) and `layout`
(the page) are plain modules; only `layout` imports gradio, lazily (`pip install 'jasco[app]'`).
Run with `jasco-app` or `python -m jasco.app` (`__main__`). docs/APP.md.
"""
