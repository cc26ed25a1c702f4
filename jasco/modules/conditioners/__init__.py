"""Conditioners: one module per condition type, plus the provider that runs them all."""
from jasco.modules.conditioners.base import BaseConditioner, ConditionTensor
from jasco.modules.conditioners.drums import DrumsConditioner, temporal_blur
from jasco.modules.conditioners.provider import ConditionProvider
from jasco.modules.conditioners.symbolic import ChordsConditioner, MelodyConditioner
from jasco.modules.conditioners.text import HashedTextConditioner, T5Conditioner

__all__ = ["BaseConditioner", "ConditionTensor", "ChordsConditioner", "ConditionProvider",
           "DrumsConditioner", "HashedTextConditioner", "MelodyConditioner", "T5Conditioner",
           "temporal_blur"]
