"""The grammar engine against its oracles.

* lark (and ``re.fullmatch`` for regexes) decides membership of whole strings;
* brute force over the whole vocabulary decides masks: token t is allowed iff
  the text so far followed by t's bytes is a viable prefix, checked by a
  separately built grammar, byte by byte;
* random walks over allowed tokens must always be able to finish in a string
  lark accepts (no dead ends);
* every tokenization of a valid string is accepted token by token.
"""

from __future__ import annotations

import itertools
import random
import re
import threading
from collections import deque
from typing import Any

import lark
import numpy as np
import pytest
from grammar_cases import CASES, JSON, REGEXES

from gramspec import Vocabulary
from gramspec.grammars import CompiledGrammar, compile_grammar, compile_regex, mask_words, unpack_mask
from gramspec.grammars.compiled import State
from gramspec.grammars.json_schema import compile_json_schema

BYTE_VOCAB = Vocabulary.from_token_bytes([bytes([b]) for b in range(256)] + [b""], eos_token_ids=[256])


def lark_accepts(parser: lark.Lark, text: str) -> bool:
    try:
        parser.parse(text)
    except lark.exceptions.LarkError:
        return False
    return True


def mutations(text: str, rng: random.Random, count: int) -> list[str]:
    """Random one-character edits of ``text`` (delete, insert, replace)."""
    alphabet = "\"{}[],:ab1 .-+*()';=xyz<\\\u00e9"
    out = []
    for _ in range(count):
        i = rng.randrange(len(text) + 1)
        op = rng.randrange(3)
        ch = rng.choice(alphabet)
        if op == 0 and i < len(text):
            out.append(text[:i] + text[i + 1 :])
        elif op == 1:
            out.append(text[:i] + ch + text[i:])
        else:
            out.append(text[:i] + ch + text[i + 1 :])
    return out


def reference(grammar: CompiledGrammar) -> CompiledGrammar:
    """An independent instance of the same grammar: no cache shared with ``grammar``."""
    return CompiledGrammar(grammar.spec, grammar.vocab)


def brute_force_mask(ref: CompiledGrammar, state: State) -> np.ndarray:
    allowed = np.zeros(ref.vocab.size, dtype=bool)
    for token_id, data in enumerate(ref.vocab.token_bytes):
        if data:
            allowed[token_id] = ref.walk(state, data) is not None
    if ref.is_accepting(state):
        allowed[sorted(ref.vocab.eos_token_ids)] = True
    return allowed


def shortest_completion(grammar: CompiledGrammar, state: State, limit: int = 20_000) -> bytes:
    """Breadth-first search over grammar states for the shortest text that completes ``state``."""
    queue: deque[tuple[State, bytes]] = deque([(state, b"")])
    seen = {state}
    while queue and len(seen) < limit:
        current, text = queue.popleft()
        if grammar.is_accepting(current):
            return text
        for byte in range(256):
            nxt = grammar.walk(current, bytes((byte,)))
            if nxt is not None and nxt not in seen:
                seen.add(nxt)
                queue.append((nxt, text + bytes((byte,))))
    raise AssertionError(f"no completion found from {state} (a dead end?)")


def random_tokenization(vocab: Vocabulary, data: bytes, rng: random.Random) -> list[int]:
    """A random split of ``data`` into vocabulary tokens (each piece a token's exact bytes)."""
    by_bytes: dict[bytes, list[int]] = {}
    longest = 0
    for token_id, token in enumerate(vocab.token_bytes):
        if token and token in data:
            by_bytes.setdefault(token, []).append(token_id)
            longest = max(longest, len(token))
    # reachable[i]: the end can be reached from position i
    reachable = [False] * (len(data) + 1)
    reachable[len(data)] = True
    for i in range(len(data) - 1, -1, -1):
        reachable[i] = any(
            data[i : i + n] in by_bytes and reachable[i + n] for n in range(1, min(longest, len(data) - i) + 1)
        )
    assert reachable[0], "the vocabulary cannot spell the text"
    out, i = [], 0
    while i < len(data):
        choices = [n for n in range(1, min(longest, len(data) - i) + 1) if data[i : i + n] in by_bytes and reachable[i + n]]
        n = rng.choice(choices)
        out.append(rng.choice(by_bytes[data[i : i + n]]))
        i += n
    return out


# -- membership: lark and re decide --------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_membership_agrees_with_lark(name: str) -> None:
    text, valid, invalid = CASES[name]
    grammar = compile_grammar(text, BYTE_VOCAB)
    parser = lark.Lark(text, parser="earley")
    rng = random.Random(name)
    for s in valid:
        assert grammar.accepts_bytes(s.encode()), s
        assert lark_accepts(parser, s), s
    for s in invalid:
        assert not grammar.accepts_bytes(s.encode()), s
        assert not lark_accepts(parser, s), s
    disagreements = [
        s for v in valid for s in mutations(v, rng, 40) if grammar.accepts_bytes(s.encode()) != lark_accepts(parser, s)
    ]
    assert disagreements == []


