"""Regular expressions to byte-level DFAs.

interegular turns a regex into a DFA over characters; :func:`regex_to_dfa`
turns that into a DFA over UTF-8 bytes, so tokens that end in the middle of a
character are handled exactly. Every state of the result can still reach an
accepting state (the DFA is trimmed), so "not dead" means "a viable prefix".

Departures from Python's ``re`` (documented in docs/grammars.md):

* ``\\w``, ``\\d`` and ``\\s`` are ASCII classes (as with ``re.ASCII``);
* lookarounds, backreferences and ``\\p{...}`` are errors;
* a lark terminal with a lazy quantifier matches the shortest lexeme (see
  :func:`regex_to_dfa`'s ``shortest``).
"""

from __future__ import annotations

import bisect
import contextlib
import re
import signal
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import interegular
import numpy as np
from interegular.fsm import anything_else

from gramspec.errors import GrammarError, LimitError
from gramspec.jit import kernel

try:  # Python 3.11+ keeps the regex parser here
    import re._parser as _sre_parse  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover
    import sre_parse as _sre_parse  # type: ignore[no-redef]

_MAX_UNICODE = 0x10FFFF
_SURROGATES = (0xD800, 0xDFFF)
_CONT = 64  # values of one UTF-8 continuation byte

def _utf8_decoder() -> np.ndarray:
    """Well-formed UTF-8 (Unicode's table 3-7: no overlong forms, no
    surrogates, nothing past U+10FFFF) as a byte automaton: ``[k, b]`` is the
    state after byte ``b`` in state ``k``, -1 where ``b`` cannot come there.
    State 0 is a character boundary; 1-3 expect that many continuation bytes;
    4-7 expect the restricted second byte after E0, ED, F0 and F4."""
    step = np.full((8, 256), -1, dtype=np.int8)
    step[0, 0x00:0x80] = 0
    step[0, 0xC2:0xE0] = 1
    step[0, 0xE0], step[0, 0xE1:0xED], step[0, 0xED], step[0, 0xEE:0xF0] = 4, 2, 5, 2
    step[0, 0xF0], step[0, 0xF1:0xF4], step[0, 0xF4] = 6, 3, 7
    for k in (1, 2, 3):
        step[k, 0x80:0xC0] = k - 1
    step[4, 0xA0:0xC0], step[5, 0x80:0xA0], step[6, 0x90:0xC0], step[7, 0x80:0x90] = 1, 1, 2, 2
    step.flags.writeable = False
    return step


#: See :func:`_utf8_decoder`.
UTF8_STEP = _utf8_decoder()


#: Default wall-clock budget for turning one regex into a DFA.
DEFAULT_REGEX_SECONDS = 10.0
#: Default bound on the states of one terminal's byte DFA.
DEFAULT_MAX_DFA_STATES = 200_000


@dataclass(frozen=True, eq=False)
class ByteDFA:
    """A trimmed DFA over bytes: ``transitions[s, b]`` is the next state or -1."""

    transitions: np.ndarray  # int32 [n_states, 256]
    accepting: np.ndarray  # bool [n_states]
    start: int = 0
    # horizon -> state labels (see horizon_classes): kept with the DFA, which
    # compiled grammars share through the DFA cache
    _labels_by_horizon: dict[int, list[int]] = field(default_factory=dict, init=False, repr=False)

    @property
    def n_states(self) -> int:
        return int(self.transitions.shape[0])

    def matches(self, data: bytes) -> bool:
        state = self.start
        for byte in data:
            state = int(self.transitions[state, byte])
            if state < 0:
                return False
        return bool(self.accepting[state])

    def horizon_classes(self, horizon: int) -> Callable[[int], Hashable]:
        """Labels of states such that two states with the same label treat
        every string of at most ``horizon`` bytes alike (alive after each
        byte, accepting at the same points). The copies of a counted string
        far from its bounds share a label; so do states that Moore refinement
        cannot split within ``horizon`` rounds."""
        if isinstance(self.transitions, _CountedRows):
            rows = self.transitions
            return lambda state: rows.horizon_class(state, horizon)
        labels = self._labels_by_horizon.get(horizon)
        if labels is None:
            labels = self._labels_by_horizon.setdefault(horizon, _horizon_labels(self, horizon).tolist())
        return labels.__getitem__

    @cached_property
    def _byte_classes(self) -> np.ndarray:
        """The first byte of each class of bytes that every state treats alike."""
        return _equal_columns(self.transitions)


