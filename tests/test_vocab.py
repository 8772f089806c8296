"""Vocabulary: token id -> exact bytes, checked on real tokenizers.

The main oracle is the tokenizer's own encoder: for every test string ``s``,
the bytes of ``tokenizer.encode(s)`` joined together must be ``s.encode()``
exactly (plus the one dummy-prefix space SentencePiece tokenizers add, only
for those that add it). The tokenizer's decoder is a second oracle, over whole
strings and over every single id of every vocabulary.

Known quirks of the GGUF-converted tokenizers, pinned by the tests below:

* llama-spm (Metaspace pre-tokenizer, ``prepend_scheme="first"``) adds the
  dummy-prefix space only when the text does not already start with a space;
  phi-3 (``Prepend`` normalizer) always adds it. Both decoders strip one
  leading space.
* deepseek-coder: 13 non-special added tokens (ids 32000-32012) are the
  single characters ``õ ÷ Á ý À ÿ ø ú þ ü ù ö û``. The encoder maps the text
  ``"õ"`` to id 32000, so the Vocabulary gives it the bytes of ``"õ"``, but
  the tokenizer's byte-level decoder reads the character as the byte 0xF5 and
  decodes it to U+FFFD: the tokenizer does not round-trip these characters.
  The conversion also turns the GGUF's BOS/EOS (ids 32013/32014, control
  tokens) into plain tokens that spell ``<｜begin▁of▁sentence｜>`` and appends
  new special tokens 32256-32258 past the model's 32256 rows, so its default
  EOS (32258) is not one the model emits: pass ``eos_token_ids`` from the
  model's config. Llama-3 (llama-bpe) likewise gets an extra
  ``<|endoftext|>`` at 128256.
* Byte-level vocabularies need not hold all 256 one-byte pieces: falcon,
  starcoder and SmolLM2 lack some control bytes (SmolLM2: 0x04 0x06 0x13 0x14
  0x16 0x1D) and rare 4-byte UTF-8 lead bytes (0xF1/0xF2), besides the bytes
  that never occur in UTF-8 (which deepseek-coder lacks too).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from gramspec import Vocabulary, VocabularyError

# Strings every tokenizer must map to exact bytes.
STRINGS: list[str] = [
    "",
    "a",
    " a",
    "Hello world",
    "Hello, world! How's it going? I'm fine; you're 'quoted' and \"double\".",
    "  two leading spaces",
    "trailing spaces   ",
    "multiple     spaces   inside",
    "   ",
    "tabs\tand\t\ttabs\t",
    "line1\nline2\n\n\nline5\n",
    "\n\nleading newlines",
    "windows\r\nline\r\nends",
    "mixed \t \n \r\n\t  whitespace \n\t",
    "\t\tdef f(x):\n\t\t\treturn x  # comment\n",
    "café naïve façade résumé coöperate",
    "Ångström Øresund Æsir Straße ﬁ ligature",
    "decomposed e\u0301 and a\u0308",
    "ações e opções, não, 1º ÷ 2 ÿ ý Á À ü ù ö û ø ú þ",
    "Ελληνικά και русский текст",
    "עברית ועربية",
    "日本語のテキストと中文字符测试",
    "한국어 텍스트",
    "🎉",
    " 🎉",
    "emoji 🎉🚀 party 😀😀😀",
    "a😀b",
    "👩\u200d👩\u200d👧\u200d👦 family, 🇫🇷 flag, 👍🏽 skin tone",
    "rare 𠀀 CJK extension B and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math letters",
    "∑ x² ≤ ∞, ∀ε>0 ∃δ",
    "non\u00a0breaking\u2009thin\u200bzero-width",
    "control \x01\x02\x7f chars and NUL \x00 end",
    "12345678901234567890 3.14159 -2.5e-10 0x1F",
    "!!!???...,,,;;;:::---___===+++***&&&|||~~~",
    '<html><body class="x">&amp;</body></html>',
    json.dumps(
        {
            "name": "Zoë",
            "tags": ["a", "b c", "日本"],
            "nested": {"n": -1.5e3, "ok": True, "none": None},
            "emoji": "🎉",
        },
        ensure_ascii=False,
    ),
    json.dumps({"a": [1, 2, {"b": "c\nd"}], "e": "\u00e9\t"}, indent=2),
    '{"escaped": "\\u00e9\\n\\t\\"", "path": "C:\\\\dir"}',
    "import os\n\n\nclass Foo(Base):\n    def __init__(self) -> None:\n        self.x = {'k': [1, 2]}\n",
    'fn main() {\n    let v: Vec<u8> = vec![0xff; 4];\n    println!("{:?}", v);\n}\n',
    "SELECT * FROM t WHERE name LIKE '%é%' AND id <> 3;",
]

# How each tokenizer adds SentencePiece's dummy-prefix space (detected by
# encoding, then checked against this table so no other tokenizer may add one).
DUMMY_PREFIX = {"llama-spm": "unless-leading-space", "phi-3": "always"}

# The tokenizer's own EOS id (as converted from GGUF by transformers).
EOS_IDS = {
    "llama-spm": 2,
    "llama-bpe": 128001,
    "qwen2": 151643,
    "gpt-2": 50256,
    "phi-3": 32000,
    "deepseek-coder": 32258,
    "falcon": 11,
    "starcoder": 0,
    "smollm2": 2,
}

SPM_TOKENIZERS = ("llama-spm", "phi-3")

# Characters whose UTF-8 bytes a tokenizer can spell with one-byte tokens.
MULTIBYTE_CHARS = ["é", "ß", "€", "日", "🎉", "𠀀"]

_fresh: dict[str, Vocabulary] = {}


@pytest.fixture
def tokenizer(tokenizer_name: str, load_tokenizer: Any) -> Any:
    return load_tokenizer(tokenizer_name)


@pytest.fixture
def vocab(tokenizer_name: str, tokenizer: Any) -> Vocabulary:
    """Built from the tokenizer in this run (never from the disk cache)."""
    if tokenizer_name not in _fresh:
        _fresh[tokenizer_name] = Vocabulary.from_tokenizer(tokenizer)
    return _fresh[tokenizer_name]


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def _decode(tokenizer: Any, ids: list[int]) -> str:
    return str(tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False))


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _prefix_mode(tokenizer: Any, vocab: Vocabulary) -> str:
    """'never', 'always' or 'unless-leading-space', as the encoder behaves."""
    plain = vocab.decode(_encode(tokenizer, "a"))
    spaced = vocab.decode(_encode(tokenizer, " a"))
    if plain == b"a":
        assert spaced == b" a"
        return "never"
    assert plain == b" a", plain
    assert spaced in (b"  a", b" a"), spaced
    return "always" if spaced == b"  a" else "unless-leading-space"


def _expected_bytes(text: str, mode: str) -> bytes:
    prefix = text != "" and (mode == "always" or (mode == "unless-leading-space" and not text.startswith(" ")))
    return (b" " if prefix else b"") + text.encode("utf-8")


def _decode_disagreements(tokenizer: Any, vocab: Vocabulary) -> dict[int, str]:
    """Non-special added tokens whose text the decoder does not give back (deepseek-coder's 13)."""
    out = {}
    for i, token in tokenizer.added_tokens_decoder.items():
        if int(i) not in vocab.special_token_ids and _decode(tokenizer, [int(i)]) != token.content:
            out[int(i)] = str(token.content)
    return out


# --- real tokenizers --------------------------------------------------------------------


def test_dummy_prefix_only_where_expected(tokenizer_name: str, tokenizer: Any, vocab: Vocabulary) -> None:
    assert _prefix_mode(tokenizer, vocab) == DUMMY_PREFIX.get(tokenizer_name, "never")


@pytest.mark.parametrize("text", STRINGS, ids=range(len(STRINGS)))
def test_encoded_text_maps_to_its_exact_bytes(
    tokenizer_name: str, tokenizer: Any, vocab: Vocabulary, text: str
) -> None:
    mode = DUMMY_PREFIX.get(tokenizer_name, "never")
    ids = _encode(tokenizer, text)
    assert not set(ids) & vocab.special_token_ids, "test strings must not contain special tokens"
    assert vocab.decode(ids) == _expected_bytes(text, mode)
    # The tokenizer's own decoder agrees, except where it cannot round-trip the text itself.
    if set(ids) & set(_decode_disagreements(tokenizer, vocab)):
        return
    decoded = _expected_bytes(text, mode).decode("utf-8")
    if mode != "never" and decoded.startswith(" "):  # the SentencePiece decoders strip one leading space
        decoded = decoded[1:]
    assert _decode(tokenizer, ids) == decoded


def test_every_token_agrees_with_the_decoder(tokenizer: Any, vocab: Vocabulary) -> None:
    """Decode each id after a plain "a" token (so SentencePiece's strip of a leading space is moot)."""
    n = len(tokenizer)
    a = tokenizer.convert_tokens_to_ids("a")
    assert vocab.token_bytes[a] == b"a"
    decoded = tokenizer.batch_decode(
        [[a, i] for i in range(n)], skip_special_tokens=False, clean_up_tokenization_spaces=False
    )
    exceptions = _decode_disagreements(tokenizer, vocab)
    wrong = []
    for i in range(n):
        if i in vocab.special_token_ids or i in exceptions:
            continue
        data = b"a" + vocab.token_bytes[i]
        if _is_utf8(data):
            ok = decoded[i] == data.decode("utf-8")
        else:  # decoders differ in how many U+FFFD they write for one bad sequence
            ok = "\ufffd" in decoded[i] and re.sub("\ufffd+", "\ufffd", decoded[i]) == re.sub(
                "\ufffd+", "\ufffd", data.decode("utf-8", "replace")
            )
        if not ok:
            wrong.append((i, tokenizer.convert_ids_to_tokens(i), vocab.token_bytes[i], decoded[i]))
    assert wrong == []


def test_decoder_disagreements_are_the_known_ones(tokenizer_name: str, tokenizer: Any, vocab: Vocabulary) -> None:
    found = _decode_disagreements(tokenizer, vocab)
    if tokenizer_name != "deepseek-coder":
        assert found == {}
        return
    assert found == {32000 + k: c for k, c in enumerate("õ÷ÁýÀÿøúþüùöû")}
    for i, content in found.items():
        assert _encode(tokenizer, content) == [i]  # the encoder's reading, which the Vocabulary follows
        assert vocab.token_bytes[i] == content.encode("utf-8")
        assert _decode(tokenizer, [i]) == "\ufffd"  # the decoder reads the byte 0xF5..0xC0 instead


def test_non_special_added_tokens_are_their_text(tokenizer: Any, vocab: Vocabulary) -> None:
    added = {int(i): t for i, t in tokenizer.added_tokens_decoder.items() if not t.special}
    for i, token in added.items():
        if i in vocab.special_token_ids:  # e.g. an unk/pad the tokenizer lists as special
            continue
        assert vocab.token_bytes[i] == token.content.encode("utf-8")
        assert _encode(tokenizer, token.content) == [i]


def test_partial_utf8_tokens_are_exact(tokenizer_name: str, tokenizer: Any, vocab: Vocabulary) -> None:
    partial = [i for i, b in enumerate(vocab.token_bytes) if b and not _is_utf8(b)]
    assert len(partial) >= 64, "a byte-complete vocabulary has tokens for lone UTF-8 lead/continuation bytes"
    by_bytes: dict[bytes, int] = {}
    for i, b in enumerate(vocab.token_bytes):
        by_bytes.setdefault(b, i)
    for char in MULTIBYTE_CHARS:
        ids = [by_bytes[bytes([b])] for b in char.encode("utf-8")]
        assert all(not _is_utf8(vocab.token_bytes[i]) for i in ids)
        assert vocab.decode(ids) == char.encode("utf-8")
        assert _decode(tokenizer, ids) == char
        # Cut after each byte: the prefix is not UTF-8, the whole is.
        for cut in range(1, len(ids)):
            assert not _is_utf8(vocab.decode(ids[:cut]))


@pytest.mark.parametrize("text", ["𠀀", "🦩", "\U0001fae8", "emoji 🫨 alone"])
def test_rare_characters_split_across_tokens(tokenizer: Any, vocab: Vocabulary, tokenizer_name: str, text: str) -> None:
    ids = _encode(tokenizer, text)
    pieces = [vocab.token_bytes[i] for i in ids]
    assert b"".join(pieces) == _expected_bytes(text, DUMMY_PREFIX.get(tokenizer_name, "never"))


def test_some_emoji_is_split_into_partial_tokens(tokenizer: Any, vocab: Vocabulary) -> None:
    """At least one rare character comes out as several tokens that are not UTF-8 on their own."""
    for char in ["\U0001fae8", "𠀀", "🦩", "🎉"]:
        ids = _encode(tokenizer, char)
        partial = [i for i in ids if not _is_utf8(vocab.token_bytes[i])]
        if len(partial) >= 2:
            assert b"".join(vocab.token_bytes[i] for i in partial) == char.encode("utf-8")
            return
    pytest.fail("no test character was split across partial-UTF-8 tokens")


def _gpt2_byte_alphabet() -> dict[int, str]:
    """GPT-2's bytes_to_unicode, written out again independently of gramspec.vocab."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    extra = iter(range(256, 512))
    return {b: chr(b) if b in printable else chr(next(extra)) for b in range(256)}


def test_single_byte_tokens(tokenizer_name: str, tokenizer: Any, vocab: Vocabulary) -> None:
    if tokenizer_name in SPM_TOKENIZERS:  # byte fallback: <0x00>..<0xFF>
        for b in range(256):
            token_id = tokenizer.convert_tokens_to_ids(f"<0x{b:02X}>")
            assert tokenizer.convert_ids_to_tokens(token_id) == f"<0x{b:02X}>"
            assert vocab.token_bytes[token_id] == bytes([b])
        return
    # Byte-level: the piece for byte b is one character of GPT-2's alphabet. Some
    # vocabularies lack pieces for bytes their training data never had (falcon,
    # starcoder and SmolLM2 lack some control bytes and rare 4-byte lead bytes;
    # deepseek-coder lacks bytes that never occur in UTF-8).
    pieces = tokenizer.get_vocab()
    added = {int(i) for i in tokenizer.added_tokens_decoder}
    missing = []
    for b, char in _gpt2_byte_alphabet().items():
        token_id = pieces.get(char)
        if token_id is None or token_id in added:
            missing.append(b)
        else:
            assert vocab.token_bytes[token_id] == bytes([b])
    have = {t[0] for t in vocab.token_bytes if len(t) == 1}
    assert have == set(range(256)) - set(missing)
    assert len(missing) < 64
    assert not {0x20, 0x0A, 0x09, *range(ord("!"), ord("~") + 1)} & set(missing)


def test_special_tokens_have_no_bytes(tokenizer: Any, vocab: Vocabulary) -> None:
    special = {int(i) for i in tokenizer.all_special_ids}
    special |= {int(i) for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    assert special
    assert special <= vocab.special_token_ids
    assert vocab.special_token_ids == special | vocab.eos_token_ids
    for i in vocab.special_token_ids:
        assert vocab.token_bytes[i] == b""
    # Every other id of the tokenizer stands for some bytes.
    empty = [i for i, b in enumerate(vocab.token_bytes) if b == b"" and i not in vocab.special_token_ids]
    assert empty == []
    assert len(vocab) == vocab.size == len(tokenizer)


def test_eos_ids(tokenizer_name: str, tokenizer: Any, vocab: Vocabulary) -> None:
    assert tokenizer.eos_token_id == EOS_IDS[tokenizer_name]
    assert vocab.eos_token_ids == {EOS_IDS[tokenizer_name]}
    assert vocab.eos_token_ids <= vocab.special_token_ids


def test_explicit_eos_ids(tokenizer: Any, vocab: Vocabulary) -> None:
    word = _encode(tokenizer, "Hello")[-1]  # a plain text token made into an EOS
    explicit = Vocabulary.from_tokenizer(tokenizer, eos_token_ids=[tokenizer.eos_token_id, word])
    assert explicit.eos_token_ids == {tokenizer.eos_token_id, word}
    assert explicit.token_bytes[word] == b""
    assert word in explicit.special_token_ids
    assert explicit.fingerprint != vocab.fingerprint
    none = Vocabulary.from_tokenizer(tokenizer, eos_token_ids=[])
    assert none.eos_token_ids == frozenset()
    assert none.fingerprint != vocab.fingerprint


def test_eos_out_of_range_is_an_error(tokenizer: Any) -> None:
    n = len(tokenizer)
    for bad in (n, -1):
        with pytest.raises(VocabularyError, match=f"EOS id {bad} is outside the vocabulary of {n} ids"):
            Vocabulary.from_tokenizer(tokenizer, eos_token_ids=[bad])
    # Inside the model's larger vocabulary it is fine.
    padded = Vocabulary.from_tokenizer(tokenizer, vocab_size=n + 8, eos_token_ids=[n + 3])
    assert padded.eos_token_ids == {n + 3}


def test_model_vocab_size_pads_with_no_bytes(tokenizer: Any, vocab: Vocabulary) -> None:
    n = len(tokenizer)
    padded = Vocabulary.from_tokenizer(tokenizer, vocab_size=n + 64)
    assert padded.size == len(padded) == n + 64
    assert padded.token_bytes[:n] == vocab.token_bytes
    assert padded.token_bytes[n:] == (b"",) * 64
    assert padded.eos_token_ids == vocab.eos_token_ids
    assert padded.fingerprint != vocab.fingerprint
    # A smaller model size never drops tokenizer ids.
    assert Vocabulary.from_tokenizer(tokenizer, vocab_size=n - 1).token_bytes == vocab.token_bytes


def test_fingerprint_is_stable(tokenizer_name: str, tokenizer: Any, vocab: Vocabulary, vocab_for: Any) -> None:
    again = Vocabulary.from_tokenizer(tokenizer)
    assert again.fingerprint == vocab.fingerprint
    assert re.fullmatch(r"[0-9a-f]{32}", vocab.fingerprint)
    cached = vocab_for(tokenizer_name)  # the conftest's disk cache must give the same vocabulary
    assert cached.fingerprint == vocab.fingerprint
    assert cached.token_bytes == vocab.token_bytes
    assert cached.eos_token_ids == vocab.eos_token_ids
    assert cached.special_token_ids == vocab.special_token_ids


def test_fingerprints_differ_between_tokenizers(load_shared_tokenizer: Any) -> None:
    prints = {name: _fresh_vocab(name, load_shared_tokenizer).fingerprint for name in EOS_IDS if name != "smollm2"}
    assert len(set(prints.values())) == len(prints), prints


def _fresh_vocab(name: str, load: Any) -> Vocabulary:
    if name not in _fresh:
        _fresh[name] = Vocabulary.from_tokenizer(load(name))
    return _fresh[name]


# --- small in-memory tokenizers (no shared/ needed) --------------------------------------


def _tiny_tokenizer(kind: str) -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    trainer: Any
    corpus = ["hello world café 日本 🎉 hello hello wörld"] * 20
    if kind == "byte_level":
        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<eos>"]
        )
    elif kind == "sentencepiece":
        # Llama-2 style: byte-fallback BPE over "▁"-joined text, written out by hand.
        pieces = ["<unk>", *(f"<0x{b:02X}>" for b in range(256)), "▁", "h", "e", "l", "o", "▁h", "▁he", "ll", "▁hell"]
        merges = [("▁", "h"), ("▁h", "e"), ("l", "l"), ("▁he", "ll")]
        tk = Tokenizer(models.BPE(vocab={p: i for i, p in enumerate(pieces)}, merges=merges, byte_fallback=True))
        tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tk.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        )
        tok = PreTrainedTokenizerFast(tokenizer_object=tk)
        tok.add_special_tokens({"eos_token": "<eos>"})
        return tok
    else:
        tk = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tk.pre_tokenizer = pre_tokenizers.Whitespace()
        tk.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[UNK]", "<eos>"])
    tk.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>")


@pytest.mark.parametrize("text", ["hello world", "café 🎉 日本 wörld", "  x\t\n"])
def test_tiny_byte_level_tokenizer(text: str) -> None:
    tok = _tiny_tokenizer("byte_level")
    vocab = Vocabulary.from_tokenizer(tok)
    assert vocab.eos_token_ids == {tok.eos_token_id}
    assert vocab.token_bytes[tok.eos_token_id] == b""
    assert vocab.decode(_encode(tok, text)) == text.encode("utf-8")


def test_tiny_sentencepiece_tokenizer() -> None:
    tok = _tiny_tokenizer("sentencepiece")
    vocab = Vocabulary.from_tokenizer(tok)
    assert vocab.token_bytes[tok.convert_tokens_to_ids("▁hell")] == b" hell"
    assert vocab.token_bytes[tok.convert_tokens_to_ids("<0xE2>")] == b"\xe2"
    assert vocab.eos_token_ids == {tok.eos_token_id} and vocab.token_bytes[tok.eos_token_id] == b""
    ids = _encode(tok, "hello 🎉 ☃")
    assert "<0xF0>" in tok.convert_ids_to_tokens(ids)
    assert vocab.decode(ids) == " hello 🎉 ☃".encode()
    assert _decode(tok, ids) == "hello 🎉 ☃"


def test_unsupported_tokenizer_is_an_error() -> None:
    with pytest.raises(VocabularyError, match="cannot map tokens to exact bytes"):
        Vocabulary.from_tokenizer(_tiny_tokenizer("wordpiece"))


def test_from_token_bytes() -> None:
    tokens = [b"a", b"\xc3", b"\xa9", b"<eos>", b"<s>"]
    vocab = Vocabulary.from_token_bytes(tokens, eos_token_ids=[3], special_token_ids=[4])
    assert vocab.token_bytes == (b"a", b"\xc3", b"\xa9", b"", b"")
    assert vocab.eos_token_ids == {3}
    assert vocab.special_token_ids == {3, 4}
    assert vocab.decode([0, 1, 2, 3]) == "aé".encode()
    same = Vocabulary.from_token_bytes([b"a", b"\xc3", b"\xa9", b"", b""], eos_token_ids=[3])
    other_eos = Vocabulary.from_token_bytes([b"a", b"\xc3", b"\xa9", b"", b""], eos_token_ids=[4])
    other_bytes = Vocabulary.from_token_bytes([b"a", b"\xc3\xa9", b"", b"", b""], eos_token_ids=[3])
    assert vocab.fingerprint == same.fingerprint
    assert vocab.fingerprint != other_eos.fingerprint
    assert vocab.fingerprint != other_bytes.fingerprint
    assert "size=5" in repr(vocab) and vocab.fingerprint in repr(vocab)
    with pytest.raises(VocabularyError, match="EOS id 5 is outside the vocabulary of 5 ids"):
        Vocabulary.from_token_bytes([b"a"] * 5, eos_token_ids=[5])
    with pytest.raises(ValueError):  # VocabularyError is a ValueError too
        Vocabulary.from_token_bytes([b"a"], eos_token_ids=[-1])
