"""Lossless speculative decoding inside the constraint: drafters, verifier, decode loop."""

from gramspec.specdec.drafters import (
    Chain,
    Draft,
    DraftContext,
    Drafter,
    DraftModel,
    GrammarForced,
    LayerSkip,
    PromptLookup,
    SiblingSampling,
    TokenRecycling,
    TreeBuilder,
    TrigramTable,
    available_drafters,
    make_drafter,
    register_drafter,
)
from gramspec.specdec.loop import DecodeOutput, DecodeStats, DraftLength, decode
from gramspec.specdec.verify import (
    sibling_law,
    verify_deterministic,
    verify_stochastic,
    verify_stochastic_tree,
)

__all__ = [
    "Chain",
    "DecodeOutput",
    "DecodeStats",
    "Draft",
    "DraftContext",
    "DraftLength",
    "DraftModel",
    "Drafter",
    "GrammarForced",
    "LayerSkip",
    "PromptLookup",
    "SiblingSampling",
    "TokenRecycling",
    "TreeBuilder",
    "TrigramTable",
    "available_drafters",
    "decode",
    "make_drafter",
    "register_drafter",
    "sibling_law",
    "verify_deterministic",
    "verify_stochastic",
    "verify_stochastic_tree",
]
