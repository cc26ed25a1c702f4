"""The package's layering (scripts/check_imports.py): no upward import, no cycle."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_imports.py"


def _checker():
    spec = importlib.util.spec_from_file_location("check_imports", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_imports"] = module
    spec.loader.exec_module(module)
    return module


def test_package_has_no_upward_import_and_no_cycle():
    assert _checker().find_problems() == []


def test_checker_reports_an_upward_import_and_a_cycle(tmp_path, monkeypatch):
    checker = _checker()
    package = tmp_path / "jasco"
    for folder in ("audio", "models"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "audio" / "io.py").write_text("from jasco.models.codec import Codec\n")
    (package / "models" / "codec.py").write_text("import jasco.models.loaders\n")
    (package / "models" / "loaders.py").write_text("from jasco.models import codec\n")
    monkeypatch.setattr(checker, "PACKAGE_DIR", package)
    problems = checker.find_problems()
    assert any(p.startswith("upward import: jasco.audio.io") and "jasco.models.codec" in p for p in problems)
    assert any(p.startswith("import cycle:") and "jasco.models.codec" in p and "jasco.models.loaders" in p
               for p in problems)
