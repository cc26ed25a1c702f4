"""Models: the codec wrapper, the flow-matching network, builders, loaders and the JASCO API."""
from __future__ import annotations

__all__ = ["JASCO", "FlowMatchingModel", "EncodecCompressionModel"]


def __getattr__(name: str):
    # Lazy, so that `import jasco.models.flow` does not pull in the whole inference stack.
    if name == "JASCO":
        from jasco.models.jasco import JASCO
        return JASCO
    if name == "FlowMatchingModel":
        from jasco.models.flow_matching import FlowMatchingModel
        return FlowMatchingModel
    if name == "EncodecCompressionModel":
        from jasco.models.codec import EncodecCompressionModel
        return EncodecCompressionModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
