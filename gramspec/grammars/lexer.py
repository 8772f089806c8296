"""A lazily built lexer DFA over all terminals of a grammar.

A lexer state is the set of ``(terminal, dfa state)`` pairs still alive in the
current lexeme, or a *fresh* state for an empty lexeme that may become any of
a set of terminals (the ones the parser expects, plus ``%ignore`` ones).
Lexemes are greedy: while some live terminal can take the next byte the
lexeme goes on; when none can, the lexeme must be complete (some terminal in
an accepting state) and the byte starts the next lexeme.

States are interned to integers and their 256-byte transition rows are
computed on first use, so only the part of the product automaton that text
actually reaches is ever built.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Hashable, Sequence

import numpy as np

from gramspec.grammars.regex_dfa import ByteDFA

Pairs = tuple[tuple[int, int], ...]


class Lexer:
    """Interned lexer states with transition rows, shared by all matchers of a grammar."""

    def __init__(self, terminals: Sequence[ByteDFA], *, horizon: int | None = None) -> None:
        self.terminals = tuple(terminals)
        #: Strings of at most this many bytes (the longest token) are all that
        #: :meth:`representative` must keep apart; None: every state is its own.
        self.horizon = horizon
        self._horizon_classes: dict[int, Callable[[int], Hashable]] = {}
        self._classes: dict[tuple[bool, tuple[tuple[int, Hashable], ...]], int] = {}
        self._representative = np.full(64, -1, dtype=np.int32)  # -1: not looked up yet
        self._lock = threading.RLock()
        self._ids: dict[tuple[bool, Pairs], int] = {}
        self.pairs: list[Pairs] = []
        self.fresh: list[bool] = []
        self.accepts: list[frozenset[int]] = []  # terminals complete in this state
        self._rows = np.full((64, 256), -1, dtype=np.int32)
        self._expanded = np.zeros(64, dtype=bool)
        self.has_exit = np.zeros(64, dtype=bool)  # some byte continues the lexeme
        self.has_accept = np.zeros(64, dtype=bool)  # some terminal is complete
        # bit set of the bytes that lead back to the state, or (with a horizon)
        # to one that :meth:`representative` equates with it
        self.loops = np.zeros((64, 4), dtype=np.uint64)

    def __len__(self) -> int:
        return len(self.pairs)

    def fresh_state(self, terminals: frozenset[int]) -> int:
        """The empty-lexeme state for ``terminals``."""
        pairs = tuple((t, self.terminals[t].start) for t in sorted(terminals))
        return self._intern(True, pairs)

    def representative(self, state: int) -> int:
        """The first state seen that treats every string of at most
        ``horizon`` bytes as ``state`` does (same live terminals' classes, see
        :meth:`ByteDFA.horizon_classes`), so token classifications computed
        for it hold for ``state`` too (up to which equivalent states the
        lexemes end in, with the same terminals complete)."""
        found = int(self._representative[state])
        if found >= 0:
            return found
        if self.horizon is None:
            found = state
        else:
            key = (self.fresh[state], tuple((t, self._horizon_class(t, s)) for t, s in self.pairs[state]))
            with self._lock:
                found = self._classes.setdefault(key, state)
        self._representative[state] = found
        return found

    def representatives(self, states: np.ndarray) -> np.ndarray:
        """:meth:`representative` of each of ``states``."""
        found = self._representative[states]
        missing = found < 0
        if missing.any():
            for state in np.unique(states[missing]).tolist():
                self.representative(state)
            found = self._representative[states]
        return found

    def _horizon_class(self, terminal: int, state: int) -> Hashable:
        classes = self._horizon_classes.get(terminal)
        if classes is None:
            assert self.horizon is not None
            classes = self._horizon_classes[terminal] = self.terminals[terminal].horizon_classes(self.horizon)
        return classes(state)

    def rows(self, states: np.ndarray) -> np.ndarray:
        """The transition table, with rows for ``states`` computed; index it by
        ``[state, byte]`` (-1: no live terminal takes the byte)."""
        pending = states[~self._expanded[states]]
        if pending.size:
            for state in np.unique(pending).tolist():
                self._expand(state)
        return self._rows

    def row(self, state: int) -> np.ndarray:
        if not self._expanded[state]:
            self._expand(state)
        return self._rows[state]

    def step(self, state: int, byte: int) -> int:
        if not self._expanded[state]:
            self._expand(state)
        return int(self._rows[state, byte])

    def _intern(self, fresh: bool, pairs: Pairs) -> int:
        key = (fresh, pairs)
        found = self._ids.get(key)
        if found is not None:
            return found
        with self._lock:
            found = self._ids.get(key)
            if found is not None:
                return found
            state = len(self.pairs)
            if state >= self._rows.shape[0]:
                grow = self._rows.shape[0]
                self._rows = np.concatenate([self._rows, np.full((grow, 256), -1, dtype=np.int32)])
                self._expanded = np.concatenate([self._expanded, np.zeros(grow, dtype=bool)])
                self.has_exit = np.concatenate([self.has_exit, np.zeros(grow, dtype=bool)])
                self.has_accept = np.concatenate([self.has_accept, np.zeros(grow, dtype=bool)])
                self.loops = np.concatenate([self.loops, np.zeros((grow, 4), dtype=np.uint64)])
                self._representative = np.concatenate([self._representative, np.full(grow, -1, dtype=np.int32)])
            self.pairs.append(pairs)
            self.fresh.append(fresh)
            self.accepts.append(
                frozenset() if fresh else frozenset(t for t, s in pairs if self.terminals[t].accepting[s])
            )
            self.has_accept[state] = bool(self.accepts[state])
            self._ids[key] = state
            return state

    def _column_codes(self, pairs: Pairs, columns: np.ndarray) -> np.ndarray:
        """One integer per column of next terminal states (``[m, n]``), equal iff the columns are."""
        if len(pairs) == 1:
            return columns[0]
        radices = [self.terminals[t].n_states + 1 for t, _ in pairs]  # -1 (dead) is digit 0
        if math.prod(radices) >= 1 << 62:  # too many digits for one integer: number the distinct columns
            return np.unique(columns.T, axis=0, return_inverse=True)[1].reshape(-1)
        code = np.zeros(columns.shape[1], dtype=np.int64)
        scale = 1
        for radix, column in zip(radices, columns):
            code += (column.astype(np.int64) + 1) * scale
            scale *= radix
        return code

    def _expand(self, state: int) -> None:
        with self._lock:
            if self._expanded[state]:
                return
            pairs = self.pairs[state]
            row = np.full(256, -1, dtype=np.int32)
            if pairs:
                nxt = np.stack([self.terminals[t].transitions[s] for t, s in pairs])  # [m, 256]
                live = np.flatnonzero((nxt >= 0).any(axis=0))
                if live.size:
                    _, first, inverse = np.unique(self._column_codes(pairs, nxt[:, live]), return_index=True, return_inverse=True)
                    ids = np.empty(first.size, dtype=np.int32)
                    for k, column in enumerate(nxt[:, live[first]].T.tolist()):
                        ids[k] = self._intern(
                            False, tuple((pairs[i][0], s) for i, s in enumerate(column) if s >= 0)
                        )
                    row[live] = ids[inverse.reshape(-1)]
            self._rows[state] = row
            self.has_exit[state] = bool((row >= 0).any())
            loop = row == state
            if self.horizon is not None and self.has_exit[state]:
                # a byte leading to an equivalent state loops for a token's
                # purposes: every string of such bytes within the horizon is alive
                own = self.representative(state)
                same = [s for s in np.unique(row[row >= 0]).tolist() if self.representative(s) == own]
                loop = np.isin(row, same)
            self.loops[state] = np.packbits(loop, bitorder="little").view(np.uint64)
            self._expanded[state] = True