def _equal_columns(table: np.ndarray) -> np.ndarray:
    """The first column of each group of equal columns of an integer matrix."""
    if _equal_columns_kernel is not None:
        return _equal_columns_kernel(np.ascontiguousarray(table, dtype=np.int32))  # type: ignore[no-any-return]
    first, _ = _group_rows(np.ascontiguousarray(table.T), np.random.default_rng(0))
    return np.sort(first)


def _first_of_equal_columns(table: np.ndarray) -> np.ndarray:
    """:func:`_equal_columns` compiled: each column hashed row by row (the
    table is read in order), then compared in full with the first column of
    each group whose hash it shares."""
    n, m = table.shape
    hashes = np.full(m, np.uint64(0xCBF29CE484222325))
    for i in range(n):
        for j in range(m):
            hashes[j] = (hashes[j] ^ np.uint64(table[i, j] + 1)) * np.uint64(0x100000001B3)
    first = np.empty(m, dtype=np.int64)
    count = 0
    for j in range(m):
        found = False
        for c in range(count):
            f = first[c]
            if hashes[f] == hashes[j]:
                found = True
                for i in range(n):
                    if table[i, f] != table[i, j]:
                        found = False
                        break
                if found:
                    break
        if not found:
            first[count] = j
            count += 1
    return first[:count]


_equal_columns_kernel = kernel(_first_of_equal_columns)


#: Above this many states, Moore refinement is not tried (every state is its own class).
_MAX_REFINED_STATES = 50_000


def _horizon_labels(dfa: ByteDFA, horizon: int) -> np.ndarray:
    """Labels telling apart the states that some string of at most ``horizon`` bytes tells apart."""
    n = dfa.n_states
    # two states that some string tells apart are told apart by one of at
    # most n - 2 bytes: a DFA that small gains nothing over its own states
    if n <= horizon + 2 or n > _MAX_REFINED_STATES:
        return np.arange(n)
    return _moore_refinement(dfa.transitions[:, dfa._byte_classes], dfa.accepting, horizon)


def _moore_refinement(successors: np.ndarray, accepting: np.ndarray, rounds: int) -> np.ndarray:
    """Moore refinement for ``rounds`` rounds (or until stable) of the DFA with
    ``successors`` (``[n, k]``: the next state on one byte of each class, -1
    dead): round ``h`` splits states that some string of ``h`` bytes tells apart."""
    labels = accepting.astype(np.int64)
    count = int(np.unique(labels).size)
    if _moore_kernel is not None:
        return _moore_kernel(np.ascontiguousarray(successors, dtype=np.int32), labels, count, rounds)  # type: ignore[no-any-return]
    n = successors.shape[0]
    rng = np.random.default_rng(0)
    # a state's own label, then its successors' (-1, dead, picks the appended -1)
    columns = np.column_stack([np.arange(n), successors])
    for _ in range(rounds):
        _, labels = _group_rows(np.append(labels, -1)[columns], rng)
        if int(labels.max()) + 1 == count:  # refinement only splits: same count, same partition
            break
        count = int(labels.max()) + 1
    return labels


def _moore_rounds(successors: np.ndarray, labels: np.ndarray, count: int, rounds: int) -> np.ndarray:
    """:func:`_moore_refinement`'s rounds from ``labels`` (``count``
    distinct ones), compiled: each round interns every state's (label,
    successors' labels) in an open-addressing table whose slots hold a state
    with that key (keys are compared in full, so the partition is exact
    whatever the hash)."""
    n, k = successors.shape
    size = 2
    while size < 2 * n:
        size *= 2
    mask = np.uint64(size - 1)
    table = np.empty(size, dtype=np.int64)
    new = np.empty(n, dtype=np.int64)
    for _ in range(rounds):
        table[:] = -1
        fresh = 0
        for s in range(n):
            h = np.uint64(labels[s] + 1) * np.uint64(0x9E3779B97F4A7C15)
            for j in range(k):
                t = successors[s, j]
                x = labels[t] + 1 if t >= 0 else 0
                h = (h ^ np.uint64(x)) * np.uint64(0x100000001B3)
            slot = (h ^ (h >> np.uint64(29))) & mask
            while True:
                r = table[slot]
                if r < 0:
                    table[slot] = s
                    new[s] = fresh
                    fresh += 1
                    break
                same = labels[r] == labels[s]
                j = 0
                while same and j < k:
                    a, b = successors[r, j], successors[s, j]
                    same = (labels[a] if a >= 0 else -1) == (labels[b] if b >= 0 else -1)
                    j += 1
                if same:
                    new[s] = new[r]
                    break
                slot = (slot + np.uint64(1)) & mask
        labels, new = new, labels
        if fresh == count:  # refinement only splits: same count, same partition
            break
        count = fresh
    return labels