@pytest.mark.parametrize("name", sorted(REGEXES))
def test_regex_membership_agrees_with_re(name: str) -> None:
    pattern, valid, invalid = REGEXES[name]
    grammar = compile_regex(pattern, BYTE_VOCAB)
    rng = random.Random(name)
    for s in valid:
        assert grammar.accepts_bytes(s.encode()), s
    for s in invalid:
        assert not grammar.accepts_bytes(s.encode()), s
    candidates = [s for v in valid for s in mutations(v, rng, 60)]
    assert [s for s in candidates if grammar.accepts_bytes(s.encode()) != bool(re.fullmatch(pattern, s))] == []


def test_prefixes_of_valid_strings_are_viable_and_garbage_is_not() -> None:
    grammar = compile_grammar(JSON, BYTE_VOCAB)
    doc = '{"k": ["\u4e16", 1.5e-3, {"z": null}]}'.encode()
    for cut in range(len(doc) + 1):  # every cut, including inside the UTF-8 of the CJK character
        assert grammar.is_viable_prefix(doc[:cut])
    assert not grammar.is_viable_prefix(b'{"k" 1')
    assert not grammar.is_viable_prefix(b'"\xff')  # never valid UTF-8
    assert not grammar.is_viable_prefix(b'"\xe4\xb8"')  # a character cut short


# -- masks: brute force over the vocabulary decides ------------------------------

MASK_PREFIXES: dict[str, list[bytes]] = {
    "json": [
        b'{"name": "Al',
        b'{"name": "Alice", "a',
        b"[1, 2",
        b'{"x": [tr',
        '"h\u00e9'.encode(),
        b'"\xe4',  # inside a UTF-8 character
        b"  ",
    ],
    "sql": [b"SELECT ", b"select id, na", b"SELECT * FROM t WHERE a >", b"SELECT a FROM t WHERE b = 'x"],
    "c_like": [b"int main() { ", b"int f(int a) { if (a < 1", b"void g() { /* c", b"int h() { return f(1, "],
    "arithmetic": [b"1 + ", b"(a1", b"2 * (3"],
    "ambiguous": [b"1+2", b"xy", b"(1"],
}


@pytest.mark.parametrize("tokenizer", ["llama-bpe", "llama-spm", "gpt-2"])
@pytest.mark.parametrize("name", sorted(MASK_PREFIXES))
@pytest.mark.usefixtures("trie_walk")
def test_masks_match_brute_force(name: str, tokenizer: str, vocab_for) -> None:  # type: ignore[no-untyped-def]
    vocab = vocab_for(tokenizer)
    grammar = compile_grammar(CASES[name][0], vocab)
    ref = reference(grammar)
    prefixes = MASK_PREFIXES[name] if tokenizer != "llama-bpe" else MASK_PREFIXES[name][:2]
    for data in [b""] + prefixes:
        state = grammar.walk(grammar.initial_state, data)
        assert state is not None, data
        ours = unpack_mask(grammar.mask(state), vocab.size)
        expected = brute_force_mask(ref, ref.walk(ref.initial_state, data))  # type: ignore[arg-type]
        wrong = np.flatnonzero(ours != expected)
        assert wrong.size == 0, (data, [(int(i), vocab.token_bytes[i], bool(expected[i])) for i in wrong[:10]])
        assert expected.any(), f"dead end after {data!r}"


@pytest.mark.model
@pytest.mark.usefixtures("trie_walk")
def test_masks_match_brute_force_smollm2(vocab_for) -> None:  # type: ignore[no-untyped-def]
    vocab = vocab_for("smollm2")
    for name in ("json", "c_like"):
        grammar = compile_grammar(CASES[name][0], vocab)
        ref = reference(grammar)
        for data in [b""] + MASK_PREFIXES[name][:3]:
            state = grammar.walk(grammar.initial_state, data)
            assert state is not None
            expected = brute_force_mask(ref, ref.walk(ref.initial_state, data))  # type: ignore[arg-type]
            assert np.array_equal(unpack_mask(grammar.mask(state), vocab.size), expected), data


