"""gramspec: constrained decoding for Hugging Face transformers models."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gramspec.errors import (
    GrammarError,
    GramspecError,
    LimitError,
    ModelNotFoundError,
    SchemaError,
    UnsupportedSchemaError,
    VocabularyError,
)
from gramspec.vocab import Vocabulary

if TYPE_CHECKING:
    from gramspec.generation import GenerationResult, generate, sample_many
    from gramspec.models import load_default, load_model
    from gramspec.plugins import (
        AlignedStore,
        GrammarLogitsProcessor,
        JSONSchemaLogitsProcessor,
        Pipeline,
        RegexLogitsProcessor,
    )

__version__ = "0.1.0"

# Names whose modules import torch/transformers: loaded on first use so that
# `import gramspec` stays fast.
_LAZY = {
    "load_default": "gramspec.models",
    "load_model": "gramspec.models",
    "generate": "gramspec.generation",
    "sample_many": "gramspec.generation",
    "AlignedStore": "gramspec.plugins",
    "GenerationResult": "gramspec.generation",
    "JSONSchemaLogitsProcessor": "gramspec.plugins",
    "GrammarLogitsProcessor": "gramspec.plugins",
    "RegexLogitsProcessor": "gramspec.plugins",
    "Pipeline": "gramspec.plugins",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gramspec' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

__all__ = [
    "AlignedStore",
    "GenerationResult",
    "GrammarError",
    "GrammarLogitsProcessor",
    "GramspecError",
    "JSONSchemaLogitsProcessor",
    "LimitError",
    "ModelNotFoundError",
    "Pipeline",
    "RegexLogitsProcessor",
    "SchemaError",
    "UnsupportedSchemaError",
    "Vocabulary",
    "VocabularyError",
    "__version__",
    "generate",
    "load_default",
    "load_model",
    "sample_many",
]
