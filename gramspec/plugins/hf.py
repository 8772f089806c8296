"""Hugging Face ``LogitsProcessor`` adapters for grammar constraints.

``model.generate(..., logits_processor=[JSONSchemaLogitsProcessor(schema, tokenizer)])``
works with batches of ragged (left-padded) prompts, greedy decoding,
sampling, ``num_return_sequences`` and beam search. The processor never
assumes that row ``i`` of one step continues row ``i`` of the previous one:
each row's matcher is derived from the tokens generated so far in
``input_ids``, cached by that prefix, so beams that are reordered or cloned
get the right state.

EOS is allowed only when the row's text is complete; after EOS (and after a
token the grammar rejects, which only another processor could force) a row
may only take EOS again, as transformers pads finished rows anyway. A
constraint still open when generation stops is reported by
:meth:`GrammarConstraintLogitsProcessor.truncated`.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from transformers.generation.logits_process import LogitsProcessor

from gramspec.grammars.compiled import CompiledGrammar, Matcher, mask_words, set_mask_bits
from gramspec.plugins.base import argmax_index
from gramspec.plugins.mask import apply_token_bitmask
from gramspec.vocab import Vocabulary

_vocab_lock = threading.Lock()
_vocabs: weakref.WeakKeyDictionary[Any, dict[tuple[int, tuple[int, ...] | None], Vocabulary]] = (
    weakref.WeakKeyDictionary()
)
_grammars: dict[tuple[str, str, str], CompiledGrammar] = {}
_GRAMMAR_CACHE_SIZE = 64


def vocabulary_for(
    tokenizer: Any, *, vocab_size: int | None = None, eos_token_ids: Iterable[int] | None = None
) -> Vocabulary:
    """The :class:`Vocabulary` of ``tokenizer``, built once per (tokenizer, size, EOS ids).

    ``vocab_size``: the model's number of logits when it differs from
    ``len(tokenizer)``; the vocabulary covers ``max(len(tokenizer), vocab_size)`` ids.
    """
    size = max(len(tokenizer), vocab_size or 0)
    eos = None if eos_token_ids is None else tuple(sorted({int(i) for i in eos_token_ids}))
    key = (size, eos)
    with _vocab_lock:
        try:
            per_tokenizer = _vocabs.setdefault(tokenizer, {})
        except TypeError:  # not weak-referenceable: no cache
            per_tokenizer = {}
        found = per_tokenizer.get(key)
        if found is None:
            found = per_tokenizer[key] = Vocabulary.from_tokenizer(tokenizer, vocab_size=size, eos_token_ids=eos)
        return found


def compile_constraint(kind: str, source: Any, vocab: Vocabulary, **options: Any) -> CompiledGrammar:
    """Compile a ``"schema"``, ``"grammar"`` (Lark) or ``"regex"`` constraint, cached in memory."""
    import json

    text = source if isinstance(source, str) else json.dumps(source, sort_keys=True, default=repr)
    key = (kind, text + repr(sorted(options.items())), vocab.fingerprint)
    found = _grammars.get(key)
    if found is not None:
        return found
    if kind == "schema":
        from gramspec.grammars.json_schema import compile_json_schema

        grammar = compile_json_schema(source, vocab, **options)
    elif kind == "grammar":
        from gramspec.grammars.frontend import compile_grammar

        grammar = compile_grammar(source, vocab, **options)
    elif kind == "regex":
        from gramspec.grammars.frontend import compile_regex

        grammar = compile_regex(source, vocab, **options)
    else:
        raise ValueError(f"unknown constraint kind {kind!r}; expected 'schema', 'grammar' or 'regex'")
    if len(_grammars) >= _GRAMMAR_CACHE_SIZE:
        _grammars.pop(next(iter(_grammars)))
    _grammars[key] = grammar
    return grammar


_REJECTED = object()  # a row whose tokens left the grammar (another processor forced a token)
_TOKEN_DTYPE = np.dtype(np.int64)  # of the token ids in a row key
_TOKEN_BYTES = _TOKEN_DTYPE.itemsize


class GrammarConstraintLogitsProcessor(LogitsProcessor):
    """Masks every row of ``scores`` to the tokens ``grammar`` allows after that row's generated tokens."""

    def __init__(self, grammar: CompiledGrammar, *, assume_greedy: bool = False) -> None:
        self.grammar = grammar
        #: Greedy fast path: a row whose argmax the grammar allows gets a one-token mask
        #: (that token only) instead of the full mask. Only for callers that decode
        #: greedily (``do_sample=False``, ``num_beams=1``): a LogitsProcessor cannot tell.
        self.assume_greedy = assume_greedy
        #: Rows that needed the full mask / took the greedy fast path (whole lifetime).
        self.full_masks = 0
        self.fast_path_hits = 0
        self._eos = np.array(sorted(grammar.vocab.eos_token_ids), dtype=np.int64)
        if not self._eos.size:
            raise ValueError("the vocabulary has no EOS token id: generation could never stop at the end of the text")
        self._words = mask_words(grammar.vocab.size)
        self.reset()

    def reset(self) -> None:
        """Forget the current generation (done automatically when a new one starts)."""
        self._prompt: torch.Tensor | None = None  # the current generation's prompt
        self._last_length = -1
        self._states: dict[bytes, Matcher | object] = {}
        #: Rows (by index at the last step) that took a token the grammar rejects.
        self.rejected_rows: set[int] = set()

    @property
    def prompt_length(self) -> int | None:
        """The current generation's prompt length (None before the first call)."""
        return None if self._prompt is None else int(self._prompt.shape[1])

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        length = int(input_ids.shape[1])
        prompt = self._prompt
        if (
            prompt is None
            or length != self._last_length + 1
            or not torch.equal(input_ids[:, : prompt.shape[1]], prompt)
        ):  # a new generation: another prompt, even one exactly one token longer than the last sequence
            self.reset()
            prompt = self._prompt = input_ids.clone()
        self._last_length = length
        generated = input_ids[:, prompt.shape[1] :]
        rows = (generated if generated.device.type == "cpu" else generated.cpu()).numpy().astype(_TOKEN_DTYPE, copy=False)
        # a row's key is its generated tokens' bytes: building and hashing it stays
        # in C, so long generations do not pay a Python tuple per row and token
        keys = [row.tobytes() for row in rows]
        # a parent state continued by a single row is advanced in place, otherwise forked
        children: dict[bytes, int] = {}
        if rows.shape[1]:
            for key in keys:
                children[key[:-_TOKEN_BYTES]] = children.get(key[:-_TOKEN_BYTES], 0) + 1
        states: dict[bytes, Matcher | object] = {}
        bitmask = np.zeros((len(keys), self._words), dtype=np.int32)
        self.rejected_rows = set()
        argmax = finite = None
        if self.assume_greedy:
            argmax, finite = _row_argmax(scores)
        for row, key in enumerate(keys):
            state = states.get(key)
            if state is None:
                state = states[key] = self._derive(key, children)
            if isinstance(state, Matcher) and not state.is_terminated():
                if argmax is not None and finite is not None:
                    token = argmax[row]
                    if finite[row] and token < self.grammar.vocab.size and state.is_allowed(token):
                        # the greedy choice of the full-mask path: the overall argmax is allowed
                        bit = 1 << (token & 31)
                        bitmask[row, token >> 5] = bit - (1 << 32) if bit >> 31 else bit  # as int32
                        self.fast_path_hits += 1
                        continue
                self.full_masks += 1
                state.fill_mask(bitmask, row)
            else:  # finished (or rejected): EOS only, so the row can be padded
                if state is _REJECTED:
                    self.rejected_rows.add(row)
                set_mask_bits(bitmask[row], self._eos)
        self._states = states
        return apply_token_bitmask(scores, bitmask)  # type: ignore[return-value]

    def _derive(self, key: bytes, children: dict[bytes, int]) -> Matcher | object:
        if not key:
            return self.grammar.matcher()
        parent_key = key[:-_TOKEN_BYTES]
        parent = self._states.get(parent_key)
        if parent is None:
            return self._walk(np.frombuffer(key, dtype=_TOKEN_DTYPE).tolist())
        if parent is _REJECTED or (isinstance(parent, Matcher) and parent.is_terminated()):
            return parent
        assert isinstance(parent, Matcher)
        matcher = parent if children.get(parent_key, 0) <= 1 else parent.fork()
        token = int.from_bytes(key[-_TOKEN_BYTES:], sys.byteorder, signed=True)
        return matcher if matcher.advance(token) else _REJECTED

    def _walk(self, tokens: Sequence[int]) -> Matcher | object:
        matcher = self.grammar.matcher()
        for token in tokens:
            if matcher.is_terminated():
                break
            if not matcher.advance(token):
                return _REJECTED
        return matcher

    def truncated(self, sequences: torch.Tensor, prompt_length: int | None = None) -> list[bool]:
        """For each row of generate's output, whether its constraint was left open
        (no EOS after a complete text: cut by ``max_new_tokens``, or rejected).

        ``prompt_length`` defaults to the last generation's prompt length (the
        width of the padded prompt batch).
        """
        start = self.prompt_length if prompt_length is None else prompt_length
        if start is None:
            raise ValueError("no generation has run with this processor; pass prompt_length")
        out = []
        for row in sequences[:, start:].tolist():
            state = self._walk(row)
            out.append(not (isinstance(state, Matcher) and state.is_terminated()))
        return out


