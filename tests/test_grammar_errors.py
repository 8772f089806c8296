"""Bad grammars and regexes: each a typed error naming what and where, in bounded time."""

from __future__ import annotations

import pytest

from gramspec import GrammarError, GramspecError, LimitError, Vocabulary
from gramspec.grammars import compile_grammar, compile_regex

VOCAB = Vocabulary.from_token_bytes([bytes([b]) for b in range(256)] + [b""], eos_token_ids=[256])

# (grammar, error type, words the message must contain, (line, column) or None)
GRAMMAR_ERRORS = [
    ('start: "a" (', GrammarError, ["grammar error"], (1, 13)),
    ("start: a\nb: \"x\"", GrammarError, ["'a'", "not defined"], (1, 8)),
    ('start: "x" UNDEFINED_T', GrammarError, ["UNDEFINED_T"], (1, 12)),
    ("start: start \"a\"", GrammarError, ["empty language"], (1, 1)),
    ("start: a\na: b\nb: a", GrammarError, ["empty language"], (1, 1)),
    ('start: "a"\nstart: "b"', GrammarError, ["start"], (1, 1)),
    ("start: /(?<=a)b/", GrammarError, ["lookbacks are not implemented"], None),
    (r"start: /(a)\1/", GrammarError, ["Group references"], None),
    ("start: /[a-/", GrammarError, ["invalid regex"], None),
    ("start: EMPTY\nEMPTY: /a*/", GrammarError, ["EMPTY", "matches the empty string"], (1, 8)),
    ('start: "a"\n%import nowhere.THING', GrammarError, ["cannot import", "nowhere"], None),
    ('start: "a" %%% ', GrammarError, ["grammar error"], (1, 12)),
]


@pytest.mark.parametrize("text, error, words, where", GRAMMAR_ERRORS)
def test_grammar_error_table(text: str, error: type[Exception], words: list[str], where: tuple[int, int] | None) -> None:
    with pytest.raises(error) as info:
        compile_grammar(text, VOCAB, disk_cache=False)
    message = str(info.value)
    for word in words:
        assert word in message, message
    assert isinstance(info.value, GramspecError) and isinstance(info.value, ValueError)
    if where is not None:
        assert (info.value.line, info.value.column) == where, message


REGEX_ERRORS = [
    ("(?<=a)b", GrammarError, "lookbacks"),
    (r"(a)\1", GrammarError, "Group references"),
    (r"\p{L}", GrammarError, "bad escape"),
    ("[", GrammarError, "unterminated character set at position 0"),
    ("a{2,1}", GrammarError, "min repeat greater than max repeat"),
    (r"[^\s\S]", GrammarError, "matches no string"),
    (r"(?=a)b", GrammarError, "matches no string"),
]


@pytest.mark.parametrize("pattern, error, words", REGEX_ERRORS)
def test_regex_error_table(pattern: str, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words.replace("(", r"\(")):
        compile_regex(pattern, VOCAB, disk_cache=False)


def test_exploding_regex_is_a_limit_error_within_its_budget() -> None:
    # determinizing this needs 2**22 states; the budget stops it
    with pytest.raises(LimitError, match="longer than 1 s"):
        compile_regex("(a|b)*a(a|b){22}", VOCAB, disk_cache=False, regex_seconds=1.0)


def test_non_string_input_is_a_typed_error() -> None:
    with pytest.raises(GrammarError, match="must be a str"):
        compile_grammar(b"start: 'a'", VOCAB)  # type: ignore[arg-type]
    with pytest.raises(GrammarError, match="must be a str"):
        compile_regex(None, VOCAB)  # type: ignore[arg-type]


def test_left_recursion_and_ambiguity_are_fine() -> None:
    grammar = compile_grammar('start: start "a" | "a"', VOCAB, disk_cache=False)
    assert grammar.accepts_bytes(b"aaaa") and not grammar.accepts_bytes(b"")
    ambiguous = compile_grammar('start: x x\nx: "a" | "a" "a"', VOCAB, disk_cache=False)
    assert ambiguous.accepts_bytes(b"aaa") and not ambiguous.accepts_bytes(b"aaaaa")
