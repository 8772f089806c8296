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

from gramspec.grammars.regex_dfa import UTF8_STEP, ByteDFA

Pairs = tuple[tuple[int, int], ...]


class Lexer:
    """Interned lexer states with transition rows, shared by all matchers of a grammar."""

    def __init__(self, terminals: Sequence[ByteDFA]) -> None:
        self.terminals = tuple(terminals)
        self._horizons: dict[int, Horizon] = {}
        self._lock = threading.RLock()
        self._ids: dict[tuple[bool, Pairs], int] = {}
        self.pairs: list[Pairs] = []
        self.fresh: list[bool] = []
        self.accepts: list[frozenset[int]] = []  # terminals complete in this state
        self._rows = np.full((64, 256), -1, dtype=np.int32)
        self._expanded = np.zeros(64, dtype=bool)
        self.has_exit = np.zeros(64, dtype=bool)  # some byte continues the lexeme
        self.has_accept = np.zeros(64, dtype=bool)  # some terminal is complete

    def __len__(self) -> int:
        return len(self.pairs)

    def fresh_state(self, terminals: frozenset[int]) -> int:
        """The empty-lexeme state for ``terminals``."""
        pairs = tuple((t, self.terminals[t].start) for t in sorted(terminals))
        return self._intern(True, pairs)

    def horizon(self, length: int) -> Horizon:
        """The view of this lexer that equates states no string of at most ``length`` bytes tells apart."""
        found = self._horizons.get(length)
        if found is None:
            with self._lock:
                found = self._horizons.setdefault(length, Horizon(self, length))
        return found

    @property
    def table(self) -> np.ndarray:
        """The transition table as it stands: rows of expanded states are filled in."""
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
        scales = np.cumprod([1, *radices[:-1]], dtype=np.int64)
        return scales @ (columns.astype(np.int64) + 1)

    def _expand(self, state: int) -> None:
        with self._lock:
            if self._expanded[state]:
                return
            pairs = self.pairs[state]
            row = np.full(256, -1, dtype=np.int32)
            has_exit = False
            if len(pairs) == 1:  # most states: one terminal alive, its next DFA states name the next lexer states
                terminal, dfa_state = pairs[0]
                steps = np.asarray(self.terminals[terminal].transitions[dfa_state])
                alive = steps >= 0
                targets = sorted(set(steps[alive].tolist()))
                if targets:
                    target_ids = [self._intern(False, ((terminal, target),)) for target in targets]
                    if len(target_ids) == 1:
                        row[alive] = target_ids[0]
                    else:
                        lookup = np.array(target_ids, dtype=np.int32)
                        row[alive] = lookup[np.searchsorted(np.array(targets), steps[alive])]
                    has_exit = True
            elif pairs:
                nxt = np.stack([self.terminals[t].transitions[s] for t, s in pairs])  # [m, 256]
                live = np.flatnonzero((nxt >= 0).any(axis=0))
                if live.size:
                    # bytes with the same next terminal states go to the same lexer state
                    columns = nxt[:, live]
                    _, first, inverse = np.unique(self._column_codes(pairs, columns), return_index=True, return_inverse=True)
                    ids = np.array(
                        [
                            self._intern(False, tuple((pairs[i][0], s) for i, s in enumerate(column) if s >= 0))
                            for column in columns[:, first].T.tolist()
                        ],
                        dtype=np.int32,
                    )
                    row[live] = ids[inverse.reshape(-1)]
                    has_exit = True
            self._rows[state] = row
            self.has_exit[state] = has_exit
            self._expanded[state] = True


