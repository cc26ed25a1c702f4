"""One-command data preparation: `python -m jasco.prepare ROOT_OR_MANIFEST OUT_DIR` (see docs/DATA.md).

Modules: `tracks` (discovery, ids, splits, the track list), `steps` (per-track work of each step),
`runner` (parallel, resumable execution, failures, the final manifests), `__main__` (the CLI).
"""
