"""Compiled grammars and per-sequence matchers.

A :class:`CompiledGrammar` pairs a grammar (terminals as byte DFAs, rules over
terminals) with a vocabulary. It is immutable from the outside and safe to
share between threads: what it learns while matching (Earley sets, lexer
states, token classifications, whole masks) goes into append-only caches.

Masks are exact: token ``t`` is allowed iff the bytes so far followed by
``t``'s bytes are a viable prefix of the language (under greedy lexing, see
docs/grammars.md). How a mask is computed for a state (Earley set ``P``, lexer
state ``L``):

1. per lexer state (cached): walk the vocabulary's byte trie through the
   lexer DFA, one numpy step per depth (a prefix shared by many tokens is
   stepped once). Tokens that stay inside the current lexeme are allowed
   whatever the parser holds; tokens that die without completing a lexeme are
   rejected; the rest cross a lexeme boundary and are grouped by the state
   at the boundary, as the trie nodes where they cross;
2. per (P, L) (cached, LRU): each boundary group is decided once by running
   the parser through it and walking the trie on from those nodes in the
   next lexeme's state (that walk is cached by the lexer states on the way).

Walks share work below the first bytes: where many nodes of one depth reach
the same lexer state, the subtrees below them come from that state's walks
at that depth, cached per node once a second walk asks (a listed key being
matched beside the string of any other key: every byte but the key's next
one leads to the free string's state, whichever key position came before).

Both caches are keyed by a representative of ``L``: lexer states that treat
every string as long as the longest token alike share one (the characters of
a string with ``maxLength`` far from its bounds, see ``lexer.Horizon``).
"""

from __future__ import annotations

import bisect
import itertools
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import numpy as np

from gramspec.errors import MatcherError
from gramspec.grammars import trie_walk
from gramspec.grammars.earley import EarleyParser, Rule
from gramspec.grammars.lexer import Lexer
from gramspec.grammars.regex_dfa import UTF8_STEP, ByteDFA
from gramspec.jit import kernel
from gramspec.vocab import Vocabulary

State = tuple[int, int]  # (Earley set id, lexer state id)

#: How many whole masks a compiled grammar keeps (least recently used go first).
DEFAULT_MASK_CACHE = 4096
_MAX_FORCED_BYTES = 1024
#: Tokens of up to this many bytes can be walked apart from longer ones.
SHORT_TOKEN_BYTES = 16
#: A trie walk left with at most this many prefixes, each a single token's, finishes them token by token.
_SCALAR_TOKENS = 48
_WALK_MEMO_LIMIT = 1 << 20
#: set_mask_bits sets up to this many ids one by one.
_FEW_IDS = 256
#: A walk hands the subtrees of at least this many nodes that it reaches in one
#: lexer state to that state's cached walks at that depth.
_SHARED_NODES = 32
#: Inside positions kept in those walks per grammar (int64: 64 MB).
_SUBTREE_POSITIONS_LIMIT = 1 << 23


def mask_words(vocab_size: int) -> int:
    """int32 words per row of a packed token bitmask."""
    return (vocab_size + 31) // 32


def unpack_mask(words: np.ndarray, vocab_size: int) -> np.ndarray:
    """A packed int32 bitmask row as a bool array of ``vocab_size`` entries."""
    bits = np.unpackbits(np.ascontiguousarray(words, dtype=np.int32).view(np.uint8), bitorder="little")
    return bits[:vocab_size].astype(bool)


def _set_bits(words: np.ndarray, ids: np.ndarray) -> None:
    bits = words.view(np.uint32)
    for token in ids:
        if token < 0 or token >> 5 >= bits.shape[0]:
            raise IndexError("token id outside the bitmask")
        bits[token >> 5] |= np.uint32(1) << np.uint32(token & 31)


_set_bits_kernel = kernel(_set_bits)


def set_mask_bits(words: np.ndarray, ids: np.ndarray) -> None:
    """Set the bits of token ``ids`` in a packed int32 bitmask row, in place."""
    ids = np.asarray(ids, dtype=np.int64)
    if _set_bits_kernel is not None and words.flags.c_contiguous:
        _set_bits_kernel(words, ids)
        return
    if ids.size <= _FEW_IDS:
        np.bitwise_or.at(words.view(np.uint32), ids >> 5, np.left_shift(np.uint32(1), (ids & 31).astype(np.uint32)))
        return
    # ufunc.at costs ~20 ns an id: many ids go through a bool row and one packbits
    allowed = np.zeros(words.shape[0] * 32, dtype=bool)
    allowed[ids] = True
    words |= np.packbits(allowed, bitorder="little").view(np.int32)


