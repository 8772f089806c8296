"""gramspec: constrained decoding for Hugging Face transformers models."""

from __future__ import annotations

from gramspec.errors import (
    GramspecError,
    GrammarError,
    LimitError,
    ModelNotFoundError,
    SchemaError,
    UnsupportedSchemaError,
    VocabularyError,
)
from gramspec.vocab import Vocabulary

__version__ = "0.1.0"

__all__ = [
    "GramspecError",
    "GrammarError",
    "LimitError",
    "ModelNotFoundError",
    "SchemaError",
    "UnsupportedSchemaError",
    "Vocabulary",
    "VocabularyError",
    "__version__",
]