def _row_argmax(scores: torch.Tensor) -> tuple[list[int], list[bool]]:
    """Each row's argmax, and whether its score is finite."""
    indices = argmax_index(scores)
    if isinstance(indices, np.ndarray):  # on the CPU: numpy, fewer and lighter calls between two forwards
        values = scores.detach().numpy()
        return indices.tolist(), np.isfinite(values[np.arange(values.shape[0]), indices]).tolist()
    return indices.tolist(), torch.isfinite(scores.gather(-1, indices[:, None])[:, 0]).tolist()


def _vocab_args(tokenizer: Any, vocab_size: int | None, eos_token_ids: Iterable[int] | None) -> Vocabulary:
    return vocabulary_for(tokenizer, vocab_size=vocab_size, eos_token_ids=eos_token_ids)


class JSONSchemaLogitsProcessor(GrammarConstraintLogitsProcessor):
    """Constrains generation to JSON that validates against ``schema`` (dict, JSON text, bool or pydantic model).

    ``vocab_size``: the model's number of logits if it differs from
    ``len(tokenizer)``; ``eos_token_ids``: the ids that end generation
    (default: the tokenizer's EOS); ``assume_greedy=True``: the caller decodes
    greedily (``do_sample=False``, one beam), so a row whose argmax the grammar
    allows gets only that token instead of the full mask (same tokens, fewer
    masks; wrong for sampling and beam search); other keywords go to
    ``compile_json_schema`` (``whitespace``, ``unlisted_keys="forbid"``, ...).
    """

    def __init__(
        self,
        schema: Any,
        tokenizer: Any,
        *,
        vocab_size: int | None = None,
        eos_token_ids: Iterable[int] | None = None,
        assume_greedy: bool = False,
        **compile_options: Any,
    ) -> None:
        self.schema = schema
        vocab = _vocab_args(tokenizer, vocab_size, eos_token_ids)
        super().__init__(compile_constraint("schema", schema, vocab, **compile_options), assume_greedy=assume_greedy)