def _set_range_bits(words: np.ndarray, order: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
    bits = words.view(np.uint32)
    for i in range(lo.shape[0]):
        for position in range(lo[i], hi[i]):
            token = order[position]
            if token < 0 or token >> 5 >= bits.shape[0]:
                raise IndexError("token id outside the bitmask")
            bits[token >> 5] |= np.uint32(1) << np.uint32(token & 31)


_set_range_bits_kernel = kernel(_set_range_bits)


def set_range_bits(words: np.ndarray, order: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
    """Set the bits of tokens ``order[lo[i]:hi[i]]`` (every ``i``) in a packed int32 bitmask row, in place."""
    if _set_range_bits_kernel is not None and words.flags.c_contiguous:
        _set_range_bits_kernel(words, order, lo, hi)
        return
    set_mask_bits(words, order[_expand_ranges(lo, hi)])


def pack_mask(allowed: np.ndarray) -> np.ndarray:
    """A bool array as a packed int32 bitmask row (bit ``i % 32`` of word ``i // 32``)."""
    n = mask_words(allowed.shape[0])
    padded = np.zeros(n * 32, dtype=bool)
    padded[: allowed.shape[0]] = allowed
    return np.packbits(padded, bitorder="little").view(np.int32)


class TokenTable:
    """The vocabulary as arrays, built once per vocabulary and shared."""

    _cache: ClassVar[dict[str, TokenTable]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, vocab: Vocabulary) -> None:
        self.vocab = vocab
        self.size = vocab.size
        self.lengths = np.array([len(t) for t in vocab.token_bytes], dtype=np.int32)
        width = max(int(self.lengths.max(initial=0)), 1)
        flat = np.frombuffer(b"".join(t.ljust(width, b"\0") for t in vocab.token_bytes), dtype=np.uint8)
        self.matrix = flat.reshape(self.size, width)
        self.nonempty = np.flatnonzero(self.lengths > 0).astype(np.int32)
        self.eos = np.array(sorted(vocab.eos_token_ids), dtype=np.int64)
        self.by_bytes: dict[bytes, int] = {}
        for token_id, data in enumerate(vocab.token_bytes):
            if data and data not in self.by_bytes:
                self.by_bytes[data] = token_id
        self.sorted_bytes = sorted(self.by_bytes)
        self.max_length = width
        # all tokens, then (when some are long) short tokens and long ones apart:
        # a long token tells apart lexer states that every short one treats
        # alike (the last characters before a string's maxLength), so a walk of
        # the short tokens can be shared more widely
        lengths = self.lengths[self.nonempty]
        short = self.nonempty[lengths <= SHORT_TOKEN_BYTES]
        long = self.nonempty[lengths > SHORT_TOKEN_BYTES]
        self.tries: tuple[TokenTrie, ...] = (TokenTrie.build(self, self.nonempty),)
        if short.size and long.size:
            self.tries += (TokenTrie.build(self, short), TokenTrie.build(self, long))

    @classmethod
    def for_vocab(cls, vocab: Vocabulary) -> TokenTable:
        with cls._lock:
            table = cls._cache.get(vocab.fingerprint)
            if table is None:
                table = cls._cache[vocab.fingerprint] = cls(vocab)
            return table

    def extends_further(self, data: bytes) -> bool:
        """Whether some token's bytes start with ``data`` and are longer."""
        i = bisect.bisect_right(self.sorted_bytes, data)
        return i < len(self.sorted_bytes) and self.sorted_bytes[i].startswith(data)


@dataclass(frozen=True)
class TrieLevel:
    """The distinct token prefixes of one length, sorted (so by parent, then byte)."""

    parent: np.ndarray  # int32 index of the prefix one byte shorter, in the level above
    byte: np.ndarray  # uint8 last byte
    lo: np.ndarray  # int32 range [lo, hi) of TokenTrie.order holding the tokens with this prefix;
    hi: np.ndarray  # the ones equal to the prefix come first, ``exact`` of them
    exact: np.ndarray
    child_lo: np.ndarray  # int32 range of children in the level below
    child_hi: np.ndarray
    below: np.ndarray  # uint64 [n, 4]: bit set of the bytes after the prefix in these tokens
    utf8: np.ndarray  # bool: the bytes after the prefix in these tokens are well-formed UTF-8 from a character's start (a last character may be cut short)


@dataclass(frozen=True)
class TokenTrie:
    """The non-empty tokens sorted by bytes, with their prefix tree.

    Every prefix's tokens are a contiguous range of ``order``, so a walk can
    settle a whole subtree at once (all of it dead, crossing a lexeme
    boundary at the same byte, or staying inside the lexeme)."""

    order: np.ndarray  # token ids sorted by their bytes
    levels: tuple[TrieLevel, ...]  # levels[d]: prefixes of d + 1 bytes

    @property
    def max_length(self) -> int:
        """Bytes of the longest token."""
        return len(self.levels)

    @cached_property
    def flat(self) -> trie_walk.FlatTrie:
        """The levels in single arrays, for the compiled walk."""
        return trie_walk.FlatTrie.of(self.levels)

    @classmethod
    def build(cls, table: TokenTable, ids: np.ndarray) -> TokenTrie:
        """The trie of tokens ``ids`` (non-empty)."""
        token_bytes = table.vocab.token_bytes
        order = np.array(sorted(ids.tolist(), key=token_bytes.__getitem__), dtype=np.int64)
        lengths = table.lengths[order]
        node = np.zeros(order.size, dtype=np.int64)  # each token's prefix node at the current depth
        raw: list[tuple[np.ndarray, ...]] = []
        for depth in range(table.max_length):
            active = np.flatnonzero(lengths > depth)
            if not active.size:
                break
            keys_d = node[active] * 256 + table.matrix[order[active], depth]
            unique, first, inverse = np.unique(keys_d, return_index=True, return_inverse=True)
            node[active] = inverse
            counts = np.bincount(inverse, minlength=unique.size)
            lo = active[first].astype(np.int32)
            ends = lengths[active] == depth + 1
            exact = np.bincount(inverse[ends], minlength=unique.size).astype(np.int32)
            raw.append(((unique >> 8).astype(np.int32), (unique & 255).astype(np.uint8), lo, (lo + counts).astype(np.int32), exact))
        levels: list[TrieLevel] = []
        below_next: np.ndarray | None = None
        # well_formed[i, k]: the bytes after prefix i are well-formed UTF-8
        # from decoder state k (see regex_dfa.UTF8_STEP)
        well_formed_next: np.ndarray | None = None
        for depth in range(len(raw) - 1, -1, -1):
            parent, byte, lo, hi, exact = raw[depth]
            n = parent.size
            below = np.zeros((n, 4), dtype=np.uint64)
            well_formed = np.ones((n, UTF8_STEP.shape[0]), dtype=bool)
            if depth + 1 < len(raw):
                child_parent, child_byte = raw[depth + 1][0], raw[depth + 1][1]
                child_lo = np.searchsorted(child_parent, np.arange(n), side="left").astype(np.int32)
                child_hi = np.searchsorted(child_parent, np.arange(n), side="right").astype(np.int32)
                assert below_next is not None and well_formed_next is not None
                child_bits = below_next.copy()
                word, bit = child_byte >> 6, (child_byte & 63).astype(np.uint64)
                child_bits[np.arange(child_byte.size), word] |= np.uint64(1) << bit
                has = child_hi > child_lo
                below[has] = np.bitwise_or.reduceat(child_bits, child_lo[has], axis=0)
                # a child's byte is allowed in decoder state k and its own tail is well-formed from the next state
                step = UTF8_STEP[:, child_byte].T.astype(np.int64)  # [children, k]
                child_ok = (step >= 0) & np.take_along_axis(well_formed_next, np.maximum(step, 0), axis=1)
                well_formed[has] = np.logical_and.reduceat(child_ok, child_lo[has], axis=0)
            else:
                child_lo = child_hi = np.zeros(n, dtype=np.int32)
            levels.append(TrieLevel(parent, byte, lo, hi, exact, child_lo, child_hi, below, well_formed[:, 0].copy()))
            below_next, well_formed_next = below, well_formed
        return cls(order.astype(np.int32), tuple(reversed(levels)))


#: Where a walk left the lexeme: trie nodes per depth (the node's own byte
#: is the first of the next lexeme), keyed by the lexer state that ended.
Crossings = dict[int, tuple[np.ndarray, np.ndarray]]  # boundary state -> (depths, nodes)


@dataclass(frozen=True)
class _LexClass:
    """Tokens classified from one lexer state."""

    inside: np.ndarray  # packed mask of tokens that stay inside the lexeme
    # per lexer state where the lexeme must end: the tokens crossing at their
    # first byte (a packed mask, None if there are none), and the trie nodes
    # where the others cross
    boundaries: tuple[tuple[int, np.ndarray | None, np.ndarray, np.ndarray], ...]  # (state, first, depths, nodes)


@dataclass(frozen=True)
class GrammarSpec:
    """What a grammar compiles to, before a vocabulary is attached."""

    terminal_names: tuple[str, ...]
    terminals: tuple[ByteDFA, ...]
    rules: tuple[Rule, ...]  # rule 0 is $accept -> start
    ignore: frozenset[int]
    source: str  # a short description for messages


class CompiledGrammar:
    """A grammar bound to a vocabulary; make one :class:`Matcher` per sequence."""

    def __init__(self, spec: GrammarSpec, vocab: Vocabulary, *, mask_cache_size: int = DEFAULT_MASK_CACHE) -> None:
        self.spec = spec
        self.vocab = vocab
        self.tokens = TokenTable.for_vocab(vocab)
        self._parser = EarleyParser(spec.rules, len(spec.terminals))
        self._lexer = Lexer(spec.terminals)
        self._mask_horizon = self._lexer.horizon(self.tokens.max_length)
        self._tries = tuple((trie, self._lexer.horizon(trie.max_length)) for trie in self.tokens.tries)
        self._lock = threading.RLock()
        self._start: dict[int, int] = {}
        self._end: dict[tuple[int, frozenset[int]], int | None] = {}
        self._lex_classes: dict[tuple[int, int], _LexClass] = {}
        self._path_walks: dict[tuple[int, ...], tuple[np.ndarray, Crossings]] = {}
        self._subtrees: dict[tuple[int, int, int], _SubtreeWalks] = {}
        self._subtree_positions = 0  # inside positions held by _subtrees
        self._subtrees_seen: set[tuple[int, int, int]] = set()
        self._masks: OrderedDict[State, np.ndarray] = OrderedDict()
        self._mask_cache_size = mask_cache_size
        self._walks: dict[tuple[int, int, int], State | None] = {}
        self._forced: dict[State, bytes] = {}
        self._next_bytes: dict[State, tuple[tuple[int, State], ...]] = {}
        p0 = self._parser.initial
        self.initial_state: State = self._normalize(p0, self._start_state(p0))

    def __repr__(self) -> str:
        return (
            f"CompiledGrammar({self.spec.source}, terminals={len(self.spec.terminals)}, "
            f"rules={len(self.spec.rules)}, vocab={self.vocab.size})"
        )

    @property
    def vocab_size(self) -> int:
        return self.vocab.size

    def matcher(self) -> Matcher:
        return Matcher(self)

    # -- whole strings (used by tests and the CLI) -------------------------

    def accepts_bytes(self, data: bytes) -> bool:
        """Whether ``data`` is a complete string of the language."""
        state = self.walk(self.initial_state, data)
        return state is not None and self.is_accepting(state)

    def is_viable_prefix(self, data: bytes) -> bool:
        return self.walk(self.initial_state, data) is not None

    # -- the state machine -------------------------------------------------

    def _start_state(self, parser_state: int) -> int:
        found = self._start.get(parser_state)
        if found is None:
            expected = self._parser[parser_state].expected | self.spec.ignore
            found = self._start[parser_state] = self._lexer.fresh_state(expected)
        return found

    def _end_lexeme(self, parser_state: int, accepted: frozenset[int]) -> int | None:
        """The parser state after a lexeme that any of ``accepted`` matches."""
        key = (parser_state, accepted)
        if key in self._end:
            return self._end[key]
        expected = self._parser[parser_state].expected
        regular = accepted & expected
        result: int | None = self._parser.scan(parser_state, regular) if regular else None
        if accepted & self.spec.ignore:
            result = parser_state if result is None else self._parser.union_with_previous(result, parser_state)
        self._end[key] = result
        return result

    def _normalize(self, parser_state: int, lexer_state: int) -> State:
        """End a lexeme that no byte can extend, so equal futures share a state."""
        lexer = self._lexer
        lexer.row(lexer_state)
        if not lexer.fresh[lexer_state] and not lexer.has_exit[lexer_state]:
            after = self._end_lexeme(parser_state, lexer.accepts[lexer_state])
            if after is not None:
                return after, self._start_state(after)
        return parser_state, lexer_state

    def walk(self, state: State, data: bytes) -> State | None:
        """The state after ``data``, or None if ``data`` leaves the language."""
        parser_state, lexer_state = state
        lexer = self._lexer
        for byte in data:
            nxt = lexer.step(lexer_state, byte)
            if nxt < 0:
                accepted = lexer.accepts[lexer_state]
                if not accepted:
                    return None
                after = self._end_lexeme(parser_state, accepted)
                if after is None:
                    return None
                parser_state = after
                lexer_state = self._start_state(after)
                nxt = lexer.step(lexer_state, byte)
                if nxt < 0:
                    return None
            lexer_state = nxt
        return self._normalize(parser_state, lexer_state)

    def walk_token(self, state: State, token_id: int) -> State | None:
        key = (state[0], state[1], token_id)
        if key in self._walks:
            return self._walks[key]
        data = self.vocab.token_bytes[token_id] if 0 <= token_id < self.vocab.size else b""
        result = self.walk(state, data) if data else None
        if len(self._walks) >= _WALK_MEMO_LIMIT:
            self._walks.clear()
        self._walks[key] = result
        return result

    def is_accepting(self, state: State) -> bool:
        parser_state, lexer_state = state
        if self._lexer.fresh[lexer_state]:
            return self._parser[parser_state].accepting
        accepted = self._lexer.accepts[lexer_state]
        if not accepted:
            return False
        after = self._end_lexeme(parser_state, accepted)
        return after is not None and self._parser[after].accepting

    def can_continue(self, state: State) -> bool:
        """Whether some non-empty text can follow (so the string is not finished)."""
        parser_state, lexer_state = state
        return bool(self._lexer.row(lexer_state).max() >= 0) or bool(self._parser[parser_state].expected)

    # -- masks -------------------------------------------------------------

    def mask(self, state: State) -> np.ndarray:
        """The packed int32 mask of tokens allowed in ``state`` (shared: do not modify)."""
        # lexer states no token tells apart have the same masks: the
        # characters of a string with maxLength, far from its bounds
        key = (state[0], self._mask_horizon.representative(state[1]))
        cached = self._masks.get(key)
        if cached is not None:
            self._masks.move_to_end(key)
            return cached
        words = self._compute_mask(key)
        with self._lock:
            self._masks[key] = words
            if len(self._masks) > self._mask_cache_size:
                self._masks.popitem(last=False)
        return words

    def _compute_mask(self, state: State) -> np.ndarray:
        # all in the packed layout: a mask is 1/32 of the vocabulary's size in memory
        parser_state, lexer_state = state
        words = np.zeros(mask_words(self.vocab.size), dtype=np.int32)
        # all tokens in one walk, unless a state that only long tokens tell
        # apart from this one came first: then its short tokens' walk is shared
        parts = [(0, lexer_state)]
        if len(self._tries) == 3:
            short = self._tries[1][1].representative(lexer_state)
            if short != lexer_state:
                parts = [(1, short), (2, lexer_state)]
        for part, own in parts:
            lex_class = self._lex_class(part, own)
            words |= lex_class.inside
            for boundary_state, first, depths, nodes in lex_class.boundaries:
                after = self._end_lexeme(parser_state, self._lexer.accepts[boundary_state])
                if after is None:
                    continue
                fresh = self._start_state(after)
                if first is not None:  # the lexeme ends before the token: the next state's mask decides
                    words |= self.mask((after, fresh)) & first
                if nodes.size:
                    path = (part, own, boundary_state)
                    set_mask_bits(words, self._resolve(after, fresh, depths, nodes, path))
        if self.is_accepting(state) and self.tokens.eos.size:
            set_mask_bits(words, self.tokens.eos)
        return words

    def _resolve(
        self, parser_state: int, lexer_state: int, depths: np.ndarray, nodes: np.ndarray, path: tuple[int, ...]
    ) -> np.ndarray:
        """Of the tokens under ``nodes`` (at ``depths``) of trie ``path[0]``,
        whose bytes from there on start a lexeme in ``lexer_state`` (parser in
        ``parser_state``), the ones that stay viable.

        ``path`` (the trie, then the lexer states that led to these nodes)
        determines them, so the lexer walk is cached by it: only the parser
        steps depend on ``parser_state``."""
        part = path[0]
        lexer_state = self._tries[part][1].representative(lexer_state)
        key = (*path, lexer_state)
        walked = self._path_walks.get(key)
        if walked is None:
            lo, hi, found = self._trie_walk(part, depths, nodes, lexer_state)
            walked = self._path_walks[key] = (self._tries[part][0].order[_expand_ranges(lo, hi)], found)
        inside, crossings = walked
        parts = [inside]
        for boundary_state, (sub_depths, sub_nodes) in crossings.items():
            after = self._end_lexeme(parser_state, self._lexer.accepts[boundary_state])
            if after is not None:
                sub_path = (*key, boundary_state)
                parts.append(self._resolve(after, self._start_state(after), sub_depths, sub_nodes, sub_path))
        return np.concatenate(parts)

    def _lex_class(self, part: int, lexer_state: int) -> _LexClass:
        """The tokens of trie ``part`` classified from ``lexer_state`` (a representative)."""
        found = self._lex_classes.get((part, lexer_state))
        if found is not None:
            return found
        trie = self._tries[part][0]
        roots = np.arange(trie.levels[0].parent.size, dtype=np.int32)
        lo, hi, crossings = self._trie_walk(part, np.zeros(roots.size, dtype=np.int32), roots, lexer_state)
        words = mask_words(self.vocab.size)
        inside = np.zeros(words, dtype=np.int32)
        set_range_bits(inside, trie.order, lo, hi)
        level0 = trie.levels[0]
        boundaries = []
        for state, (depths, nodes) in crossings.items():
            at_first = depths == 0
            first = None
            if at_first.any():
                first = np.zeros(words, dtype=np.int32)
                set_mask_bits(first, trie.order[_expand_ranges(level0.lo[nodes[at_first]], level0.hi[nodes[at_first]])])
            boundaries.append((state, first, depths[~at_first], nodes[~at_first]))
        lex_class = _LexClass(inside, tuple(boundaries))
        self._lex_classes[(part, lexer_state)] = lex_class
        return lex_class

    def _trie_walk(
        self, part: int, depths: np.ndarray, nodes: np.ndarray, lexer_state: int, *, share: bool = True
    ) -> tuple[np.ndarray, np.ndarray, Crossings]:
        """Walk the tokens under ``nodes`` (at ``depths``) of trie ``part``
        through the lexer from ``lexer_state``, from each node's own byte on,
        one depth per round (a prefix shared by many tokens is stepped once).

        Returns the tokens that end inside the lexeme (as ranges ``[lo, hi)``
        of the trie's ``order``), and per lexer state
        where the lexeme had to end (a complete lexeme), the nodes whose byte
        crossed that boundary; the others are dead. A node whose byte kills
        the lexeme settles its whole subtree; a live node whose remaining
        bytes all loop on its state (up to equivalence: fewer bytes than the
        trie's longest token remain, so states are stepped as their
        representatives) settles its subtree as inside."""
        if trie_walk.walk_kernel is not None:
            return self._compiled_walk(part, depths, nodes, lexer_state)
        lexer = self._lexer
        trie, horizon = self._tries[part]
        # ranges [lo, hi) of trie.order inside the lexeme, expanded once at the end
        inside_lo: list[np.ndarray] = []
        inside_hi: list[np.ndarray] = []
        inside: list[np.ndarray] = []  # token positions finished one by one
        crossed: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # depth, node, boundary state
        if depths.size and depths[0] == depths[-1] and (depths == depths[0]).all():
            starts = {int(depths[0]): nodes}
        else:
            starts = {int(d): nodes[depths == d] for d in np.unique(depths).tolist()}
        last_start = max(starts, default=-1)
        frontier = np.zeros(0, dtype=np.int32)
        before = np.zeros(0, dtype=np.int32)
        lexer.row(lexer_state)  # expanded: the first depth steps it
        table = lexer.table
        for depth in range(min(starts, default=len(trie.levels)), len(trie.levels)):
            level = trie.levels[depth]
            started = starts.get(depth)
            if started is not None:
                frontier = np.concatenate([frontier, started])
                before = np.concatenate([before, np.full(started.size, lexer_state, dtype=np.int32)])
            if not frontier.size:
                if depth >= last_start:
                    break
                continue
            if frontier.size <= _SCALAR_TOKENS and depth >= last_start and (level.hi[frontier] - level.lo[frontier] == 1).all():
                # only a few tokens' own tails are left (long tokens): stepping them
                # byte by byte costs less than numpy's per-call overhead per depth
                self._finish_tokens(part, depth, frontier, before, inside, crossed)
                break
            after = table[before, level.byte[frontier]]
            dead = after < 0
            if dead.any():
                ended = dead & lexer.has_accept[before]
                if ended.any():
                    crossed.append((np.full(int(ended.sum()), depth, dtype=np.int32), frontier[ended], before[ended]))
                live = ~dead
                frontier, after = frontier[live], after[live]
            after = horizon.representatives(after)
            # loops() expands the rows of these states: the next depth steps them
            loops, loops_on_characters = horizon.loops(after)
            outside = level.below[frontier] & ~loops
            # ASCII bytes that loop, and the others too or whole characters that loop (see trie_walk)
            settled = ~outside[:, :2].any(axis=1) & (~outside[:, 2:].any(axis=1) | (level.utf8[frontier] & loops_on_characters))
            lo = level.lo[frontier]
            inside_lo.append(lo)
            inside_hi.append(np.where(settled, level.hi[frontier], lo + level.exact[frontier]))
            open_ = ~settled
            frontier, after = frontier[open_], after[open_]
            if depth + 1 == len(trie.levels):
                break
            if share and frontier.size >= _SHARED_NODES:
                frontier, after = self._shared_subtrees(part, depth, frontier, after, inside, crossed)
            table = lexer.table
            frontier, parents = _children(level.child_lo[frontier], level.child_hi[frontier])
            before = after[parents]
        singles = np.concatenate(inside) if inside else np.zeros(0, dtype=np.int64)
        lo = np.concatenate([*inside_lo, singles])
        hi = np.concatenate([*inside_hi, singles + 1])
        if not crossed:
            return lo, hi, {}
        return lo, hi, _group_crossings(*(np.concatenate(parts) for parts in zip(*crossed)))

    def _compiled_walk(
        self, part: int, depths: np.ndarray, nodes: np.ndarray, lexer_state: int
    ) -> tuple[np.ndarray, np.ndarray, Crossings]:
        """:meth:`_trie_walk` by the compiled kernel (see :mod:`gramspec.grammars.trie_walk`)."""
        kernel = trie_walk.walk_kernel
        assert kernel is not None
        lexer = self._lexer
        trie, horizon = self._tries[part]
        flat = trie.flat
        # the start nodes have disjoint subtrees, so no node is visited twice
        scratch = flat.scratch()
        starts = scratch.starts[: nodes.size]
        starts[:] = flat.position[flat.offsets[depths] + nodes]
        cursor = scratch.cursor
        cursor[:] = (0, -1, 0, 0)
        # a state reached has its row expanded and the representatives of the
        # states it leads to known (what loops() computes)
        horizon.prepare(lexer_state)
        needed = 0
        while needed >= 0:
            arrays = horizon.kernel_arrays()
            needed = kernel(
                flat.byte, flat.depth, flat.lo, flat.hi, flat.exact, flat.end, flat.below, flat.utf8,
                lexer.table, lexer.has_accept, *arrays, starts, lexer_state, scratch.state_at, cursor,
                scratch.range_lo, scratch.range_hi, scratch.cross_node, scratch.cross_state,
            )
            if needed >= 0:
                horizon.prepare(horizon.representative(needed))
        n_ranges, n_cross = int(cursor[trie_walk.RANGES]), int(cursor[trie_walk.CROSSINGS])
        lo, hi = scratch.range_lo[:n_ranges].copy(), scratch.range_hi[:n_ranges].copy()
        if not n_cross:
            return lo, hi, {}
        crossing = flat.node[scratch.cross_node[:n_cross]]
        depth = flat.depth[scratch.cross_node[:n_cross]]
        # _group_crossings copies what it keeps out of the scratch buffers
        return lo, hi, _group_crossings(depth, (crossing - flat.offsets[depth]).astype(np.int32), scratch.cross_state[:n_cross])

    def _shared_subtrees(
        self,
        part: int,
        depth: int,
        frontier: np.ndarray,
        states: np.ndarray,
        inside: list[np.ndarray],
        crossed: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Settle the nodes of ``frontier`` (at ``depth``, stepped into ``states``)
        that many share a state from that state's subtree walks at this depth
        (cached, walked for the nodes not seen yet): lexer states that differ
        in a few bytes (a key being matched beside a free string) share them.
        Returns the nodes left to walk here."""
        values, counts = np.unique(states, return_counts=True)
        # the first time a state is reached this way its nodes are walked here:
        # a state reached once (most) would pay for sorting its walks for nothing
        candidates = values[counts >= _SHARED_NODES].tolist()
        first_time = {s for s in candidates if (part, depth, s) not in self._subtrees_seen}
        self._subtrees_seen.update((part, depth, s) for s in first_time)
        shared = np.array([s for s in candidates if s not in first_time], dtype=states.dtype)
        if not shared.size:
            return frontier, states
        level = self._tries[part][0].levels[depth]
        for state in shared.tolist():
            nodes = frontier[states == state]
            positions, crossings = self._subtree_walks(part, depth, state, nodes).select(level.lo[nodes], level.hi[nodes])
            inside.append(positions)
            if crossings[0].size:
                crossed.append(crossings)
        keep = ~np.isin(states, shared)
        return frontier[keep], states[keep]

    def _subtree_walks(self, part: int, depth: int, lexer_state: int, nodes: np.ndarray) -> _SubtreeWalks:
        """The cached walks from ``lexer_state`` below the trie nodes of ``depth``, with ``nodes`` among them."""
        key = (part, depth, lexer_state)
        trie = self._tries[part][0]
        level = trie.levels[depth]
        walks = self._subtrees.get(key)
        if walks is None:
            walks = _SubtreeWalks.empty(level.parent.size)
        missing = nodes[~walks.covered[nodes]]
        if not missing.size:
            return walks
        children, _ = _children(level.child_lo[missing], level.child_hi[missing])
        depths = np.full(children.size, depth + 1, dtype=np.int32)
        # not shared again below: every depth's walks would hold the same positions
        lo, hi, crossings = self._trie_walk(part, depths, children, lexer_state, share=False)
        positions = _expand_ranges(lo, hi)
        walks = walks.extended(trie, missing, positions, crossings)
        with self._lock:
            self._subtree_positions += positions.size
            if self._subtree_positions > _SUBTREE_POSITIONS_LIMIT:
                self._subtrees.clear()
                self._subtrees_seen.clear()
                self._subtree_positions = walks.inside.size
            self._subtrees[key] = walks
        return walks

    def _finish_tokens(
        self,
        part: int,
        depth: int,
        nodes: np.ndarray,
        states: np.ndarray,
        inside: list[np.ndarray],
        crossed: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    ) -> None:
        """:meth:`_trie_walk` from ``depth`` on for ``nodes`` whose subtree is one
        token each (the same rules, one byte at a time)."""
        lexer = self._lexer
        trie, horizon = self._tries[part]
        token_bytes = self.vocab.token_bytes
        ends: list[tuple[int, int, int]] = []
        ended: list[int] = []
        for node, state in zip(nodes.tolist(), states.tolist()):
            position = int(trie.levels[depth].lo[node])
            data = token_bytes[int(trie.order[position])]
            d = depth
            while True:
                nxt = lexer.step(state, data[d])
                if nxt < 0:
                    if lexer.has_accept[state]:
                        ends.append((d, node, state))
                    break
                state = horizon.representative(nxt)
                if d + 1 == len(data):
                    ended.append(position)
                    break
                node = int(trie.levels[d].child_lo[node])
                d += 1
        if ended:
            inside.append(np.array(ended, dtype=np.int64))
        if ends:
            crossed.append(tuple(np.array(column, dtype=np.int32) for column in zip(*ends)))  # type: ignore[arg-type]

    # -- forced text ---------------------------------------------------------

    def next_bytes(self, state: State) -> tuple[tuple[int, State], ...]:
        """The bytes that may come next from ``state``, each with the state after it."""
        found = self._next_bytes.get(state)
        if found is None:
            found = tuple((b, nxt) for b in range(256) if (nxt := self.walk(state, bytes((b,)))) is not None)
            if len(self._next_bytes) >= _WALK_MEMO_LIMIT >> 6:
                self._next_bytes.clear()
            self._next_bytes[state] = found
        return found

    def forced_bytes(self, state: State) -> bytes:
        """The longest byte string the grammar allows no alternative to from ``state``."""
        found = self._forced.get(state)
        if found is not None:
            return found
        out = bytearray()
        current = state
        while len(out) < _MAX_FORCED_BYTES and not self.is_accepting(current):
            options = self.next_bytes(current)
            if len(options) != 1:
                break
            out.append(options[0][0])
            current = options[0][1]
        result = bytes(out)
        self._forced[state] = result
        return result

    def segment(self, state: State, data: bytes) -> list[tuple[int, State]]:
        """``data`` split into tokens by longest match, each token one the grammar takes
        from where the previous one left it; with the state after each token. Stops
        early at a place no such token starts."""
        table = self.tokens
        out: list[tuple[int, State]] = []
        i = 0
        while i < len(data):
            for length in range(min(table.max_length, len(data) - i), 0, -1):
                token_id = table.by_bytes.get(data[i : i + length])
                if token_id is not None and (nxt := self.walk_token(state, token_id)) is not None:
                    out.append((token_id, nxt))
                    state = nxt
                    i += length
                    break
            else:
                break
        return out


def _group_crossings(depths: np.ndarray, nodes: np.ndarray, states: np.ndarray) -> Crossings:
    """Crossing nodes grouped by the lexer state whose lexeme they end."""
    order = np.argsort(states, kind="stable")
    depths, nodes, states = depths[order], nodes[order], states[order]
    bounds = [0, *(np.flatnonzero(np.diff(states)) + 1).tolist(), states.size]
    return {int(states[a]): (depths[a:b], nodes[a:b]) for a, b in itertools.pairwise(bounds)}


@dataclass(frozen=True)
class _SubtreeWalks:
    """Walks, from one lexer state, of the subtrees below some nodes of one
    trie depth (each node's bytes already stepped), sorted by position in the
    trie's order, so that a node's part is a range of positions."""

    covered: np.ndarray  # bool per node of the depth: its subtree is in here
    inside: np.ndarray  # positions, sorted
    cross_first: np.ndarray  # first position under each crossing node, sorted
    cross_depths: np.ndarray
    cross_nodes: np.ndarray
    cross_states: np.ndarray

    @classmethod
    def empty(cls, nodes: int) -> _SubtreeWalks:
        none = np.zeros(0, dtype=np.int32)
        return cls(np.zeros(nodes, dtype=bool), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), none, none, none)

    def extended(self, trie: TokenTrie, nodes: np.ndarray, positions: np.ndarray, crossings: Crossings) -> _SubtreeWalks:
        """These walks and the ones of ``nodes`` (their results)."""
        covered = self.covered.copy()
        covered[nodes] = True
        groups = [(d, n, np.full(d.size, s, dtype=np.int32)) for s, (d, n) in crossings.items()]
        depths, crossing_nodes, states = (
            np.concatenate([old, *parts]) for old, parts in zip(
                (self.cross_depths, self.cross_nodes, self.cross_states), zip(*groups) if groups else ((), (), ())
            )
        )
        first = np.zeros(depths.size, dtype=np.int64)
        for depth in np.unique(depths).tolist():
            at = depths == depth
            first[at] = trie.levels[depth].lo[crossing_nodes[at]]
        order = np.argsort(first, kind="stable")
        inside = np.sort(np.concatenate([self.inside, positions]))
        return _SubtreeWalks(covered, inside, first[order], depths[order], crossing_nodes[order], states[order])

    def select(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The inside positions and the crossings (depths, nodes, states) under the nodes spanning ``[lo, hi)``."""
        inside = self.inside[_expand_ranges(np.searchsorted(self.inside, lo), np.searchsorted(self.inside, hi))]
        picked = _expand_ranges(np.searchsorted(self.cross_first, lo), np.searchsorted(self.cross_first, hi))
        return inside, (self.cross_depths[picked], self.cross_nodes[picked], self.cross_states[picked])

def _concat_ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    total = 0
    for i in range(lo.shape[0]):
        total += max(hi[i] - lo[i], 0)
    out = np.empty(total, dtype=np.int64)
    at = 0
    for i in range(lo.shape[0]):
        for index in range(lo[i], hi[i]):
            out[at] = index
            at += 1
    return out


_concat_ranges_kernel = kernel(_concat_ranges)


def _expand_ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The indices of the ranges ``[lo[i], hi[i])``, concatenated."""
    if _concat_ranges_kernel is not None:
        return _concat_ranges_kernel(lo, hi)  # type: ignore[no-any-return]
    counts = hi - lo
    total = int(counts.sum())
    if not total:
        return np.zeros(0, dtype=np.int64)
    starts = np.cumsum(counts) - counts
    return np.repeat(lo - starts, counts) + np.arange(total)


def _children(child_lo: np.ndarray, child_hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The children ``[child_lo[i], child_hi[i])`` of a frontier, each with its parent's place in it."""
    counts = child_hi - child_lo
    return _expand_ranges(child_lo, child_hi).astype(np.int32), np.repeat(np.arange(counts.size), counts)


class Matcher:
    """One sequence's position in a grammar: advance, mask, roll back, fork."""

    def __init__(self, grammar: CompiledGrammar, *, history: Sequence[tuple[State, bool, int]] | None = None) -> None:
        self.grammar = grammar
        # (state, EOS taken, token that led here); entry 0 is the start
        self._history: list[tuple[State, bool, int]] = (
            list(history) if history is not None else [(grammar.initial_state, False, -1)]
        )

    def __repr__(self) -> str:
        return f"Matcher(tokens={len(self._history) - 1}, terminated={self.is_terminated()})"

    @property
    def state(self) -> State:
        return self._history[-1][0]

    @property
    def tokens(self) -> list[int]:
        """The tokens advanced so far (EOS included once taken)."""
        return [token for _, _, token in self._history[1:]]

    @property
    def num_tokens(self) -> int:
        """Tokens advanced so far (the most that :meth:`rollback` can undo)."""
        return len(self._history) - 1

    def advance(self, token_id: int) -> bool:
        """Take ``token_id`` if the grammar allows it; return False (state unchanged) if not."""
        state, terminated, _ = self._history[-1]
        if terminated:
            return False
        if token_id in self.grammar.vocab.eos_token_ids:
            if not self.grammar.is_accepting(state):
                return False
            self._history.append((state, True, token_id))
            return True
        nxt = self.grammar.walk_token(state, token_id)
        if nxt is None:
            return False
        self._history.append((nxt, False, token_id))
        return True

    def advance_many(self, token_ids: Sequence[int]) -> int:
        """Advance through ``token_ids``; return how many were taken (stops at the first rejected)."""
        for count, token_id in enumerate(token_ids):
            if not self.advance(token_id):
                return count
        return len(token_ids)

    def rollback(self, n: int = 1) -> None:
        """Undo the last ``n`` advanced tokens."""
        if n < 0 or n > self.num_tokens:
            raise MatcherError(f"cannot roll back {n} tokens: {self.num_tokens} were advanced")
        if n:
            del self._history[-n:]

    def reset(self) -> None:
        del self._history[1:]

    def fork(self) -> Matcher:
        """An independent copy at the same position (history included)."""
        return Matcher(self.grammar, history=self._history)

    def is_terminated(self) -> bool:
        """Whether EOS was taken."""
        return self._history[-1][1]

    def is_accepting(self) -> bool:
        """Whether the text so far is a complete string of the language (EOS allowed)."""
        state, terminated, _ = self._history[-1]
        return terminated or self.grammar.is_accepting(state)

    def fill_mask(self, bitmask: np.ndarray, row: int = 0) -> None:
        """Write the allowed tokens into ``bitmask[row]`` (int32, ceil(V/32) words
        or more; extra words are zeroed). After EOS nothing is allowed."""
        target = bitmask[row] if bitmask.ndim == 2 else bitmask
        words = mask_words(self.grammar.vocab.size)
        if target.shape[0] < words:
            raise MatcherError(f"bitmask row has {target.shape[0]} words; {words} are needed")
        state, terminated, _ = self._history[-1]
        target[words:] = 0
        if terminated:
            target[:words] = 0
        else:
            target[:words] = self.grammar.mask(state)

    def allowed_tokens(self) -> np.ndarray:
        """The mask as a bool array over the vocabulary."""
        bitmask = np.zeros(mask_words(self.grammar.vocab.size), dtype=np.int32)
        self.fill_mask(bitmask)
        return unpack_mask(bitmask, self.grammar.vocab.size)

    def is_allowed(self, token_id: int) -> bool:
        """Whether ``token_id`` may come next, without computing the whole mask."""
        state, terminated, _ = self._history[-1]
        if terminated:
            return False
        if token_id in self.grammar.vocab.eos_token_ids:
            return self.grammar.is_accepting(state)
        return self.grammar.walk_token(state, token_id) is not None

    def forced_bytes(self) -> bytes:
        state, terminated, _ = self._history[-1]
        return b"" if terminated else self.grammar.forced_bytes(state)

    def forced_tokens(self) -> list[int]:
        """Tokens the grammar leaves no choice about from here.

        The forced bytes are split by longest match over the vocabulary; a
        last token that some longer token extends is left out (the model may
        rather merge it with what follows).
        """
        out = [token for token, _ in self.grammar.segment(self.state, self.forced_bytes())]
        if out and self.grammar.tokens.extends_further(self.grammar.vocab.token_bytes[out[-1]]):
            out.pop()
        return out
