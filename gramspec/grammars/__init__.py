"""Grammars: Lark grammars, regexes (and JSON Schemas) compiled to exact token masks.

No torch or transformers here: masks are numpy int32 bitmasks.
"""

from gramspec.grammars.compiled import CompiledGrammar, Matcher, mask_words, pack_mask, unpack_mask
from gramspec.grammars.frontend import compile_grammar, compile_regex

__all__ = [
    "CompiledGrammar",
    "Matcher",
    "compile_grammar",
    "compile_regex",
    "mask_words",
    "pack_mask",
    "unpack_mask",
]