class Horizon:
    """Lexer states equated when no string of at most ``length`` bytes tells them apart.

    Such states classify every token of at most ``length`` bytes alike (up to
    which equivalent states the lexemes end in, with the same terminals
    complete), so token classifications computed for a representative hold
    for the whole class: the characters of a string with ``maxLength`` far
    from its bounds are one class. Terminals label their states (see
    :meth:`ByteDFA.horizon_classes`); a lexer state's class is its live
    terminals' labels.
    """

    def __init__(self, lexer: Lexer, length: int) -> None:
        self.lexer = lexer
        self.length = length
        self._lock = threading.RLock()
        self._terminal_classes: dict[int, Callable[[int], Hashable]] = {}
        self._classes: dict[tuple[bool, tuple[tuple[int, Hashable], ...]], int] = {}
        self._representative = np.full(64, -1, dtype=np.int32)  # -1: not looked up yet
        # bit set of the bytes leading to an equivalent state: every string of
        # such bytes, up to ``length + 1`` of them, keeps the lexeme alive
        self._loops = np.zeros((64, 4), dtype=np.uint64)
        self._has_loops = np.zeros(64, dtype=bool)
        # every multi-byte UTF-8 character leads back to an equivalent state
        # through live ones (known where _has_loops is)
        self._loops_on_characters = np.zeros(64, dtype=bool)

    def _grow(self, states: int) -> None:
        if states > self._representative.shape[0]:
            with self._lock:
                size = self._representative.shape[0]
                if states > size:
                    grow = max(states, 2 * size) - size
                    self._representative = np.concatenate([self._representative, np.full(grow, -1, dtype=np.int32)])
                    self._loops = np.concatenate([self._loops, np.zeros((grow, 4), dtype=np.uint64)])
                    self._has_loops = np.concatenate([self._has_loops, np.zeros(grow, dtype=bool)])
                    self._loops_on_characters = np.concatenate([self._loops_on_characters, np.zeros(grow, dtype=bool)])

    def representative(self, state: int) -> int:
        """The first state seen in ``state``'s class."""
        if state >= self._representative.shape[0]:
            self._grow(len(self.lexer))
        found = int(self._representative[state])
        if found >= 0:
            return found
        lexer = self.lexer
        key = (lexer.fresh[state], tuple((t, self._terminal_class(t, s)) for t, s in lexer.pairs[state]))
        with self._lock:
            found = self._classes.setdefault(key, state)
        self._representative[state] = found
        return found

    def representatives(self, states: np.ndarray) -> np.ndarray:
        """:meth:`representative` of each of ``states``."""
        self._grow(len(self.lexer))
        found = self._representative[states]
        missing = found < 0
        if missing.any():
            for state in np.unique(states[missing]).tolist():
                self.representative(state)
            found = self._representative[states]
        return found

    def loops(self, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The loop bit sets (``[n, 4]`` uint64) of ``states``, and whether every multi-byte character loops on each."""
        self._grow(len(self.lexer))
        missing = ~self._has_loops[states]
        if missing.any():
            for state in np.unique(states[missing]).tolist():
                self.prepare(state)
        return self._loops[states], self._loops_on_characters[states]

    def prepare(self, state: int) -> None:
        """Build ``state``'s loop bits (and its row) unless they are known."""
        if state < self._has_loops.shape[0] and self._has_loops[state]:
            return
        row = self.lexer.row(state)
        own = self.representative(state)
        # the representatives of the states it leads to are looked up here, so the walk finds them
        looping = [target for target in set(row[row >= 0].tolist()) if self.representative(target) == own]
        if not looping:
            self._loops[state] = 0
        else:
            if len(looping) == 1:
                same = row == looping[0]
            else:
                same = np.zeros(256, dtype=bool)
                alive = row >= 0
                same[alive] = self._representative[row[alive]] == own
            self._loops[state] = np.packbits(same, bitorder="little").view(np.uint64)
        # only a state that some ASCII byte loops on can be a string's body
        self._loops_on_characters[state] = bool(self._loops[state, :2].any()) and self._characters_loop(state, own)
        self._has_loops[state] = True

    def _characters_loop(self, state: int, own: int) -> bool:
        """Whether every multi-byte UTF-8 character leads from ``state``
        through live states to one in class ``own``: the lexer and the
        decoder (regex_dfa.UTF8_STEP) stepped together over the bytes the
        decoder allows, until each character is complete."""
        lexer = self.lexer
        if (lexer.row(state)[0xC2:0xF5] < 0).any():  # quick: some character's first byte is dead
            return False
        pending = [(state, 0)]
        seen = set(pending)
        while pending:
            at, decoder = pending.pop()
            allowed = UTF8_STEP[decoder] >= 0
            if decoder == 0:
                allowed[:0x80] = False  # ASCII bytes are the loop bits' business
            targets = lexer.row(at)[allowed]
            if (targets < 0).any():
                return False
            for target, after in set(zip(targets.tolist(), UTF8_STEP[decoder][allowed].tolist())):
                if after == 0:
                    if self.representative(target) != own:
                        return False
                elif (target, after) not in seen:
                    seen.add((target, after))
                    pending.append((target, after))
        return True

    def kernel_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(representative, loops, has_loops, loops_on_characters) as they stand, covering every lexer state so far."""
        self._grow(len(self.lexer))
        return self._representative, self._loops, self._has_loops, self._loops_on_characters

    def _terminal_class(self, terminal: int, state: int) -> Hashable:
        classes = self._terminal_classes.get(terminal)
        if classes is None:
            classes = self._terminal_classes[terminal] = self.lexer.terminals[terminal].horizon_classes(self.length)
        return classes(state)
