"""Token masks on torch tensors, and the grammar-mask plugin.

Masks travel as packed int32 bitmasks (bit ``i % 32`` of word ``i // 32``,
the xgrammar/llguidance layout). :func:`apply_token_bitmask` unpacks them on
the scores' device and applies them in one op (torch bit operations and
``masked_fill`` on an accelerator); on the CPU a compiled kernel writes
``-inf`` over the left-out columns of a copy, word by word (numpy's
``unpackbits`` and ``torch.where`` without numba).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from gramspec.grammars.compiled import CompiledGrammar, Matcher, mask_words
from gramspec.jit import kernel
from gramspec.plugins.base import Plugin, _check_draft_shape

_BIT_SHIFTS: dict[torch.device, torch.Tensor] = {}


def _shifts(device: torch.device) -> torch.Tensor:
    found = _BIT_SHIFTS.get(device)
    if found is None:
        found = _BIT_SHIFTS[device] = torch.arange(32, dtype=torch.int32, device=device)
    return found


_MINUS_INF: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def _minus_inf(like: torch.Tensor) -> torch.Tensor:
    key = (like.device, like.dtype)
    found = _MINUS_INF.get(key)
    if found is None:
        found = _MINUS_INF[key] = torch.tensor(-torch.inf, device=like.device, dtype=like.dtype)
    return found


def unpack_bitmask(bitmask: torch.Tensor, num_columns: int) -> torch.Tensor:
    """A packed int32 bitmask (``(..., words)``) as bool ``(..., num_columns)``.

    Columns past the bitmask's ``words * 32`` bits are False (never allowed).
    """
    if bitmask.device.type == "cpu":
        return _unpack_with_numpy(bitmask, num_columns)
    return _unpack_with_torch(bitmask, num_columns)


def _unpack_with_numpy(bitmask: torch.Tensor, num_columns: int) -> torch.Tensor:
    return _unpack_words(bitmask.numpy(), num_columns)


def _unpack_words(words: np.ndarray, num_columns: int) -> torch.Tensor:
    words = np.ascontiguousarray(words, dtype=np.int32)
    bits = np.unpackbits(words.view(np.uint8), axis=-1, count=min(num_columns, words.shape[-1] * 32), bitorder="little")
    allowed = torch.from_numpy(bits.view(bool))
    return _pad_columns(allowed, num_columns)


def _unpack_with_torch(bitmask: torch.Tensor, num_columns: int) -> torch.Tensor:
    bits = (bitmask.unsqueeze(-1) >> _shifts(bitmask.device)) & 1
    allowed = bits.reshape(*bitmask.shape[:-1], bitmask.shape[-1] * 32).bool()
    return _pad_columns(allowed, num_columns)


def _pad_columns(allowed: torch.Tensor, num_columns: int) -> torch.Tensor:
    have = allowed.shape[-1]
    if have == num_columns:
        return allowed
    if have > num_columns:
        return allowed[..., :num_columns]
    pad = torch.zeros(*allowed.shape[:-1], num_columns - have, dtype=torch.bool, device=allowed.device)
    return torch.cat([allowed, pad], dim=-1)


def _fill_left_out(values: np.ndarray, words: np.ndarray, minus_inf: Any) -> None:
    """Write ``minus_inf`` into the columns of ``values`` (``[rows, V]``, the
    scores' bits as integers) whose bit in ``words`` (``[rows, W]``) is 0, and
    into every column past the words' bits."""
    rows, columns = values.shape
    for row in range(rows):
        for w in range(min(words.shape[1], (columns + 31) // 32)):
            word = words[row, w]
            base = w * 32
            if word == -1:
                continue
            if word == 0 and base + 32 <= columns:
                values[row, base : base + 32] = minus_inf
                continue
            for bit in range(min(32, columns - base)):
                if not (word >> bit) & 1:
                    values[row, base + bit] = minus_inf
        values[row, words.shape[1] * 32 :] = minus_inf


_fill_kernel = kernel(_fill_left_out)
#: The integer type that views each float type's bits, and -inf's bits in it.
_BIT_VIEWS = {
    dtype: (view, torch.tensor(-torch.inf, dtype=dtype).view(view).item())
    for dtype, view in ((torch.float32, torch.int32), (torch.float16, torch.int16), (torch.bfloat16, torch.int16), (torch.float64, torch.int64))
}


def apply_token_bitmask(scores: torch.Tensor, bitmask: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``scores`` with the tokens the bitmask leaves out set to ``-inf`` (a new tensor).

    ``scores`` is ``(V,)`` or ``(B, V)``; the bitmask has matching leading
    dimensions. Its bits past column ``V`` are ignored, and columns past its
    bits are masked (a model may have more logits than the tokenizer has ids).
    """
    if scores.device.type == "cpu":  # straight from numpy: no tensor round trip
        words = bitmask.numpy() if isinstance(bitmask, torch.Tensor) else bitmask
        bits = _BIT_VIEWS.get(scores.dtype)
        if _fill_kernel is not None and bits is not None:
            view, minus_inf = bits
            # the copy is numpy's (fewer calls than torch's clone between two forwards)
            values = scores.detach().view(view).numpy().copy()
            words = np.ascontiguousarray(words, dtype=np.int32)
            _fill_kernel(values[None] if values.ndim == 1 else values, words[None] if words.ndim == 1 else words, minus_inf)
            return torch.from_numpy(values).view(scores.dtype)
        allowed = _unpack_words(words, scores.shape[-1])
    else:
        allowed = unpack_bitmask(torch.as_tensor(bitmask).to(scores.device, non_blocking=True), scores.shape[-1])
    return torch.where(allowed, scores, _minus_inf(scores))


def apply_token_bitmask_inplace(scores: torch.Tensor, bitmask: torch.Tensor | np.ndarray) -> None:
    """Like :func:`apply_token_bitmask`, writing into ``scores``."""
    words = torch.as_tensor(bitmask).to(scores.device, non_blocking=True)
    scores.masked_fill_(~unpack_bitmask(words, scores.shape[-1]), -torch.inf)


class GrammarMask(Plugin):
    """Masks the tokens a compiled grammar (Lark, JSON Schema or regex) does not allow.

    Holds one :class:`Matcher`; EOS is allowed exactly when the text so far is
    complete, and after EOS nothing is.
    """

    def __init__(self, grammar: CompiledGrammar) -> None:
        self.grammar = grammar
        self.matcher: Matcher = grammar.matcher()
        self._words = mask_words(grammar.vocab.size)

    def __repr__(self) -> str:
        return f"GrammarMask({self.grammar!r})"

    def reset(self, prefix: Sequence[int] = ()) -> None:
        """Start at the beginning of the grammar (the prompt is not part of the constrained text)."""
        self.matcher.reset()

    def bitmask(self) -> np.ndarray:
        """The current packed mask (a fresh int32 array)."""
        out = np.zeros(self._words, dtype=np.int32)
        self.matcher.fill_mask(out)
        return out

    def process(self, scores: torch.Tensor) -> torch.Tensor:
        return apply_token_bitmask(scores, self.bitmask())

    def is_allowed(self, token: int) -> bool:
        """Single-token check, without computing the whole mask."""
        return token < self.grammar.vocab.size and self.matcher.is_allowed(token)

    def advance(self, token: int) -> bool:
        return self.matcher.advance(token)

    def rollback(self, n: int = 1) -> None:
        self.matcher.rollback(n)

    def process_positions(self, scores: torch.Tensor, draft: Sequence[int]) -> torch.Tensor:
        """All draft positions' masks in one bitmask, applied with one op."""
        _check_draft_shape(scores, draft)
        bitmask = np.zeros((scores.shape[0], self._words), dtype=np.int32)  # rows past a rejection stay empty
        taken = 0
        try:
            for i in range(scores.shape[0]):
                self.matcher.fill_mask(bitmask, i)
                if i < len(draft):
                    if not self.matcher.advance(draft[i]):
                        break
                    taken += 1
        finally:
            self.matcher.rollback(taken)
        return apply_token_bitmask(scores, bitmask)
