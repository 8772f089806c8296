"""Lark grammars and regexes to :class:`CompiledGrammar`.

Lark's own loader reads the grammar (rules, terminals, ``%import``,
``%ignore``, templates, EBNF operators) and expands it to plain rules over
terminals; every terminal's regex becomes a byte DFA. Any context-free grammar
works, ambiguous and left-recursive ones included: the parser is Earley.

Compiled grammars are cached in memory (by grammar text, options and
vocabulary fingerprint) and their vocabulary-independent part on disk (by
grammar text and options) under ``$GRAMSPEC_CACHE_DIR/grammars``.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import tempfile
import threading
from pathlib import Path

import lark
import lark.exceptions
from lark.load_grammar import load_grammar

from gramspec.errors import GrammarError, LimitError
from gramspec.grammars.compiled import CompiledGrammar, GrammarSpec
from gramspec.grammars.earley import Rule, productive_rules
from gramspec.grammars.regex_dfa import DEFAULT_REGEX_SECONDS, ByteDFA, has_lazy_quantifier, regex_to_dfa
from gramspec.vocab import Vocabulary

_SPEC_FORMAT = 2  # bump when GrammarSpec's pickled layout changes
_memory: dict[tuple[str, str], CompiledGrammar] = {}
_memory_lock = threading.Lock()

#: Default bound on a grammar's text size.
DEFAULT_MAX_GRAMMAR_CHARS = 2_000_000


def cache_dir() -> Path:
    """Where gramspec keeps caches: ``$GRAMSPEC_CACHE_DIR`` or ``~/.cache/gramspec``."""
    return Path(os.environ.get("GRAMSPEC_CACHE_DIR") or Path.home() / ".cache" / "gramspec")


def compile_grammar(
    lark_text: str,
    vocab: Vocabulary,
    *,
    start: str = "start",
    disk_cache: bool = True,
    regex_seconds: float = DEFAULT_REGEX_SECONDS,
) -> CompiledGrammar:
    """Compile a Lark grammar for ``vocab``.

    Raises :class:`GrammarError` (with line and column where lark gives them)
    for malformed grammars, undefined symbols, an empty language and regexes
    that cannot be turned into automata; :class:`LimitError` when a regex
    takes longer than ``regex_seconds``.
    """
    if not isinstance(lark_text, str):
        raise GrammarError(f"a Lark grammar must be a str, not {type(lark_text).__name__}")
    if len(lark_text) > DEFAULT_MAX_GRAMMAR_CHARS:
        raise LimitError(f"grammar has {len(lark_text)} characters (limit {DEFAULT_MAX_GRAMMAR_CHARS})")
    key = _key("lark", start, lark_text)
    return _cached(key, vocab, disk_cache, lambda: _spec_from_lark(lark_text, start, regex_seconds))


def compile_regex(
    pattern: str,
    vocab: Vocabulary,
    *,
    disk_cache: bool = True,
    regex_seconds: float = DEFAULT_REGEX_SECONDS,
) -> CompiledGrammar:
    """Compile a regex (Python syntax, whole-string match) for ``vocab``."""
    if not isinstance(pattern, str):
        raise GrammarError(f"a regex must be a str, not {type(pattern).__name__}")
    key = _key("regex", "", pattern)
    return _cached(key, vocab, disk_cache, lambda: _spec_from_regex(pattern, regex_seconds))


def _key(kind: str, start: str, text: str) -> str:
    digest = hashlib.sha256(f"{_SPEC_FORMAT}\0{kind}\0{start}\0{text}".encode()).hexdigest()
    return digest[:40]


def _cached(key: str, vocab: Vocabulary, disk_cache: bool, build: object) -> CompiledGrammar:
    with _memory_lock:
        found = _memory.get((key, vocab.fingerprint))
    if found is not None:
        return found
    spec = _load_spec(key) if disk_cache else None
    if spec is None:
        spec = build()  # type: ignore[operator]
        if disk_cache:
            _store_spec(key, spec)
    compiled = CompiledGrammar(spec, vocab)
    with _memory_lock:
        return _memory.setdefault((key, vocab.fingerprint), compiled)


def _spec_path(key: str) -> Path:
    return cache_dir() / "grammars" / f"{key}.pkl"


def _load_spec(key: str) -> GrammarSpec | None:
    try:
        with open(_spec_path(key), "rb") as handle:
            spec = pickle.load(handle)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
        return None
    return spec if isinstance(spec, GrammarSpec) else None


def _store_spec(key: str, spec: GrammarSpec) -> None:
    path = _spec_path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as handle:
            pickle.dump(spec, handle, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(handle.name, path)
    except OSError:
        pass  # a cache that cannot be written is only slower


def _spec_from_regex(pattern: str, regex_seconds: float) -> GrammarSpec:
    dfa = regex_to_dfa(pattern, seconds=regex_seconds)
    if not dfa.accepting.any():
        raise GrammarError(f"regex {pattern!r} matches no string (empty language)")
    # $accept -> start ; start -> REGEX
    rules = (Rule(lhs=1, rhs=(2,)), Rule(lhs=2, rhs=(0,)))
    return GrammarSpec(("REGEX",), (dfa,), rules, frozenset(), f"regex {pattern[:60]!r}")


def _spec_from_lark(text: str, start: str, regex_seconds: float) -> GrammarSpec:
    try:
        grammar, _ = load_grammar(text, "<grammar>", [], False)
        terminal_defs, lark_rules, ignore_names = grammar.compile([start], set())
    except lark.exceptions.UnexpectedInput as exc:
        raise GrammarError(f"grammar error: {_first_line(exc)}", line=exc.line, column=exc.column) from None
    except lark.exceptions.GrammarError as exc:
        line, column = _locate(text, str(exc))
        raise GrammarError(f"grammar error: {_first_line(exc)}", line=line, column=column) from None
    except OSError as exc:  # %import of a file that is not there
        raise GrammarError(f"grammar error: cannot import {exc.filename or exc}") from None
    except lark.exceptions.LarkError as exc:
        raise GrammarError(f"grammar error: {_first_line(exc)}") from None
    except RecursionError:
        raise LimitError("grammar is nested too deeply to load") from None

    names = [t.name for t in terminal_defs]
    index = {name: i for i, name in enumerate(names)}
    dfas: list[ByteDFA] = []
    for definition in terminal_defs:
        regex = definition.pattern.to_regexp()
        try:
            dfa = regex_to_dfa(regex, shortest=has_lazy_quantifier(regex), seconds=regex_seconds)
        except GrammarError as exc:
            line, column = _locate(text, definition.name)
            raise GrammarError(f"terminal {definition.name}: {exc}", line=line, column=column) from None
        if dfa.accepting[dfa.start]:
            line, column = _locate(text, definition.name)
            raise GrammarError(f"terminal {definition.name} matches the empty string", line=line, column=column)
        dfas.append(dfa)

    n_terminals = len(dfas)
    nonterminals: dict[str, int] = {"$accept": n_terminals}

    def symbol(sym: lark.grammar.Symbol) -> int:
        if sym.is_term:
            return index[sym.name]
        return nonterminals.setdefault(sym.name, n_terminals + len(nonterminals))

    start_symbol = symbol(lark.grammar.NonTerminal(start))
    rules = [Rule(nonterminals["$accept"], (start_symbol,))]
    for rule in lark_rules:
        rules.append(Rule(symbol(rule.origin), tuple(symbol(s) for s in rule.expansion)))

    live_terminals = frozenset(i for i, dfa in enumerate(dfas) if dfa.accepting.any())
    keep = productive_rules(rules, n_terminals, live_terminals)
    if not keep[0]:
        line, column = _locate(text, start)
        raise GrammarError(f"rule {start!r} derives no finite string (empty language)", line=line, column=column)
    rules = [r for r, ok in zip(rules, keep) if ok]
    ignore = frozenset(index[name] for name in ignore_names if name in index)
    return GrammarSpec(tuple(names), tuple(dfas), tuple(rules), ignore, f"lark grammar, start={start!r}")


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _locate(text: str, message: str) -> tuple[int | None, int | None]:
    """Line and column that ``message`` gives, or else of the first symbol it
    names (quoted names first) that occurs in ``text``."""
    given = re.search(r"line (\d+),? col(?:umn)? (\d+)", message)
    if given:
        return int(given.group(1)), int(given.group(2))
    quoted = re.findall(r"'([A-Za-z_][A-Za-z_0-9]*)'", message)
    words = [w for w in re.findall(r"[A-Za-z_][A-Za-z_0-9]*", message) if len(w) > 1]
    for name in quoted + words:
        match = re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", text)
        if match:
            line = text.count("\n", 0, match.start()) + 1
            column = match.start() - (text.rfind("\n", 0, match.start()) + 1) + 1
            return line, column
    return None, None
