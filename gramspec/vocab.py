"""Token vocabularies as exact bytes.

A :class:`Vocabulary` maps every token id of a model to the exact bytes the
token stands for, so grammars can work on bytes whatever the tokenizer: a
token may end in the middle of a UTF-8 character, and the grammar engine
handles that exactly.

Supported tokenizer families:

* byte-level BPE (GPT-2, Llama-3, Qwen2, SmolLM2...): token strings are written
  in the GPT-2 "bytes to unicode" alphabet and are mapped back byte by byte;
* SentencePiece (Llama-2, Phi-3...): ``▁`` stands for a space and ``<0xNN>``
  pieces are raw bytes (byte fallback);
* added tokens: special ones have no bytes and are never allowed by a grammar;
  the others stand for their UTF-8 content.

Ids at or above the tokenizer's length (a model's embedding matrix is often
larger) have no bytes either.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gramspec.errors import VocabularyError

_SPM_SPACE = "\u2581"
_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _gpt2_unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's ``bytes_to_unicode`` table."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\xa1"), ord("\xac") + 1))
        + list(range(ord("\xae"), ord("\xff") + 1))
    )
    table: dict[str, int] = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + extra)] = b
            extra += 1
    return table


_UNICODE_TO_BYTE = _gpt2_unicode_to_byte()


@dataclass(frozen=True, eq=False)
class Vocabulary:
    """Token id -> exact bytes, with the ids that end or never appear in text.

    ``token_bytes[i]`` is ``b""`` for special tokens and unused ids; such ids
    are never allowed by a grammar. ``eos_token_ids`` end a generation.
    """

    token_bytes: tuple[bytes, ...]
    eos_token_ids: frozenset[int]
    special_token_ids: frozenset[int] = frozenset()
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        for eos in self.eos_token_ids:
            if not 0 <= eos < len(self.token_bytes):
                raise VocabularyError(f"EOS id {eos} is outside the vocabulary of {len(self.token_bytes)} ids")
        digest = hashlib.sha256()
        digest.update(len(self.token_bytes).to_bytes(8, "little"))
        for token in self.token_bytes:
            digest.update(len(token).to_bytes(4, "little"))
            digest.update(token)
        digest.update(json.dumps(sorted(self.eos_token_ids)).encode())
        object.__setattr__(self, "fingerprint", digest.hexdigest()[:32])

    @property
    def size(self) -> int:
        """Number of ids, including unused ones up to the model's vocab size."""
        return len(self.token_bytes)

    def __len__(self) -> int:
        return len(self.token_bytes)

    def __repr__(self) -> str:
        return f"Vocabulary(size={self.size}, eos={sorted(self.eos_token_ids)}, fingerprint={self.fingerprint})"

    def decode(self, token_ids: Iterable[int]) -> bytes:
        """Concatenated bytes of ``token_ids`` (special tokens contribute nothing)."""
        return b"".join(self.token_bytes[i] for i in token_ids)

    @classmethod
    def from_token_bytes(
        cls,
        token_bytes: Sequence[bytes],
        *,
        eos_token_ids: Iterable[int] = (),
        special_token_ids: Iterable[int] = (),
    ) -> Vocabulary:
        """A vocabulary given directly as bytes (tests, custom tokenizers)."""
        eos = frozenset(eos_token_ids)
        special = frozenset(special_token_ids) | eos
        tokens = tuple(b"" if i in special else bytes(t) for i, t in enumerate(token_bytes))
        return cls(tokens, eos, special)

    @classmethod
    def from_tokenizer(
        cls,
        tokenizer: Any,
        *,
        vocab_size: int | None = None,
        eos_token_ids: Iterable[int] | None = None,
    ) -> Vocabulary:
        """Build from a Hugging Face tokenizer.

        ``vocab_size``: the model's vocabulary size when it exceeds the
        tokenizer's (ids past the tokenizer's length get no bytes).
        ``eos_token_ids``: ids that end generation; defaults to the tokenizer's
        EOS id.
        """
        n = len(tokenizer)
        size = max(n, vocab_size or 0)
        special = _special_ids(tokenizer)
        if eos_token_ids is None:
            eos_id = getattr(tokenizer, "eos_token_id", None)
            eos = frozenset() if eos_id is None else frozenset([int(eos_id)])
        else:
            eos = frozenset(int(i) for i in eos_token_ids)
        pieces: list[str | None] = tokenizer.convert_ids_to_tokens(list(range(n)))
        added = {int(i): t for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
        style = _piece_style(tokenizer)
        tokens: list[bytes] = []
        for i, piece in enumerate(pieces):
            if i in special or i in eos or piece is None:
                tokens.append(b"")
            elif i in added:
                tokens.append(str(added[i].content).encode("utf-8"))
            else:
                tokens.append(_piece_bytes(piece, style, i))
        tokens.extend(b"" for _ in range(size - n))
        return cls(tuple(tokens), eos, frozenset(special) | eos)


def _special_ids(tokenizer: Any) -> set[int]:
    ids = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
    for i, token in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(token, "special", False):
            ids.add(int(i))
    return ids


def _piece_style(tokenizer: Any) -> str:
    """'byte_level' or 'sentencepiece', read off the fast tokenizer's decoder."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a slow tokenizer: SentencePiece-based ones are the slow ones left
        if hasattr(tokenizer, "sp_model"):
            return "sentencepiece"
        raise VocabularyError(f"cannot tell how {type(tokenizer).__name__} maps tokens to bytes")
    config = json.loads(backend.to_str())
    kinds = _component_types(config.get("decoder")) | _component_types(config.get("pre_tokenizer"))
    if "ByteLevel" in kinds:
        return "byte_level"
    if kinds & {"ByteFallback", "Metaspace", "Replace"}:
        return "sentencepiece"
    model = config.get("model", {})
    if model.get("byte_fallback"):
        return "sentencepiece"
    raise VocabularyError(f"unsupported tokenizer decoder {sorted(kinds) or 'none'}: cannot map tokens to exact bytes")


def _component_types(component: Any) -> set[str]:
    if not isinstance(component, dict):
        return set()
    kinds = {str(component.get("type"))}
    for key in ("decoders", "pretokenizers"):
        for child in component.get(key) or []:
            kinds |= _component_types(child)
    return kinds


def _piece_bytes(piece: str, style: str, token_id: int) -> bytes:
    if style == "byte_level":
        try:
            return bytes(_UNICODE_TO_BYTE[ch] for ch in piece)
        except KeyError:  # a piece outside the byte alphabet is plain text
            return piece.encode("utf-8")
    match = _BYTE_PIECE.match(piece)
    if match:
        return bytes([int(match.group(1), 16)])
    return piece.replace(_SPM_SPACE, " ").encode("utf-8")
