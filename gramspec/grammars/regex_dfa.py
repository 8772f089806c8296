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
from collections.abc import Iterator
from dataclasses import dataclass

import interegular
import numpy as np
from interegular.fsm import anything_else

from gramspec.errors import GrammarError, LimitError

try:  # Python 3.11+ keeps the regex parser here
    import re._parser as _sre_parse  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover
    import sre_parse as _sre_parse  # type: ignore[no-redef]

_MAX_UNICODE = 0x10FFFF
_SURROGATES = (0xD800, 0xDFFF)
_CONT = 64  # values of one UTF-8 continuation byte

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


# Lark's common.lark writes ESCAPED_STRING with a lookbehind that interegular
# cannot read; this is the same language as lark lexes it.
_KNOWN_REWRITES = {
    r'".*?(?<!\\)(\\\\)*?"': r'"(?:[^"\\\n]|\\[^\n])*"',
}


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
    _check_syntax(pattern)
    source = _expand_unicode_escapes(pattern)
    try:
        with _time_limit(seconds, f"regex {pattern!r} took longer than {seconds:g} s to compile"):
            fsm = interegular.parse_pattern(source).to_fsm()
    except interegular.patterns.Unsupported as exc:
        raise GrammarError(f"unsupported regex feature in {pattern!r}: {exc}") from None
    except (interegular.patterns.InvalidSyntax, ValueError, KeyError, IndexError) as exc:
        raise GrammarError(f"cannot compile regex {pattern!r}: {exc}") from None
    if len(fsm.states) > max_states:
        raise LimitError(f"regex {pattern!r} needs {len(fsm.states)} states (limit {max_states})")
    return _char_fsm_to_bytes(fsm, shortest=shortest, max_states=max_states, pattern=pattern)


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


def _char_fsm_to_bytes(fsm: interegular.FSM, *, shortest: bool, max_states: int, pattern: str) -> ByteDFA:
    mapping = fsm.alphabet._symbol_mapping
    # Explicit code points by transition class, and the class of "anything else".
    explicit: list[tuple[int, int]] = sorted(
        (ord(sym), cls) for sym, cls in mapping.items() if sym is not anything_else and len(sym) == 1
    )
    other_class = mapping.get(anything_else)
    explicit_cps = [cp for cp, _ in explicit]
    char_states = list(fsm.states)
    index = {s: i for i, s in enumerate(char_states)}
    n_char = len(char_states)

    def interval_map(state: object) -> list[tuple[int, int, int]]:
        """Sorted, disjoint (lo, hi, target) code point intervals out of ``state``."""
        moves = fsm.map.get(state, {})
        runs: list[tuple[int, int, int]] = []
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
        return _remove_surrogates(runs)

    rows: list[np.ndarray] = [np.full(256, -1, dtype=np.int32) for _ in range(n_char)]
    interned: dict[tuple[int, tuple[tuple[int, int, int], ...]], int] = {}

    def node(k: int, rel: tuple[tuple[int, int, int], ...]) -> int:
        """State that reads ``k`` continuation bytes into the relative map ``rel``."""
        key = (k, rel)
        found = interned.get(key)
        if found is not None:
            return found
        row = np.full(256, -1, dtype=np.int32)
        span = _CONT ** (k - 1)
        for c in range(_CONT):
            sub = _restrict(rel, c * span, (c + 1) * span - 1)
            if not sub:
                continue
            row[0x80 + c] = sub[0][2] if k == 1 else node(k - 1, _shift(sub, c * span))
        state = len(rows)
        if state > max_states:
            raise LimitError(f"regex {pattern!r} needs more than {max_states} byte-level states")
        rows.append(row)
        interned[key] = state
        return state

    for s in char_states:
        imap = interval_map(s)
        row = rows[index[s]]
        starts = [lo for lo, _, _ in imap]
        for lo, hi, target in imap:
            if lo > 0x7F:
                break
            row[lo : min(hi, 0x7F) + 1] = target
        for lead, k, base, span, floor in _LEADS:
            if not imap:
                break
            lo, hi = max(base, floor), min(base + span - 1, _MAX_UNICODE)
            sub = _restrict(imap, lo, hi, starts)
            if sub:
                row[lead] = node(k, _shift(sub, base))

    transitions = np.stack(rows)
    accepting = np.zeros(len(rows), dtype=bool)
    for s in fsm.finals:
        accepting[index[s]] = True
    if shortest:
        transitions[accepting] = -1
    return _trim(transitions, accepting, start=index[fsm.initial])


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