class GrammarLogitsProcessor(GrammarConstraintLogitsProcessor):
    """Constrains generation to the language of a Lark grammar (keywords as for JSONSchemaLogitsProcessor)."""

    def __init__(
        self,
        lark_text: str,
        tokenizer: Any,
        *,
        vocab_size: int | None = None,
        eos_token_ids: Iterable[int] | None = None,
        assume_greedy: bool = False,
        **compile_options: Any,
    ) -> None:
        self.lark_text = lark_text
        vocab = _vocab_args(tokenizer, vocab_size, eos_token_ids)
        super().__init__(compile_constraint("grammar", lark_text, vocab, **compile_options), assume_greedy=assume_greedy)


class RegexLogitsProcessor(GrammarConstraintLogitsProcessor):
    """Constrains generation to strings ``re.fullmatch`` accepts for ``pattern``."""

    def __init__(
        self,
        pattern: str,
        tokenizer: Any,
        *,
        vocab_size: int | None = None,
        eos_token_ids: Iterable[int] | None = None,
        assume_greedy: bool = False,
        **compile_options: Any,
    ) -> None:
        self.pattern = pattern
        vocab = _vocab_args(tokenizer, vocab_size, eos_token_ids)
        super().__init__(compile_constraint("regex", pattern, vocab, **compile_options), assume_greedy=assume_greedy)
