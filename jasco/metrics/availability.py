"""Metrics that cannot run: `MetricUnavailable` names the metric, the reason and the fix.

A metric whose model, optional extra or weights are missing raises `MetricUnavailable` instead of
returning a number, so that an unavailable metric is reported as such and never as 0.
"""
from __future__ import annotations

import importlib
from types import ModuleType

METRICS_EXTRA = "pip install mir_eval"


class MetricUnavailable(Exception):
    """A metric cannot be computed here (missing extra, model or weights).

    Attributes:
        metric: the metric's name (`chords`, `onsets`, `melody_salience`, `fad`, `clap`, ...).
        reason: one line saying what is missing and how to provide it.
    """

    def __init__(self, metric: str, reason: str) -> None:
        super().__init__(f"metric {metric!r} is unavailable: {reason}")
        self.metric = metric
        self.reason = reason


def require_module(metric: str, module: str, fix: str) -> ModuleType:
    """Import `module` for `metric`, or raise `MetricUnavailable` saying to run `fix`."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MetricUnavailable(metric, f"it needs the Python package {module!r} ({err}); "
                                        f"install it with `{fix}`.") from err


def require_mir_eval(metric: str) -> ModuleType:
    """`mir_eval` (a jasco dependency; missing only from a partial install), or `MetricUnavailable`."""
    return require_module(metric, "mir_eval", METRICS_EXTRA)
