"""Exception hierarchy: one root, each subclass also the matching builtin."""

from __future__ import annotations


class GramspecError(Exception):
    """Root of every error gramspec raises on purpose."""


class VocabularyError(GramspecError, ValueError):
    """A tokenizer whose tokens cannot be mapped to exact bytes."""


class GrammarError(GramspecError, ValueError):
    """A grammar or regex that cannot be compiled (syntax, undefined symbols,
    empty language, unsupported regex features).

    ``line`` and ``column`` are 1-based positions in the grammar text when known.
    """

    def __init__(self, message: str, *, line: int | None = None, column: int | None = None) -> None:
        where = f" (line {line}, column {column})" if line is not None else ""
        super().__init__(message + where)
        self.line = line
        self.column = column


class SchemaError(GramspecError, ValueError):
    """A malformed JSON Schema; ``pointer`` is the JSON pointer of the culprit."""

    def __init__(self, message: str, *, pointer: str = "") -> None:
        super().__init__(f"{message} at {pointer or '#'}")
        self.pointer = pointer


class UnsupportedSchemaError(SchemaError):
    """A valid JSON Schema that uses a keyword gramspec cannot enforce exactly."""


class LimitError(GramspecError, RuntimeError):
    """A compile-time or size limit was exceeded (the limit is in the message)."""


class ModelNotFoundError(GramspecError, FileNotFoundError):
    """A model that is neither installed nor on disk; the message says how to get it."""


class MatcherError(GramspecError, ValueError):
    """A matcher used wrongly (rolling back more tokens than it holds, a bitmask too small)."""
