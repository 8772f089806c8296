"""Plugins: prefix-deterministic transforms of next-token scores, and the pipeline.

This layer imports torch and transformers.
"""

from gramspec.plugins.asap import CARS, AlignedStore, ASAp, RejectedSample
from gramspec.plugins.base import Pipeline, Plugin
from gramspec.plugins.hf import (
    GrammarConstraintLogitsProcessor,
    GrammarLogitsProcessor,
    JSONSchemaLogitsProcessor,
    RegexLogitsProcessor,
    vocabulary_for,
)
from gramspec.plugins.mask import GrammarMask, apply_token_bitmask, apply_token_bitmask_inplace, unpack_bitmask
from gramspec.plugins.mirostat import Mirostat
from gramspec.plugins.warpers import MinP, RepetitionPenalty, Temperature, TopK, TopP

__all__ = [
    "CARS",
    "ASAp",
    "AlignedStore",
    "GrammarConstraintLogitsProcessor",
    "GrammarLogitsProcessor",
    "GrammarMask",
    "JSONSchemaLogitsProcessor",
    "MinP",
    "Mirostat",
    "Pipeline",
    "Plugin",
    "RegexLogitsProcessor",
    "RejectedSample",
    "RepetitionPenalty",
    "Temperature",
    "TopK",
    "TopP",
    "apply_token_bitmask",
    "apply_token_bitmask_inplace",
    "unpack_bitmask",
    "vocabulary_for",
]
