"""Build a :class:`GrammarSpec` directly (rules over byte-DFA terminals), without Lark text."""

from __future__ import annotations

import re
from collections.abc import Callable

from gramspec.errors import LimitError
from gramspec.grammars.compiled import GrammarSpec
from gramspec.grammars.earley import Rule, productive_rules
from gramspec.grammars.regex_dfa import ByteDFA, regex_to_dfa

Symbol = tuple[str, int]  # ("t", terminal index) or ("n", nonterminal index)


class GrammarBuilder:
    """Collects terminals (deduplicated by key) and rules; ``spec(root)`` finishes."""

    def __init__(self, *, max_rules: int = 200_000, max_terminals: int = 20_000) -> None:
        self._terminals: list[ByteDFA] = []
        self._terminal_names: list[str] = []
        self._terminal_keys: dict[object, int] = {}
        self._rules: list[tuple[int, tuple[Symbol, ...]]] = []
        self._nonterminal_names: list[str] = []
        self._max_rules = max_rules
        self._max_terminals = max_terminals

    def nonterminal(self, name: str) -> Symbol:
        self._nonterminal_names.append(name)
        return ("n", len(self._nonterminal_names) - 1)

    def rule(self, lhs: Symbol, *rhs: Symbol) -> None:
        if len(self._rules) >= self._max_rules:
            raise LimitError(f"grammar needs more than {self._max_rules} rules")
        self._rules.append((lhs[1], rhs))

    def terminal(self, key: object, name: str, make: Callable[[], ByteDFA]) -> Symbol:
        found = self._terminal_keys.get(key)
        if found is None:
            if len(self._terminals) >= self._max_terminals:
                raise LimitError(f"grammar needs more than {self._max_terminals} terminals")
            found = self._terminal_keys[key] = len(self._terminals)
            self._terminals.append(make())
            self._terminal_names.append(name)
        return ("t", found)

    def literal(self, text: str) -> Symbol:
        """A terminal for exactly ``text``."""
        return self.terminal(("lit", text), text, lambda: regex_to_dfa(re.escape(text)))

    def regex(self, pattern: str, name: str = "") -> Symbol:
        return self.terminal(("re", pattern), name or pattern, lambda: regex_to_dfa(pattern))

    def spec(self, root: Symbol, source: str, ignore: frozenset[int] = frozenset()) -> GrammarSpec | None:
        """The finished grammar, or None when ``root`` derives nothing."""
        n_terminals = len(self._terminals)

        def number(symbol: Symbol) -> int:
            return symbol[1] if symbol[0] == "t" else n_terminals + 1 + symbol[1]

        rules = [Rule(n_terminals, (number(root),))]
        rules.extend(Rule(n_terminals + 1 + lhs, tuple(number(s) for s in rhs)) for lhs, rhs in self._rules)
        live = frozenset(i for i, dfa in enumerate(self._terminals) if dfa.accepting.any())
        keep = productive_rules(rules, n_terminals, live)
        if not keep[0]:
            return None
        rules = [r for r, ok in zip(rules, keep) if ok]
        return GrammarSpec(tuple(self._terminal_names), tuple(self._terminals), tuple(rules), ignore, source)
