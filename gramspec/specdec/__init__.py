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
    TokenRecycling,
    TrigramTable,
    available_drafters,
    make_drafter,
    register_drafter,
)
from gramspec.specdec.loop import DecodeOutput, DecodeStats, DraftLength, decode
from gramspec.specdec.verify import verify_deterministic, verify_stochastic

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
    "TokenRecycling",
    "TrigramTable",
    "available_drafters",
    "decode",
    "make_drafter",
    "register_drafter",
    "verify_deterministic",
    "verify_stochastic",
]