_moore_kernel = kernel(_moore_rounds)


def _group_rows(rows: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Equal rows of an integer matrix: the first row of each group and each
    row's group. Rows are grouped by a hash (wrapping int64 arithmetic) and
    checked against the whole row: a collision falls back to comparing rows."""
    weights = rng.integers(1, 1 << 62, size=rows.shape[1], dtype=np.int64) | 1
    with np.errstate(over="ignore"):
        hashes = rows.astype(np.int64) @ weights
    _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    if not (rows[first[inverse]] == rows).all():
        _, first, inverse = np.unique(rows, axis=0, return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1)
    return first, inverse


# Lark's common.lark writes ESCAPED_STRING with a lookbehind that interegular
# cannot read; this is the same language as lark lexes it.
_KNOWN_REWRITES = {
    r'".*?(?<!\\)(\\\\)*?"': r'"(?:[^"\\\n]|\\[^\n])*"',
}


#: Recently built DFAs by what determines them (not the time budget): schemas
#: repeat the same strings, patterns and formats, and a ByteDFA is never changed.
_DFA_CACHE: OrderedDict[tuple[object, ...], ByteDFA] = OrderedDict()
_DFA_CACHE_SIZE = 1024
_dfa_cache_lock = threading.Lock()


def _memoized(key: tuple[object, ...], build: Callable[[], ByteDFA]) -> ByteDFA:
    with _dfa_cache_lock:
        found = _DFA_CACHE.get(key)
        if found is not None:
            _DFA_CACHE.move_to_end(key)
            return found
    dfa = build()
    for array in (dfa.transitions, dfa.accepting):
        if isinstance(array, np.ndarray):
            array.flags.writeable = False  # shared from now on
    with _dfa_cache_lock:
        _DFA_CACHE[key] = dfa
        if len(_DFA_CACHE) > _DFA_CACHE_SIZE:
            _DFA_CACHE.popitem(last=False)
    return dfa


def regex_to_dfa(
    pattern: str,
    *,
    shortest: bool = False,
    seconds: float = DEFAULT_REGEX_SECONDS,
    max_states: int = DEFAULT_MAX_DFA_STATES,
) -> ByteDFA:
    """Compile ``pattern`` (Python regex syntax, full match) to a :class:`ByteDFA`.

    ``shortest``: stop at the first accepting state (no transitions out of
    accepting states), which is how a lexer reads a regex that ends with a lazy
    quantifier such as ``/\\*(.|\\n)*?\\*/``.
    """
    pattern = _KNOWN_REWRITES.get(pattern, pattern)

    def build() -> ByteDFA:
        fsm = _char_fsm(pattern, seconds)
        if len(fsm.states) > max_states:
            raise LimitError(f"regex {pattern!r} needs {len(fsm.states)} states (limit {max_states})")
        return _char_fsm_to_bytes(fsm, shortest=shortest, max_states=max_states, pattern=pattern)

    return _memoized(("regex", pattern, shortest, max_states), build)


def _char_fsm(pattern: str, seconds: float) -> interegular.FSM:
    """interegular's character DFA for ``pattern``, within ``seconds``; typed errors otherwise."""
    _check_syntax(pattern)
    source = _expand_unicode_escapes(pattern)
    try:
        with _time_limit(seconds, f"regex {pattern!r} took longer than {seconds:g} s to compile"):
            return interegular.parse_pattern(source).to_fsm()
    except interegular.patterns.Unsupported as exc:
        raise GrammarError(f"unsupported regex feature in {pattern!r}: {exc}") from None
    except (interegular.patterns.InvalidSyntax, ValueError, KeyError, IndexError) as exc:
        raise GrammarError(f"cannot compile regex {pattern!r}: {exc}") from None


def has_lazy_quantifier(pattern: str) -> bool:
    """Whether ``pattern`` uses ``*?``, ``+?``, ``??`` or ``{m,n}?``."""
    try:
        parsed = _sre_parse.parse(pattern)
    except re.error:
        return False
    return _walk_lazy(parsed)


def _walk_lazy(items: object) -> bool:
    for op, arg in items:  # type: ignore[attr-defined]
        if op == _sre_parse.MIN_REPEAT:
            return True
        for sub in _subpatterns(op, arg):
            if _walk_lazy(sub):
                return True
    return False


def _subpatterns(op: object, arg: object) -> Iterator[object]:
    if op in (_sre_parse.MAX_REPEAT, _sre_parse.MIN_REPEAT, getattr(_sre_parse, "POSSESSIVE_REPEAT", None)):
        yield arg[2]  # type: ignore[index]
    elif op == _sre_parse.SUBPATTERN:
        yield arg[-1]  # type: ignore[index]
    elif op == _sre_parse.BRANCH:
        yield from arg[1]  # type: ignore[index]
    elif op == _sre_parse.ATOMIC_GROUP:
        yield arg


def _check_syntax(pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise GrammarError(f"invalid regex {pattern!r}: {exc.msg} at position {exc.pos}") from None
    except (OverflowError, RecursionError) as exc:
        raise LimitError(f"regex {pattern!r} is too large: {exc}") from None


_ESCAPE = re.compile(r"\\(?:u([0-9A-Fa-f]{4})|U([0-9A-Fa-f]{8})|x\{([0-9A-Fa-f]{1,6})\}|(.))", re.DOTALL)


def _expand_unicode_escapes(pattern: str) -> str:
    """Replace ``\\uXXXX``-style escapes (which interegular lacks) by the character."""

    def repl(m: re.Match[str]) -> str:
        if m.group(4) is not None:
            return m.group(0)
        code = int(m.group(1) or m.group(2) or m.group(3), 16)
        ch = chr(code)
        if ch.isalnum() or code > 0x7F:
            return ch
        return "\\" + ch if ch.isprintable() else f"\\x{code:02x}"

    return _ESCAPE.sub(repl, pattern)


@contextlib.contextmanager
def _time_limit(seconds: float, message: str) -> Iterator[None]:
    """Raise :class:`LimitError` after ``seconds`` (main thread only; elsewhere no-op)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum: int, frame: object) -> None:
        raise LimitError(message)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


IntervalMap = list[tuple[int, int, int]]  # sorted, disjoint (lo, hi, target) code point intervals


def _fsm_interval_maps(fsm: interegular.FSM) -> tuple[list[IntervalMap], int, set[int]]:
    """interegular's character FSM as per-state interval maps over code points."""
    mapping = fsm.alphabet._symbol_mapping
    explicit: list[tuple[int, Any]] = sorted(
        (ord(sym), cls) for sym, cls in mapping.items() if isinstance(sym, str) and len(sym) == 1
    )
    other_class = mapping.get(anything_else)
    explicit_cps = [cp for cp, _ in explicit]
    char_states = list(fsm.states)
    index = {s: i for i, s in enumerate(char_states)}
    maps: list[IntervalMap] = []
    for state in char_states:
        moves = fsm.map.get(state, {})
        runs: IntervalMap = []
        for cp, cls in explicit:
            if cls in moves:
                target = index[moves[cls]]
                if runs and runs[-1][1] == cp - 1 and runs[-1][2] == target:
                    runs[-1] = (runs[-1][0], cp, target)
                else:
                    runs.append((cp, cp, target))
        if other_class is not None and other_class in moves:
            target = index[moves[other_class]]
            lo = 0
            for cp in explicit_cps + [_MAX_UNICODE + 1]:
                if cp > lo:
                    runs.append((lo, cp - 1, target))
                lo = cp + 1
            runs.sort()
        maps.append(_remove_surrogates(runs))
    return maps, index[fsm.initial], {index[s] for s in fsm.finals}


def _char_fsm_to_bytes(fsm: interegular.FSM, *, shortest: bool, max_states: int, pattern: str) -> ByteDFA:
    maps, initial, finals = _fsm_interval_maps(fsm)
    return chars_to_bytes(maps, initial, finals, shortest=shortest, max_states=max_states, what=f"regex {pattern!r}")


_JSON_SHORT_ESCAPES = {ord('"'): 0x22, ord("\\"): 0x5C, ord("/"): 0x2F, ord("b"): 0x08, ord("f"): 0x0C, ord("n"): 0x0A, ord("r"): 0x0D, ord("t"): 0x09}
_HEX_DIGITS = [(d, [ord(c) for c in {f"{d:x}", f"{d:X}"}]) for d in range(16)]


def chars_to_bytes(
    maps: list[IntervalMap],
    initial: int,
    finals: set[int],
    *,
    shortest: bool = False,
    json_string: bool = False,
    quotes: bool | None = None,
    max_states: int = DEFAULT_MAX_DFA_STATES,
    what: str = "automaton",
) -> ByteDFA:
    """A character automaton (per-state code point interval maps) as a byte DFA.

    Characters are read as UTF-8. With ``json_string`` the result reads a
    whole JSON string literal instead: the quotes around it, and each
    character either raw (all but ``"``, ``\\`` and controls) or escaped
    (``\\n``-style or ``\\uXXXX``, with surrogate pairs above U+FFFF).
    """
    n_char = len(maps)
    rows: list[np.ndarray] = [np.full(256, -1, dtype=np.int32) for _ in range(n_char)]
    interned: dict[tuple[object, ...], int] = {}

    def new_state(key: tuple[object, ...], row: np.ndarray) -> int:
        state = len(rows)
        if state > max_states:
            raise LimitError(f"{what} needs more than {max_states} byte-level states")
        rows.append(row)
        interned[key] = state
        return state

    def utf8_node(k: int, rel: tuple[tuple[int, int, int], ...]) -> int:
        """Reads ``k`` continuation bytes into the relative map ``rel``."""
        key = ("utf8", k, rel)
        found = interned.get(key)
        if found is not None:
            return found
        row = np.full(256, -1, dtype=np.int32)
        span = _CONT ** (k - 1)
        for c in _touched(rel, span):
            sub = _restrict(rel, c * span, (c + 1) * span - 1)
            if sub:
                row[0x80 + c] = sub[0][2] if k == 1 else utf8_node(k - 1, _shift(sub, c * span))
        return new_state(key, row)

    def hex_node(k: int, rel: tuple[tuple[int, int, int], ...]) -> int:
        """Reads ``k`` hex digits into the relative map ``rel``."""
        key = ("hex", k, rel)
        found = interned.get(key)
        if found is not None:
            return found
        row = np.full(256, -1, dtype=np.int32)
        span = 16 ** (k - 1)
        for digit in _touched(rel, span):
            chars = _HEX_DIGITS[digit][1]
            sub = _restrict(rel, digit * span, (digit + 1) * span - 1)
            if sub:
                row[chars] = sub[0][2] if k == 1 else hex_node(k - 1, _shift(sub, digit * span))
        return new_state(key, row)

    def low_surrogate_node(rel: tuple[tuple[int, int, int], ...]) -> int:
        """Reads ``\\uDC00``..``\\uDFFF`` into ``rel`` (keyed by the low surrogate's value)."""
        key = ("low", rel)
        found = interned.get(key)
        if found is not None:
            return found
        u_row = np.full(256, -1, dtype=np.int32)
        u_row[ord("u")] = hex_node(4, rel)
        u_state = new_state(("low-u", rel), u_row)
        row = np.full(256, -1, dtype=np.int32)
        row[0x5C] = u_state
        return new_state(key, row)

    def escape_node(imap: tuple[tuple[int, int, int], ...]) -> int:
        """After a backslash: a short escape or ``uXXXX`` (a surrogate pair for astral characters)."""
        key = ("esc", imap)
        found = interned.get(key)
        if found is not None:
            return found
        row = np.full(256, -1, dtype=np.int32)
        starts = [a for a, _, _ in imap]
        for letter, value in _JSON_SHORT_ESCAPES.items():
            sub = _restrict(imap, value, value, starts)
            if sub:
                row[letter] = sub[0][2]
        units = list(_restrict(imap, 0, 0xFFFF, starts))  # BMP (surrogates are never in maps)
        units.extend(_high_surrogates(imap, low_surrogate_node))
        units.sort()
        if units:
            row[ord("u")] = hex_node(4, tuple(units))
        return new_state(key, row)

    for state, imap in enumerate(maps):
        row = rows[state]
        raw = _remove_json_unescaped(imap) if json_string else imap
        for lo, hi, target in raw:
            if lo > 0x7F:
                break
            row[lo : min(hi, 0x7F) + 1] = target
        raw_starts = [lo for lo, _, _ in raw]
        for lead, k, base, span, floor in _LEADS:
            if not raw or raw[-1][1] < base:
                break
            lo, hi = max(base, floor), min(base + span - 1, _MAX_UNICODE)
            sub = _restrict(raw, lo, hi, raw_starts)
            if sub:
                row[lead] = utf8_node(k, _shift(sub, base))
        if json_string and imap:
            row[0x5C] = escape_node(tuple(imap))

    accepting = np.zeros(len(rows), dtype=bool)
    start = initial
    if json_string if quotes is None else quotes:  # wrap in quotes: a new start state and a new final state
        final = len(rows)
        rows.append(np.full(256, -1, dtype=np.int32))
        for s in finals:
            rows[s][0x22] = final
        opening = np.full(256, -1, dtype=np.int32)
        opening[0x22] = initial
        start = len(rows)
        rows.append(opening)
        accepting = np.zeros(len(rows), dtype=bool)
        accepting[final] = True
    else:
        accepting[sorted(finals)] = True
    transitions = np.stack(rows)
    if shortest:
        transitions[accepting] = -1
    return _trim(transitions, accepting, start=start)


def _remove_json_unescaped(imap: IntervalMap) -> IntervalMap:
    """Drop the code points a JSON string must escape: controls, ``"`` and ``\\``."""
    out: IntervalMap = []
    for lo, hi, t in imap:
        for a, b in ((0x20, 0x21), (0x23, 0x5B), (0x5D, _MAX_UNICODE)):
            if lo <= b and hi >= a:
                out.append((max(lo, a), min(hi, b), t))
    return out


def _high_surrogates(imap: IntervalMap | tuple[tuple[int, int, int], ...], low_node: object) -> list[tuple[int, int, int]]:
    """Escaped UTF-16 high surrogates for the astral part of ``imap``: each maps
    to a state that reads the matching low surrogate."""
    out: list[tuple[int, int, int]] = []
    partial: set[int] = set()
    for lo, hi, t in imap:
        if hi < 0x10000:
            continue
        lo = max(lo, 0x10000)
        h_lo, h_hi = (lo - 0x10000) >> 10, (hi - 0x10000) >> 10
        first_full = h_lo if (lo - 0x10000) % 1024 == 0 else h_lo + 1
        last_full = h_hi if (hi - 0x10000) % 1024 == 1023 else h_hi - 1
        if first_full <= last_full:
            out.append((0xD800 + first_full, 0xD800 + last_full, low_node(((0xDC00, 0xDFFF, t),))))  # type: ignore[operator]
        partial.update(h for h in (h_lo, h_hi) if not first_full <= h <= last_full)
    for h in sorted(partial):
        base = 0x10000 + (h << 10)
        sub = _shift(_restrict(imap, base, base + 1023), base - 0xDC00)
        if sub:
            out.append((0xD800 + h, 0xD800 + h, low_node(sub)))  # type: ignore[operator]
    out.sort()
    merged: list[tuple[int, int, int]] = []
    for lo, hi, t in out:
        if merged and merged[-1][1] == lo - 1 and merged[-1][2] == t:
            merged[-1] = (merged[-1][0], hi, t)
        else:
            merged.append((lo, hi, t))
    return merged


def json_string_dfa(
    patterns: Sequence[str] = (),
    *,
    min_length: int = 0,
    max_length: int | None = None,
    seconds: float = DEFAULT_REGEX_SECONDS,
    max_states: int = DEFAULT_MAX_DFA_STATES,
) -> ByteDFA:
    """A JSON string literal whose decoded value fully matches every regex in
    ``patterns`` and has ``min_length`` to ``max_length`` characters."""
    key = ("json-string", tuple(patterns), min_length, max_length, max_states)
    return _memoized(key, lambda: _json_string_dfa(patterns, min_length, max_length, seconds, max_states))


def _json_string_dfa(
    patterns: Sequence[str], min_length: int, max_length: int | None, seconds: float, max_states: int
) -> ByteDFA:
    parts: list[ByteDFA] = []
    for pattern in patterns:
        maps, initial, finals = _fsm_interval_maps(_char_fsm(pattern, seconds))
        parts.append(chars_to_bytes(maps, initial, finals, json_string=True, max_states=max_states, what=f"regex {pattern!r}"))
    if min_length > 0 or max_length is not None or not parts:
        parts.append(_counted_json_chars(min_length, max_length, max_states=max_states))
    result = parts[0]
    for other in parts[1:]:
        result = intersect(result, other, max_states=max_states)
    return result


def _counted_json_chars(min_length: int, max_length: int | None, *, max_states: int) -> ByteDFA:
    """A JSON string literal of ``min_length`` to ``max_length`` characters (any characters).

    The automaton is copies of a one-character block, one per character
    counted; its rows are computed on demand (:class:`_CountedRows`), so even
    ``maxLength: 65535`` costs nothing until text reaches it."""
    if max_length is not None and max_length > _MAX_COUNTED_CHARACTERS:
        raise LimitError(f"maxLength {max_length} is over the limit of {_MAX_COUNTED_CHARACTERS}")
    full = [(0, 0xD7FF, 1), (0xE000, _MAX_UNICODE, 1)]
    block = chars_to_bytes([full, []], 0, {1}, json_string=True, quotes=False)
    rows = _CountedRows(block, min_length, max_length)
    return ByteDFA(rows, _OnlyAccepting(rows.closing), start=rows.opening)  # type: ignore[arg-type]


_MAX_COUNTED_CHARACTERS = 10_000_000


class _CountedRows:
    """Transition rows of "a quote, counted characters, a quote", computed on demand.

    State ``c * k + s`` is state ``s`` of the one-character block after ``c``
    characters; leaving the block enters copy ``c + 1`` (the last copy loops
    when there is no upper bound)."""

    def __init__(self, block: ByteDFA, min_length: int, max_length: int | None) -> None:
        exit_state = int(np.flatnonzero(block.accepting)[0])
        inner = [s for s in range(block.n_states) if s != exit_state]  # the start (0) comes first
        index = np.full(block.n_states + 1, -1, dtype=np.int64)
        index[inner] = np.arange(len(inner))
        raw = block.transitions[inner]
        self.local = np.where(raw == exit_state, -2, np.where(raw < 0, -1, index[np.clip(raw, 0, None)]))
        self.k = len(inner)
        self.min_length, self.max_length = min_length, max_length
        self.copies = max_length if max_length is not None else min_length + 1
        self.last_entry = self.copies * self.k  # the entry after max_length characters
        self.closing, self.opening = self.last_entry + 1, self.last_entry + 2
        self.shape = (self.last_entry + 3, 256)

    def row(self, state: int) -> np.ndarray:
        out = np.full(256, -1, dtype=np.int32)
        if state == self.opening:
            out[0x22] = 0
            return out
        if state == self.closing:
            return out
        if state == self.last_entry:
            if self.max_length is not None and self.max_length >= self.min_length:
                out[0x22] = self.closing
            return out
        copy, sub = divmod(state, self.k)
        local = self.local[sub]
        following = copy + 1 if copy + 1 < self.copies or self.max_length is not None else copy
        out[:] = np.where(local == -2, following * self.k, np.where(local < 0, -1, local + copy * self.k))
        if sub == 0 and copy >= self.min_length:
            out[0x22] = self.closing
        return out

    def horizon_class(self, state: int, horizon: int) -> Hashable:
        """What decides how ``state`` treats strings of at most ``horizon``
        bytes: its place in the block and how many characters remain to each
        bound, capped past the horizon (each character takes a byte or more)."""
        if state >= self.last_entry:
            return ("end", state)
        copy, sub = divmod(state, self.k)
        far = horizon + 1
        to_min = min(max(self.min_length - copy, 0), far)
        to_max = min(self.copies - copy, far) if self.max_length is not None else far
        return (to_min, to_max, sub)

    def __getitem__(self, key: int | tuple[int, int]) -> np.ndarray | int:
        if isinstance(key, tuple):
            return int(self.row(int(key[0]))[key[1]])
        return self.row(int(key))


class _OnlyAccepting:
    """The accepting flags of a DFA whose only accepting state is ``state``."""

    def __init__(self, state: int) -> None:
        self.state = state

    def __getitem__(self, state: int) -> bool:
        return state == self.state

    def any(self) -> bool:
        return True


def intersect(a: ByteDFA, b: ByteDFA, *, max_states: int = DEFAULT_MAX_DFA_STATES) -> ByteDFA:
    """The DFA of strings both ``a`` and ``b`` accept."""
    return _product(a, b, lambda x, y: x and y, total_b=False, max_states=max_states)


def difference(a: ByteDFA, b: ByteDFA, *, max_states: int = DEFAULT_MAX_DFA_STATES) -> ByteDFA:
    """The DFA of strings ``a`` accepts and ``b`` does not."""
    return _product(a, b, lambda x, y: x and not y, total_b=True, max_states=max_states)


def union(a: ByteDFA, b: ByteDFA, *, max_states: int = DEFAULT_MAX_DFA_STATES) -> ByteDFA:
    """The DFA of strings ``a`` or ``b`` accepts."""
    return _product(a, b, lambda x, y: x or y, total_b=True, total_a=True, max_states=max_states)


def _product(
    a: ByteDFA,
    b: ByteDFA,
    accept: object,
    *,
    total_b: bool,
    total_a: bool = False,
    max_states: int,
) -> ByteDFA:
    """Product automaton; a missing side (-1) stays missing when that side is
    total (a dead state that never accepts), else the pair dies."""
    ids: dict[tuple[int, int], int] = {(a.start, b.start): 0}
    order = [(a.start, b.start)]
    rows: list[np.ndarray] = []
    i = 0
    while i < len(order):
        sa, sb = order[i]
        ra = a.transitions[sa] if sa >= 0 else np.full(256, -1, dtype=np.int32)
        rb = b.transitions[sb] if sb >= 0 else np.full(256, -1, dtype=np.int32)
        live = (ra >= 0) | (rb >= 0) if (total_a and total_b) else ((ra >= 0) if total_b else (ra >= 0) & (rb >= 0))
        row = np.full(256, -1, dtype=np.int32)
        # most bytes lead to the same few pairs: look each distinct pair up once
        keys = (ra[live].astype(np.int64) + 1) << 32 | (rb[live].astype(np.int64) + 1)
        distinct, where = np.unique(keys, return_inverse=True)
        targets = np.empty(len(distinct), dtype=np.int32)
        for k, key in enumerate(distinct.tolist()):
            pair = ((key >> 32) - 1, (key & 0xFFFFFFFF) - 1)
            found = ids.get(pair)
            if found is None:
                found = ids[pair] = len(order)
                order.append(pair)
                if len(order) > max_states:
                    raise LimitError(f"automaton product needs more than {max_states} states")
            targets[k] = found
        row[live] = targets[where]
        rows.append(row)
        i += 1
    accepting = np.array(
        [
            bool(accept(sa >= 0 and bool(a.accepting[sa]), sb >= 0 and bool(b.accepting[sb])))  # type: ignore[operator]
            for sa, sb in order
        ],
        dtype=np.bool_,
    )
    return _trim(np.stack(rows), accepting, start=0)


def _remove_surrogates(runs: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    out: list[tuple[int, int, int]] = []
    s_lo, s_hi = _SURROGATES
    for lo, hi, t in runs:
        if hi < s_lo or lo > s_hi:
            out.append((lo, hi, t))
            continue
        if lo < s_lo:
            out.append((lo, s_lo - 1, t))
        if hi > s_hi:
            out.append((s_hi + 1, hi, t))
    return out


def _restrict(
    imap: tuple[tuple[int, int, int], ...] | list[tuple[int, int, int]],
    lo: int,
    hi: int,
    starts: list[int] | None = None,
) -> tuple[tuple[int, int, int], ...]:
    """The part of ``imap`` inside [lo, hi]."""
    if starts is None:
        starts = [a for a, _, _ in imap]
    i = max(bisect.bisect_right(starts, lo) - 1, 0)
    out = []
    while i < len(imap) and imap[i][0] <= hi:
        a, b, t = imap[i]
        if b >= lo:
            out.append((max(a, lo), min(b, hi), t))
        i += 1
    return tuple(out)


def _touched(rel: tuple[tuple[int, int, int], ...], span: int) -> list[int]:
    """The digits (blocks of ``span`` values) that some interval of ``rel`` reaches."""
    digits: set[int] = set()
    for lo, hi, _ in rel:
        digits.update(range(lo // span, hi // span + 1))
    return sorted(digits)


def _shift(imap: tuple[tuple[int, int, int], ...], base: int) -> tuple[tuple[int, int, int], ...]:
    return tuple((a - base, b - base, t) for a, b, t in imap)


def _leads() -> list[tuple[int, int, int, int, int]]:
    """(lead byte, continuation bytes, first code point, code points, smallest valid)."""
    out = []
    for lead in range(0xC2, 0xE0):
        out.append((lead, 1, (lead - 0xC0) << 6, 1 << 6, 0x80))
    for lead in range(0xE0, 0xF0):
        out.append((lead, 2, (lead - 0xE0) << 12, 1 << 12, 0x800))
    for lead in range(0xF0, 0xF5):
        out.append((lead, 3, (lead - 0xF0) << 18, 1 << 18, 0x10000))
    return out


_LEADS = _leads()


def _trim(transitions: np.ndarray, accepting: np.ndarray, *, start: int) -> ByteDFA:
    """Keep the states reachable from ``start`` that can reach an accepting state."""
    n = transitions.shape[0]
    reverse: list[list[int]] = [[] for _ in range(n)]
    for s in range(n):
        for t in set(transitions[s][transitions[s] >= 0].tolist()):
            reverse[t].append(s)
    alive = np.zeros(n, dtype=bool)
    stack = [int(s) for s in np.flatnonzero(accepting)]
    alive[stack] = True
    while stack:
        for p in reverse[stack.pop()]:
            if not alive[p]:
                alive[p] = True
                stack.append(p)
    if not alive[start]:  # the empty language: a lone dead start state
        return ByteDFA(np.full((1, 256), -1, dtype=np.int32), np.zeros(1, dtype=bool))
    masked = np.where(alive[np.clip(transitions, 0, None)] & (transitions >= 0), transitions, -1)
    order = [start]
    seen = {start}
    i = 0
    while i < len(order):
        for t in masked[order[i]][masked[order[i]] >= 0].tolist():
            if t not in seen:
                seen.add(t)
                order.append(t)
        i += 1
    renumber = np.full(n + 1, -1, dtype=np.int32)
    renumber[order] = np.arange(len(order), dtype=np.int32)
    table = renumber[masked[order]]  # -1 maps through renumber[-1] == -1
    return ByteDFA(np.ascontiguousarray(table, dtype=np.int32), accepting[order].copy())
