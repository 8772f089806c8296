"""An Earley recognizer over terminals whose sets are interned.

Each Earley set is identified by an integer. Items are ``(rule, dot, origin)``
where ``origin`` is the id of the set the item started in, or ``SELF`` for
items that started in the set holding them. Two sets with the same items
(origins compared by id) behave the same from then on, so sets are interned:
a repeated configuration (the next element of a list, the next property of an
object) gets the id it had before, and everything cached per id is reused.

Nullable symbols are handled as Aycock and Horspool (2002) do: predicting a
nullable nonterminal also moves the dot past it.

Rule 0 must be the augmented rule ``$accept -> start``; set 0 is the initial
set. Every rule must be productive (see :func:`productive_rules`), so a
non-empty set is always a viable prefix.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

SELF = -1

Item = tuple[int, int, int]


@dataclass(frozen=True)
class Rule:
    lhs: int  # a nonterminal symbol (>= n_terminals)
    rhs: tuple[int, ...]  # terminals are < n_terminals


class EarleySet:
    __slots__ = ("accepting", "by_nonterminal", "by_terminal", "expected", "id", "items")

    def __init__(self, set_id: int, items: frozenset[Item], rules: Sequence[Rule], n_terminals: int) -> None:
        self.id = set_id
        self.items = items
        by_nonterminal: dict[int, list[Item]] = {}
        by_terminal: dict[int, list[Item]] = {}
        accepting = False
        for item in items:
            rule, dot, origin = item
            rhs = rules[rule].rhs
            if dot < len(rhs):
                symbol = rhs[dot]
                (by_terminal if symbol < n_terminals else by_nonterminal).setdefault(symbol, []).append(item)
            elif rule == 0 and (origin == 0 or (origin == SELF and set_id == 0)):
                accepting = True
        self.by_nonterminal = by_nonterminal
        self.by_terminal = by_terminal
        self.expected: frozenset[int] = frozenset(by_terminal)
        self.accepting = accepting


class EarleyParser:
    """Shared, thread-safe parser tables and interned sets for one grammar."""

    def __init__(self, rules: Sequence[Rule], n_terminals: int) -> None:
        self.rules = tuple(rules)
        self.n_terminals = n_terminals
        self._by_lhs: dict[int, list[int]] = {}
        for index, rule in enumerate(self.rules):
            self._by_lhs.setdefault(rule.lhs, []).append(index)
        self.nullable = _nullable(self.rules)
        self.sets: list[EarleySet] = []
        self._by_items: dict[frozenset[Item], int] = {}
        self._by_kernel: dict[frozenset[Item], int] = {}
        self._scan_memo: dict[tuple[int, frozenset[int]], int | None] = {}
        self._lock = threading.RLock()
        self.initial = self._intern(frozenset({(0, 0, SELF)}))

    def __getitem__(self, set_id: int) -> EarleySet:
        return self.sets[set_id]

    def scan(self, set_id: int, terminals: frozenset[int]) -> int | None:
        """The set after reading one of ``terminals`` (several: a lexeme any of
        them matches), or None when none is expected."""
        key = (set_id, terminals)
        memo = self._scan_memo.get(key, False)
        if memo is not False:
            return memo  # type: ignore[return-value]
        current = self.sets[set_id]
        kernel = {
            (rule, dot + 1, set_id if origin == SELF else origin)
            for terminal in terminals
            for rule, dot, origin in current.by_terminal.get(terminal, ())
        }
        result = self._intern(frozenset(kernel)) if kernel else None
        self._scan_memo[key] = result
        return result

    def union_with_previous(self, set_id: int, previous_id: int) -> int:
        """A set holding both ``set_id``'s items and those of the earlier set
        ``previous_id`` (used when a lexeme may be skipped by ``%ignore``)."""
        previous = self.sets[previous_id]
        moved = {(r, d, previous_id if o == SELF else o) for r, d, o in previous.items}
        return self._intern(frozenset(self.sets[set_id].items) | frozenset(moved))

    def _intern(self, kernel: frozenset[Item]) -> int:
        with self._lock:
            found = self._by_kernel.get(kernel)
            if found is not None:
                return found
            items = self._closure(kernel)
            set_id = self._by_items.get(items)
            if set_id is None:
                set_id = len(self.sets)
                self.sets.append(EarleySet(set_id, items, self.rules, self.n_terminals))
                self._by_items[items] = set_id
            self._by_kernel[kernel] = set_id
            return set_id

    def _closure(self, kernel: Iterable[Item]) -> frozenset[Item]:
        rules, n_terminals, nullable, by_lhs, sets = self.rules, self.n_terminals, self.nullable, self._by_lhs, self.sets
        items = set(kernel)
        agenda = list(items)
        while agenda:
            rule, dot, origin = agenda.pop()
            rhs = rules[rule].rhs
            if dot == len(rhs):
                if origin == SELF:  # an empty derivation: Aycock-Horspool already moved past it
                    continue
                lhs = rules[rule].lhs
                for r2, d2, o2 in sets[origin].by_nonterminal.get(lhs, ()):
                    new = (r2, d2 + 1, origin if o2 == SELF else o2)
                    if new not in items:
                        items.add(new)
                        agenda.append(new)
                continue
            symbol = rhs[dot]
            if symbol < n_terminals:
                continue
            for r2 in by_lhs.get(symbol, ()):
                new = (r2, 0, SELF)
                if new not in items:
                    items.add(new)
                    agenda.append(new)
            if symbol in nullable:
                new = (rule, dot + 1, origin)
                if new not in items:
                    items.add(new)
                    agenda.append(new)
        return frozenset(items)


def _nullable(rules: Sequence[Rule]) -> frozenset[int]:
    nullable: set[int] = set()
    changed = True
    while changed:
        changed = False
        for rule in rules:
            if rule.lhs not in nullable and all(s in nullable for s in rule.rhs):
                nullable.add(rule.lhs)
                changed = True
    return frozenset(nullable)


def productive_rules(rules: Sequence[Rule], n_terminals: int, live_terminals: frozenset[int]) -> list[bool]:
    """For each rule, whether it derives some string of live terminals."""
    productive: set[int] = set()
    ok = [False] * len(rules)
    changed = True
    while changed:
        changed = False
        for index, rule in enumerate(rules):
            if ok[index]:
                continue
            if all((s in live_terminals) if s < n_terminals else (s in productive) for s in rule.rhs):
                ok[index] = True
                changed = True
                productive.add(rule.lhs)
    return ok