@pytest.mark.parametrize("name", sorted(REGEXES))
@pytest.mark.usefixtures("trie_walk")
def test_regex_masks_match_brute_force(name: str, vocab_for) -> None:  # type: ignore[no-untyped-def]
    vocab = vocab_for("gpt-2")
    pattern, valid, _ = REGEXES[name]
    grammar = compile_regex(pattern, vocab)
    ref = reference(grammar)
    data = valid[0].encode()
    for cut in sorted({0, 1, len(data) // 2, len(data) - 1, len(data)}):
        state = grammar.walk(grammar.initial_state, data[:cut])
        assert state is not None
        expected = brute_force_mask(ref, ref.walk(ref.initial_state, data[:cut]))  # type: ignore[arg-type]
        assert np.array_equal(unpack_mask(grammar.mask(state), vocab.size), expected), (name, cut)


def test_shared_subtree_walks_match_brute_force(vocab_for, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Lexer states that differ in a few bytes (a listed key being matched beside
    the string of any other key) hand the subtrees their walks reach in one state
    to that state's cached walks; the masks stay exact. (The numpy walk's
    sharing: the compiled walk does without it.)"""
    from gramspec.grammars import trie_walk

    monkeypatch.setattr(trie_walk, "walk_kernel", None)
    vocab = vocab_for("gpt-2")
    keys = ("druid", "deathknight", "demonhunter", "monk", "mage")
    schema = {
        "type": "object",
        "properties": {key: {"type": "boolean"} for key in keys},
        "additionalProperties": {"type": "integer"},
    }
    grammar = compile_json_schema(schema, vocab)
    ref = reference(grammar)
    for data in [b'{"', b'{"d', b'{"de', b'{"dea', b'{"demo', b'{"druid":true,"m', b'{"druid":true,"mo', b'{"x']:
        state = grammar.walk(grammar.initial_state, data)
        assert state is not None, data
        expected = brute_force_mask(ref, ref.walk(ref.initial_state, data))  # type: ignore[arg-type]
        wrong = np.flatnonzero(unpack_mask(grammar.mask(state), vocab.size) != expected)
        assert wrong.size == 0, (data, [(int(i), vocab.token_bytes[i], bool(expected[i])) for i in wrong[:10]])
    assert grammar._subtrees, "no walk was shared: the test does not reach the code it is for"


@pytest.mark.usefixtures("trie_walk")
def test_masks_match_brute_force_on_adversarial_vocabulary() -> None:
    """The trie walk's corner cases: NUL bytes (they sort like padding), ids
    with the same bytes, long prefix chains, tokens ending mid-character."""
    rng = random.Random(7)
    alphabet = [b"\x00", b"a", b"1", b'"', b"\\", b"\xc3", b"\xa9", b" ", b",", b"{", b"}", b":"]
    tokens = [bytes([b]) for b in range(256)]
    tokens += [b"a\x00", b"a\x00\x00", b"a\x00b", b"\x00\x00", b"a" * 40, b"a" * 41 + b'"', b'"a', b'"a']
    tokens += [b"".join(rng.choices(alphabet, k=rng.randint(2, 9))) for _ in range(400)]
    vocab = Vocabulary.from_token_bytes(tokens + [b""], eos_token_ids=[len(tokens)])
    grammar = compile_grammar(JSON, vocab)
    ref = reference(grammar)
    for data in [b"", b'"', b'"a', b'{"a', b'{"a":1', b"[1", b'"\xc3', b'{"a": "x\\']:
        state = grammar.walk(grammar.initial_state, data)
        assert state is not None, data
        expected = brute_force_mask(ref, ref.walk(ref.initial_state, data))  # type: ignore[arg-type]
        wrong = np.flatnonzero(unpack_mask(grammar.mask(state), vocab.size) != expected)
        assert wrong.size == 0, (data, [(int(i), vocab.token_bytes[i], bool(expected[i])) for i in wrong[:10]])


@pytest.mark.parametrize("path", ["kernel", "numpy"])
def test_mask_bits_and_range_expansion_match_plain_python(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """set_mask_bits, set_range_bits and the trie's range expansion, compiled
    and in numpy, against a loop over the ids; an id past the bitmask is an
    IndexError."""
    from gramspec.grammars import compiled

    if path == "numpy":
        monkeypatch.setattr(compiled, "_set_bits_kernel", None)
        monkeypatch.setattr(compiled, "_concat_ranges_kernel", None)
        monkeypatch.setattr(compiled, "_set_range_bits_kernel", None)
    elif compiled._set_bits_kernel is None:
        pytest.skip("numba is not installed (or GRAMSPEC_JIT=0)")
    rng = np.random.default_rng(7)
    for size in (0, 1, 5, 300, 3000):  # both sides of the numpy path's few-ids switch
        ids = rng.integers(0, 1000, size=size)
        words = rng.integers(-(1 << 31), 1 << 31, size=mask_words(1000), dtype=np.int64).astype(np.int32)
        expected = words.view(np.uint32).astype(np.int64)
        for token in ids.tolist():
            expected[token >> 5] |= 1 << (token & 31)
        row = np.stack([np.zeros_like(words), words])[1]  # a row of a batch bitmask
        compiled.set_mask_bits(row, ids)
        assert row.view(np.uint32).astype(np.int64).tolist() == expected.tolist()
        lo = rng.integers(0, 50, size=size % 40).astype(np.int32)
        hi = lo + rng.integers(0, 6, size=lo.size).astype(np.int32)  # empty ranges too
        want = [index for a, b in zip(lo.tolist(), hi.tolist()) for index in range(a, b)]
        assert compiled._expand_ranges(lo, hi).tolist() == want
        order = rng.permutation(1000)[:60].astype(np.int32)  # ranges of it pick token ids
        row = words.copy()
        compiled.set_range_bits(row, order, lo, hi)
        expected = words.view(np.uint32).astype(np.int64)
        for token in order[want].tolist():
            expected[token >> 5] |= 1 << (token & 31)
        assert row.view(np.uint32).astype(np.int64).tolist() == expected.tolist()
    with pytest.raises(IndexError):
        compiled.set_mask_bits(np.zeros(2, dtype=np.int32), np.array([64]))
    with pytest.raises(IndexError):
        compiled.set_range_bits(np.zeros(2, dtype=np.int32), np.array([3, 64], dtype=np.int32), np.array([0]), np.array([2]))


@pytest.mark.parametrize("path", ["kernel", "numpy"])
def test_byte_classes_are_the_groups_of_equal_columns(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first column of each group of equal columns, compiled and in numpy,
    against grouping the columns as tuples (tables with few distinct columns,
    one state, and all columns alike)."""
    from gramspec.grammars import regex_dfa

    if path == "numpy":
        monkeypatch.setattr(regex_dfa, "_equal_columns_kernel", None)
    elif regex_dfa._equal_columns_kernel is None:
        pytest.skip("numba is not installed (or GRAMSPEC_JIT=0)")
    rng = np.random.default_rng(3)
    for n, distinct in ((1, 3), (5, 1), (40, 7), (300, 60)):
        columns = rng.integers(-1, n, size=(n, distinct)).astype(np.int32)
        table = columns[:, rng.integers(0, distinct, size=256)]
        first: dict[tuple[int, ...], int] = {}
        for byte in range(256):
            first.setdefault(tuple(table[:, byte].tolist()), byte)
        assert regex_dfa._equal_columns(table).tolist() == sorted(first.values())


def _horizon_partition_by_brute_force(transitions: np.ndarray, accepting: np.ndarray, alphabet: bytes, horizon: int) -> list[int]:
    """States numbered by what every string over ``alphabet`` of at most ``horizon`` bytes does from them."""
    strings = [w for length in range(horizon + 1) for w in itertools.product(alphabet, repeat=length)]
    signatures: dict[tuple[int, ...], int] = {}
    out = []
    for state in range(transitions.shape[0]):
        signature = []
        for string in strings:  # every prefix is listed too, so the end status is enough
            at = state
            for byte in string:
                at = int(transitions[at, byte]) if at >= 0 else -1
            signature.append(-1 if at < 0 else int(accepting[at]))
        out.append(signatures.setdefault(tuple(signature), len(signatures)))
    return out


@pytest.mark.parametrize("path", ["kernel", "numpy"])
def test_horizon_labels_are_the_partition_strings_of_that_length_make(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Moore refinement for h rounds, compiled and in numpy, equates exactly
    the states that no string of at most h bytes tells apart (brute force over
    every such string), on random DFAs and on a counted regex."""
    from gramspec.grammars import regex_dfa

    if path == "numpy":
        monkeypatch.setattr(regex_dfa, "_moore_kernel", None)
    elif regex_dfa._moore_kernel is None:
        pytest.skip("numba is not installed (or GRAMSPEC_JIT=0)")

    def numbered(labels: np.ndarray) -> list[int]:
        first: dict[int, int] = {}
        return [first.setdefault(label, len(first)) for label in labels.tolist()]

    alphabet = b"abc"
    rng = np.random.default_rng(11)
    dfas = []
    for n in (1, 4, 12, 30):
        transitions = np.full((n, 256), -1, dtype=np.int32)
        transitions[:, list(alphabet)] = rng.integers(-1, n, size=(n, len(alphabet)))
        dfas.append(regex_dfa.ByteDFA(transitions, rng.random(n) < 0.4))
    dfas.append(regex_dfa.regex_to_dfa("(a|b){2,9}c(ab)*"))
    for dfa in dfas:
        successors = dfa.transitions[:, dfa._byte_classes]
        for horizon in (0, 1, 2, 3, 6):
            got = numbered(regex_dfa._moore_refinement(successors, dfa.accepting, horizon))
            want = _horizon_partition_by_brute_force(dfa.transitions, dfa.accepting, alphabet, horizon)
            assert got == want, (dfa.n_states, horizon)
    counted = dfas[-1]
    assert len({counted.horizon_classes(2)(s) for s in range(counted.n_states)}) < counted.n_states  # some merge


def _decodes(data: bytes) -> bool:
    """Whether Python's decoder takes ``data`` as UTF-8."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_utf8_decoder_takes_exactly_the_well_formed_sequences() -> None:
    """regex_dfa.UTF8_STEP against Python's decoder: every scalar value's
    encoding ends on a boundary, and every 1- and 2-byte sequence and a
    sample of 3- and 4-byte ones end on a boundary iff Python decodes them."""
    from gramspec.grammars.regex_dfa import UTF8_STEP

    def end_state(data: bytes) -> int:
        state = 0
        for byte in data:
            state = int(UTF8_STEP[state, byte])
            if state < 0:
                break
        return state

    assert all(end_state(chr(c).encode()) == 0 for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    rng = random.Random(5)
    samples = [bytes([a]) for a in range(256)] + [bytes([a, b]) for a in range(256) for b in range(256)]
    samples += [bytes(rng.choice([rng.randrange(256), rng.randrange(0x80, 0xC0)]) for _ in range(n)) for n in (3, 4) for _ in range(20000)]
    samples += [bytes([lead, rng.randrange(0x80, 0xC0), rng.randrange(0x80, 0xC0)]) for lead in range(0xE0, 0xF0) for _ in range(200)]
    samples += [bytes([lead] + [rng.randrange(0x80, 0xC0) for _ in range(3)]) for lead in range(0xF0, 0xF8) for _ in range(200)]
    for data in samples:
        assert (end_state(data) == 0) == _decodes(data), data


def test_trie_marks_the_subtrees_of_well_formed_utf8(vocab_for) -> None:  # type: ignore[no-untyped-def]
    """A trie node's utf8 flag is set iff every token below it continues,
    after the node's bytes, with well-formed UTF-8 whose last character may
    be cut short (brute force over the tokens of Llama-3's vocabulary, rich in
    multi-byte characters, and of hand-picked broken ones)."""
    from gramspec.grammars.compiled import TokenTable

    completions = [bytes(c) for n in range(4) for c in itertools.product((0x80, 0x90, 0xA0), repeat=n)]

    def well_formed_prefix(data: bytes) -> bool:
        # a last character cut short lacks at most three bytes
        return any(_decodes(data + completion) for completion in completions)

    picked = [b"\xc3\xa9", b"\xc3", b"a\xc3", b"\xe6\x97\xa5\xe6", b"\xed\xa0\x80", b"\xe0\x80\x80", b"\xf4\x90\x80\x80", b"\x80", b"\xc3\xa9\x80"]
    picked_vocab = Vocabulary.from_token_bytes([bytes([b]) for b in range(256)] + picked, eos_token_ids=[])
    for vocab in (vocab_for("llama-bpe"), picked_vocab):
        # [token, offset]: the token's bytes from that offset on are well-formed (past its end: True)
        width = max(len(data) for data in vocab.token_bytes) + 2
        tail_ok = np.ones((vocab.size, width), dtype=bool)
        for token, data in enumerate(vocab.token_bytes):
            if not data.isascii():
                tail_ok[token, : len(data)] = [well_formed_prefix(data[cut:]) for cut in range(len(data))]
        trie = TokenTable(vocab).tries[0]
        for depth, level in enumerate(trie.levels):
            # the tokens of a node at this depth are a range of the order
            broken = np.concatenate([[0], np.cumsum(~tail_ok[trie.order, depth + 1])])
            want = broken[level.hi] == broken[level.lo]
            assert np.array_equal(level.utf8, want), (depth, np.flatnonzero(level.utf8 != want)[:5])


_CHARACTER_CASES = {
    # every character loops on the body: whole-character subtrees settle
    "json string": ({"type": "string"}, True),
    # one character is not allowed: no state of the body loops on every character
    "no e-acute": ({"type": "string", "pattern": "^[^\u00e9]*$"}, False),
    # characters up to U+07FF only: three- and four-byte ones are dead
    "two-byte characters": ({"type": "string", "pattern": "^[\u0000-\u07ff]*$"}, False),
}


@pytest.mark.parametrize("name", sorted(_CHARACTER_CASES))
@pytest.mark.usefixtures("trie_walk")
def test_whole_character_subtrees_settle_only_where_every_character_loops(name: str) -> None:
    """Masks inside strings of multi-byte characters match brute force (tokens
    with whole, cut-short, broken and excluded characters); the body of a
    string that takes every character loops on them, a body that excludes some
    does not."""
    schema, loops = _CHARACTER_CASES[name]
    characters = ["\u00e9", "\u00f1", "\u07ff", "\u0800", "\u65e5\u672c", "\U0001f600", "\u00e9\u65e5", "a\u00e9", "\u00e9\"", "\u00f1 b"]
    tokens = [bytes([b]) for b in range(256)] + [c.encode() for c in characters]
    tokens += [b"\xc3", b"a\xc3", b"\xe6\x97", b"\xe6\x97\xa5\xe6", b"\xed\xa0\x80", b"\xc3\xa9\x80", b"\xf0\x9f\x98", b'"\xc3\xa9', b'"ab']
    # broken after a whole character, below nodes whose other bytes all loop
    tokens += [b"\xc3\xb1\x80", b"\xc3\xb1\xed\xa0\x80", b"\xc3\xb1\xe0\x80\x80", b"b\xf4\x90\x80\x80", b"b\xc3\xb1"]
    vocab = Vocabulary.from_token_bytes(tokens + [b""], eos_token_ids=[len(tokens)])
    grammar = compile_json_schema(schema, vocab)
    ref = reference(grammar)
    text = '"a\u00f1b\u00e9'.encode() if loops else '"a\u00f1b'.encode()
    body = None
    for cut in range(len(text) + 1):
        state = grammar.walk(grammar.initial_state, text[:cut])
        assert state is not None, text[:cut]
        want = brute_force_mask(ref, ref.walk(ref.initial_state, text[:cut]))  # type: ignore[arg-type]
        wrong = np.flatnonzero(unpack_mask(grammar.mask(state), vocab.size) != want)
        assert wrong.size == 0, (text[:cut], [vocab.token_bytes[i] for i in wrong[:10]])
        if cut == 2:
            body = state
    assert body is not None
    for _, horizon in grammar._tries:
        representative = horizon.representative(body[1])
        horizon.prepare(representative)
        assert bool(horizon.kernel_arrays()[3][representative]) == loops


def test_flat_trie_is_the_tries_preorder(vocab_for) -> None:  # type: ignore[no-untyped-def]
    """The compiled walk's layout, checked against the levels' parent links:
    each node comes right after its parent or after its previous sibling's
    subtree, its subtree ends at the first later node no deeper than it, and
    every field is the level's field of the same node."""
    from gramspec.grammars.compiled import TokenTable, TokenTrie

    table = TokenTable(vocab_for("gpt-2"))
    trie = TokenTrie.build(table, table.nonempty)
    flat = trie.flat
    n = flat.node.size
    assert sorted(flat.node.tolist()) == list(range(n)) and (flat.position[flat.node] == np.arange(n)).all()
    depth = flat.depth.tolist()
    # end: the first later node at the same depth or above (a stack of open nodes)
    want_end = [n] * n
    open_nodes: list[int] = []
    for p, d in enumerate(depth):
        while open_nodes and depth[open_nodes[-1]] >= d:
            want_end[open_nodes.pop()] = p
        open_nodes.append(p)
    assert flat.end.tolist() == want_end
    for d, level in enumerate(trie.levels):
        p = flat.position[flat.offsets[d] + np.arange(level.parent.size)]
        assert (flat.depth[p] == d).all()
        for name in ("byte", "lo", "hi", "exact"):
            assert (getattr(flat, name)[p] == getattr(level, name)).all(), name
        assert (flat.below[p] == level.below).all()
        if d:
            parent = flat.position[flat.offsets[d - 1] + level.parent]
            assert ((parent < p) & (p < flat.end[parent])).all()


def test_compiled_walk_gives_the_numpy_walks_classes(vocab_for, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """From every lexer state that texts of several grammars reach, both trie
    walks (the numba kernel, the numpy walk) return the same inside tokens and
    the same crossings, for the whole trie and for the subtrees below the
    crossings (the starts of :meth:`CompiledGrammar._resolve`)."""
    from gramspec.grammars import compiled, trie_walk

    if trie_walk.walk_kernel is None:
        pytest.skip("numba is not installed (or GRAMSPEC_JIT=0)")
    kernel = trie_walk.walk_kernel
    vocab = vocab_for("gpt-2")
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}, "n": {"type": "integer"}},
              "additionalProperties": {"type": "array", "items": {"type": "number"}}}
    cases = [(compile_grammar(CASES["json"][0], vocab), b'{"name": "Alice", "tags": [1, 2.5e3, true], "x": {"y": "h\\u00e9\\\\'),
             (compile_grammar(CASES["c_like"][0], vocab), b"int f(int a) { if (a < 1) { return f(a, 2); } /* c */ return 0; }"),
             (compile_json_schema(schema, vocab), b'{"name":"Bob the builder","n":-12,"zz":[1.5,2,-3e-2]}')]

    def both(grammar: CompiledGrammar, part: int, depths: np.ndarray, nodes: np.ndarray, state: int) -> list[Any]:
        found = []
        for walk in (kernel, None):
            monkeypatch.setattr(trie_walk, "walk_kernel", walk)
            lo, hi, crossings = grammar._trie_walk(part, depths, nodes, state)
            found.append((sorted(compiled._expand_ranges(lo, hi).tolist()), {
                s: sorted(zip(d.tolist(), n.tolist())) for s, (d, n) in crossings.items()
            }))
        assert found[0] == found[1], (grammar, part, state)
        return [crossings for _, crossings in found[:1]]

    checked = 0
    for grammar, text in cases:
        states = {grammar.walk(grammar.initial_state, text[:cut]) for cut in range(len(text) + 1)} - {None}
        for part, (trie, horizon) in enumerate(grammar._tries):
            roots = np.arange(trie.levels[0].parent.size, dtype=np.int32)
            for state in sorted({horizon.representative(s[1]) for s in states}):  # type: ignore[index]
                (crossings,) = both(grammar, part, np.zeros(roots.size, dtype=np.int32), roots, state)
                for pairs in crossings.values():
                    deeper = [(d, n) for d, n in pairs if d > 0]
                    if deeper:
                        fresh = horizon.representative(grammar._start_state(grammar.initial_state[0]))
                        depths, nodes = (np.array(column, dtype=np.int32) for column in zip(*deeper))
                        both(grammar, part, depths, nodes, fresh)
                checked += 1
    assert checked > 40


COUNTED_CASES = {
    # a counted string (rows built on demand) far from and near both bounds
    "length": ({"type": "string", "minLength": 12, "maxLength": 90}, '"' + "ab\u00e9c\\\"d" * 14 + 'x"'),
    # a bounded repetition (a materialized chain: Moore refinement)
    "pattern": ({"type": "object", "properties": {"s": {"type": "string", "pattern": "^[a-z]{2,60}$"}}, "required": ["s"]},
                '{"s":"' + "abcdefghij" * 5 + 'abc"}'),
    # a pattern intersected with a length (a product of both)
    "both": ({"type": "string", "pattern": "^a", "maxLength": 60}, '"a' + "b1 " * 19 + '"'),
}


def _counted_vocabulary() -> Vocabulary:
    rng = random.Random(3)
    alphabet = [b"a", b"b", b"c", b"1", b" ", b'"', b"\\", b"\xc3", b"\xa9", b"{", b"}", b":", b","]
    tokens = [bytes([b]) for b in range(256)]
    tokens += [b"".join(rng.choices(alphabet, k=rng.randint(2, 8))) for _ in range(500)]
    tokens += [b"abcdefgh", b"ijabcdef", b'bc"}', b"ab\xc3\xa9c"]
    tokens += [b"a" * 24, b"ab" * 10, b"b1 " * 7, b"abcdefghij" * 2 + b'"', b"c" * 17 + b'"}']  # longer than short tokens
    return Vocabulary.from_token_bytes(tokens + [b""], eos_token_ids=[len(tokens)])


@pytest.mark.parametrize("name", sorted(COUNTED_CASES))
@pytest.mark.usefixtures("trie_walk")
def test_masks_of_counted_strings_match_brute_force_at_every_position(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lexer states no token tells apart share masks (the characters of a
    string with maxLength far from its bounds): at every byte of a long
    string, near and far from the bounds, the shared masks are exact (near a
    bound, the short tokens' walk is shared and the long ones walked apart);
    and a horizon shorter than the longest token gives wrong ones (so the
    sharing is what this test checks)."""
    from gramspec.grammars import compiled
    from gramspec.grammars.json_schema import json_schema_spec
    from gramspec.grammars.lexer import Lexer

    schema, text = COUNTED_CASES[name]
    vocab = _counted_vocabulary()
    data = text.encode()
    spec = json_schema_spec(schema)
    grammar = CompiledGrammar(spec, vocab)
    ref = reference(grammar)
    assert ref.accepts_bytes(data), text
    states = [grammar.walk(grammar.initial_state, data[:cut]) for cut in range(len(data) + 1)]
    expected = [brute_force_mask(ref, state) for state in states]  # type: ignore[arg-type]
    for cut, (state, want) in enumerate(zip(states, expected)):
        wrong = np.flatnonzero(unpack_mask(grammar.mask(state), vocab.size) != want)  # type: ignore[arg-type]
        assert wrong.size == 0, (data[:cut], [(int(i), vocab.token_bytes[i], bool(want[i])) for i in wrong[:10]])
    lexer_states = {state[1] for state in states if state is not None}
    assert len(grammar._lex_classes) < len(lexer_states) / 2, "equivalent lexer states were not shared"
    assert {part for part, _ in grammar._lex_classes} == {0, 1, 2}, "short tokens' walks were not shared near a bound"

    original_horizon = Lexer.horizon

    def short_sighted(self: Lexer, length: int) -> Any:
        return original_horizon(self, 1)  # equates states that 2-byte tokens tell apart

    monkeypatch.setattr(Lexer, "horizon", short_sighted)
    short = CompiledGrammar(spec, vocab)
    assert compiled.TokenTable.for_vocab(vocab).max_length > 1
    wrong_masks = sum(
        not np.array_equal(unpack_mask(short.mask(short.walk(short.initial_state, data[:cut])), vocab.size), want)  # type: ignore[arg-type]
        for cut, want in enumerate(expected)
    )
    assert wrong_masks > 0


def test_padding_ids_and_special_tokens_are_never_allowed() -> None:
    tokens = [bytes([b]) for b in range(256)] + [b"<s>", b""] + [b""] * 5
    vocab = Vocabulary.from_token_bytes(tokens, eos_token_ids=[257], special_token_ids=[256])
    matcher = compile_grammar(JSON, vocab).matcher()
    allowed = matcher.allowed_tokens()
    assert allowed.shape == (vocab.size,)
    assert not allowed[256:].any()
    assert matcher.advance(ord("1")) and matcher.allowed_tokens()[257]  # EOS once complete
    assert not matcher.advance(256)
    assert not matcher.advance(260)


def test_fill_mask_layout_and_rows() -> None:
    matcher = compile_regex(r"ab|b", BYTE_VOCAB).matcher()
    bitmask = np.full((3, mask_words(BYTE_VOCAB.size) + 2), -1, dtype=np.int32)
    matcher.fill_mask(bitmask, row=1)
    assert (bitmask[0] == -1).all() and (bitmask[2] == -1).all()
    expected_words = np.zeros(bitmask.shape[1], dtype=np.int32)
    expected_words[ord("a") // 32] |= 1 << (ord("a") % 32)
    expected_words[ord("b") // 32] |= 1 << (ord("b") % 32)
    assert np.array_equal(bitmask[1], expected_words)


# -- no dead ends: random walks always finish in the language ---------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_random_walks_finish_in_language(name: str, vocab_for) -> None:  # type: ignore[no-untyped-def]
    vocab = vocab_for("gpt-2")
    text = CASES[name][0]
    grammar = compile_grammar(text, vocab)
    parser = lark.Lark(text, parser="earley")
    by_bytes = {vocab.token_bytes[i]: i for i in range(vocab.size) if len(vocab.token_bytes[i]) == 1}
    eos = min(vocab.eos_token_ids)
    rng = random.Random(name)
    for _ in range(6):
        matcher = grammar.matcher()
        for _ in range(rng.randrange(4, 25)):
            allowed = np.flatnonzero(matcher.allowed_tokens())
            assert allowed.size, f"dead end after {vocab.decode(matcher.tokens)!r}"
            choice = int(rng.choice(allowed))
            if choice == eos:
                break
            assert matcher.advance(choice)
        if not matcher.is_terminated():
            for byte in shortest_completion(grammar, matcher.state):
                assert matcher.advance(by_bytes[bytes((byte,))])
            assert matcher.advance(eos)
        assert matcher.is_terminated()
        text_bytes = vocab.decode(matcher.tokens)
        assert lark_accepts(parser, text_bytes.decode("utf-8")), text_bytes


# -- no false rejections: every tokenization of a valid string is accepted ------


@pytest.mark.parametrize("tokenizer", ["llama-bpe", "gpt-2", "llama-spm"])
def test_valid_strings_accepted_under_any_tokenization(tokenizer: str, vocab_for, load_tokenizer) -> None:  # type: ignore[no-untyped-def]
    vocab = vocab_for(tokenizer)
    hf = load_tokenizer(tokenizer)
    rng = random.Random(tokenizer)
    for name, (text, valid, _) in sorted(CASES.items()):
        grammar = compile_grammar(text, vocab)
        for s in valid:
            data = s.encode()
            canonical = hf.encode(s, add_special_tokens=False)
            tokenizations = [random_tokenization(vocab, data, rng) for _ in range(3)]
            if vocab.decode(canonical) == data:  # SentencePiece adds a leading space
                tokenizations.append(canonical)
            for tokens in tokenizations:
                matcher = grammar.matcher()
                assert matcher.advance_many(tokens) == len(tokens), (name, s)
                assert matcher.is_accepting(), (name, s)
                assert matcher.advance(min(vocab.eos_token_ids))


# -- rollback, fork, forced tokens ------------------------------------------------


def test_rollback_and_fork_restore_masks(vocab_for) -> None:  # type: ignore[no-untyped-def]
    vocab = vocab_for("gpt-2")
    grammar = compile_grammar(JSON, vocab)
    tokens = random_tokenization(vocab, b'{"a": [1, {"b": "c\xc3\xa9"}], "d": true}', random.Random(1))
    matcher = grammar.matcher()
    masks = [matcher.allowed_tokens()]
    for token in tokens:
        assert matcher.advance(token)
        masks.append(matcher.allowed_tokens())
    fork = matcher.fork()
    for back in (3, 1, 5):
        matcher.rollback(back)
        assert np.array_equal(matcher.allowed_tokens(), masks[matcher.num_tokens])
    assert np.array_equal(fork.allowed_tokens(), masks[-1])
    assert fork.advance(min(vocab.eos_token_ids)) and fork.is_terminated()
    assert not matcher.is_terminated()
    matcher.rollback(matcher.num_tokens)
    assert np.array_equal(matcher.allowed_tokens(), masks[0])
    with pytest.raises(ValueError):
        matcher.rollback(1)


def test_rejected_token_leaves_state_unchanged() -> None:
    matcher = compile_grammar(JSON, BYTE_VOCAB).matcher()
    assert matcher.advance(ord("["))
    before = matcher.allowed_tokens()
    assert not matcher.advance(ord("}"))
    assert matcher.num_tokens == 1
    assert np.array_equal(matcher.allowed_tokens(), before)
    assert not matcher.advance(256)  # EOS while incomplete


def test_forced_tokens(vocab_for) -> None:  # type: ignore[no-untyped-def]
    vocab = vocab_for("gpt-2")
    grammar = compile_grammar(r'start: "{\"name\": " ESCAPED_STRING ", \"id\": " INT "}"' + "\n%import common (ESCAPED_STRING, INT)", vocab)
    matcher = grammar.matcher()
    assert matcher.forced_bytes() == b'{"name": "'
    forced = matcher.forced_tokens()
    assert forced and b'{"name": "'.startswith(vocab.decode(forced))
    assert matcher.advance_many(forced) == len(forced)
    for token in random_tokenization(vocab, b'{"name": "'[len(vocab.decode(forced)) :] + b'Bob"', random.Random(0)):
        assert matcher.advance(token)
    assert matcher.forced_bytes() == b', "id": '
    assert matcher.forced_tokens() == matcher.forced_tokens()
    assert grammar.matcher().forced_bytes() == b'{"name": "'
    assert compile_grammar(JSON, vocab).matcher().forced_tokens() == []


# -- sharing and caching -----------------------------------------------------------


def test_compiled_grammar_is_shared_safely_across_threads(vocab_for) -> None:  # type: ignore[no-untyped-def]
    vocab = vocab_for("gpt-2")
    grammar = compile_grammar(CASES["sql"][0], vocab, disk_cache=False)
    ref = reference(grammar)
    prefixes = [b"", b"SELECT ", b"SELECT a, b FROM t WHERE x = 1 AND ", b"select * from t where y < 'a"]
    expected = [unpack_mask(ref.mask(ref.walk(ref.initial_state, p)), vocab.size) for p in prefixes]  # type: ignore[arg-type]
    errors: list[str] = []

    def work(seed: int) -> None:
        order = list(range(len(prefixes)))
        random.Random(seed).shuffle(order)
        for i in order:
            state = grammar.walk(grammar.initial_state, prefixes[i])
            if not np.array_equal(unpack_mask(grammar.mask(state), vocab.size), expected[i]):  # type: ignore[arg-type]
                errors.append(f"thread {seed}: prefix {prefixes[i]!r}")

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_disk_cache_round_trip(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("GRAMSPEC_CACHE_DIR", str(tmp_path))
    grammar_text = 'start: "x" /[0-9]+/ "y"'
    first = compile_grammar(grammar_text, BYTE_VOCAB)
    files = list((tmp_path / "grammars").glob("*.pkl"))
    assert len(files) == 1
    other_vocab = Vocabulary.from_token_bytes([bytes([b]) for b in range(256)] + [b"", b"xy"], eos_token_ids=[256])
    second = compile_grammar(grammar_text, other_vocab)  # new vocabulary: the spec comes from disk
    assert second is not first and second.accepts_bytes(b"x12y") and not second.accepts_bytes(b"xy")
    assert compile_grammar(grammar_text, BYTE_VOCAB) is first  # memory cache
