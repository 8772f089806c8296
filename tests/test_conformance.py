"""Conformance of compile_json_schema, held to the ratchet files in tests/ratchets/.

* The JSON Schema Test Suite (draft2020-12 and draft7, optional/ left out),
  byte-level: every group's status must be at least as good as its ratchet
  entry (see gramspec.evaluation.conformance for what counts as worse);
* a fixed MaskBench sample (the files listed in maskbench_sample.json);
* a token-level cross-check: a sample of instances fed token by token through
  a real vocabulary's matcher must get the byte-level verdict.

The runner itself is tested on hand-made cases with fake compiled grammars, so
that a bug in the classifier cannot hide a regression.

An improvement prints a note (and a warning) saying to record it with
``python -m gramspec.evaluation.conformance --update-ratchets``.
"""

from __future__ import annotations

import functools
import json
import random
import time
import warnings
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gramspec import LimitError, SchemaError, UnsupportedSchemaError, Vocabulary
from gramspec.evaluation import conformance as c
from gramspec.evaluation.conformance import (
    CheckOptions,
    Verdict,
    check_schema,
    classify,
    compare_ratchet,
    reorder_for_schema,
    serialize,
)

RATCHETS = Path(__file__).resolve().parent / "ratchets"
BYTE_VOCAB = Vocabulary.from_token_bytes([bytes([b]) for b in range(256)] + [b""], eos_token_ids=[256])


def keys(value: Any) -> Any:
    """The key order of every object in ``value``, as nested lists."""
    if isinstance(value, dict):
        return [(k, keys(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [keys(v) for v in value]
    return None


# --------------------------------------------------------------------------- reorder_for_schema


def test_reorder_follows_properties_and_keeps_unknown_keys_after_in_their_order() -> None:
    schema = {"properties": {"a": {}, "b": {}, "c": {}}}
    instance = {"z": 1, "c": 2, "y": 3, "a": 4}
    out = reorder_for_schema(instance, schema)
    assert list(out) == ["a", "c", "z", "y"]
    assert out == instance
    assert list(instance) == ["z", "c", "y", "a"]  # input untouched


def test_reorder_is_idempotent_and_leaves_scalars_and_boolean_schemas_alone() -> None:
    schema = {"properties": {"b": {"properties": {"y": {}, "x": {}}}, "a": {}}}
    instance = {"a": 1, "b": {"x": 1, "y": 2}}
    once = reorder_for_schema(instance, schema)
    assert keys(once) == [("b", [("y", None), ("x", None)]), ("a", None)]
    assert keys(reorder_for_schema(once, schema)) == keys(once)
    assert reorder_for_schema(5, schema) == 5
    assert list(reorder_for_schema({"b": 1, "a": 2}, True)) == ["b", "a"]
    assert list(reorder_for_schema({"b": 1, "a": 2}, False)) == ["b", "a"]


@pytest.mark.parametrize("where", ["$defs", "definitions"])
def test_reorder_follows_refs_recursively(where: str) -> None:
    schema = {
        where: {"node": {"properties": {"value": {}, "children": {"items": {"$ref": f"#/{where}/node"}}}}},
        "$ref": f"#/{where}/node",
    }
    tree = {"children": [{"children": [{"children": [], "value": 3}], "value": 2}], "value": 1}
    out = reorder_for_schema(tree, schema)
    assert keys(out) == [
        ("value", None),
        ("children", [[("value", None), ("children", [[("value", None), ("children", [])]])]]),
    ]


def test_reorder_resolves_escaped_and_percent_encoded_pointers_and_anchors() -> None:
    schema = {
        "$defs": {"a/b": {"properties": {"y": {}, "x": {}}}, "c%d": {"properties": {"q": {}, "p": {}}}},
        "properties": {
            "one": {"$ref": "#/$defs/a~1b"},
            "two": {"$ref": "#/$defs/c%25d"},
            "three": {"$ref": "#thing"},
            "four": {"$ref": "#/properties/one"},
        },
        "definitions": {"t": {"$anchor": "thing", "properties": {"n": {}, "m": {}}}},
    }
    instance = {"four": {"x": 1, "y": 2}, "three": {"m": 1, "n": 2}, "two": {"p": 1, "q": 2}, "one": {"x": 1, "y": 2}}
    out = reorder_for_schema(instance, schema)
    assert keys(out) == [
        ("one", [("y", None), ("x", None)]),
        ("two", [("q", None), ("p", None)]),
        ("three", [("n", None), ("m", None)]),
        ("four", [("y", None), ("x", None)]),
    ]


def test_reorder_leaves_unresolvable_refs_alone() -> None:
    schema = {"properties": {"a": {"$ref": "other.json#/x"}, "b": {"$ref": "#/nowhere"}}}
    instance = {"b": {"z": 1, "y": 2}, "a": {"z": 1, "y": 2}}
    assert keys(reorder_for_schema(instance, schema)) == [("a", [("z", None), ("y", None)]), ("b", [("z", None), ("y", None)])]


def test_reorder_ref_cycles_terminate() -> None:
    schema = {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}
    assert reorder_for_schema({"x": 1}, schema) == {"x": 1}


def test_reorder_merges_own_ref_and_allof_properties_in_that_order() -> None:
    schema = {
        "$defs": {"base": {"properties": {"id": {}, "kind": {}}}},
        "properties": {"name": {}},
        "allOf": [{"$ref": "#/$defs/base"}, {"properties": {"extra": {"properties": {"j": {}, "i": {}}}}}],
    }
    instance = {"extra": {"i": 1, "j": 2}, "kind": "k", "other": 0, "id": 1, "name": "n"}
    out = reorder_for_schema(instance, schema)
    assert keys(out) == [("name", None), ("id", None), ("kind", None), ("extra", [("j", None), ("i", None)]), ("other", None)]


def test_reorder_picks_the_anyof_branch_that_covers_the_keys() -> None:
    schema = {
        "anyOf": [
            {"properties": {"b": {}, "a": {}}, "required": ["b"]},
            {"properties": {"c": {}, "a": {}, "d": {}}},
        ]
    }
    assert list(reorder_for_schema({"a": 1, "b": 2}, schema)) == ["b", "a"]
    assert list(reorder_for_schema({"a": 1, "d": 2, "c": 3}, schema)) == ["c", "a", "d"]
    # 'a' alone: the first branch lacks its required 'b', so the second fits
    assert list(reorder_for_schema({"d": 1, "a": 2}, {"oneOf": schema["anyOf"]})) == ["a", "d"]


def test_reorder_uses_const_discriminators_and_types_to_pick_a_branch() -> None:
    schema = {
        "oneOf": [
            {"type": "array"},
            {"properties": {"kind": {"const": "circle"}, "r": {}, "x": {}}},
            {"properties": {"kind": {"enum": ["square"]}, "x": {}, "side": {}}},
        ]
    }
    assert list(reorder_for_schema({"x": 1, "side": 2, "kind": "square"}, schema)) == ["kind", "x", "side"]
    assert list(reorder_for_schema({"x": 1, "r": 2, "kind": "circle"}, schema)) == ["kind", "r", "x"]


def test_reorder_if_then_else_follows_the_branch_taken() -> None:
    schema = {
        "properties": {"t": {}},
        "if": {"properties": {"t": {"const": "a"}}},
        "then": {"properties": {"b": {}, "a": {}}},
        "else": {"properties": {"a": {}, "b": {}}},
    }
    assert list(reorder_for_schema({"a": 1, "b": 2, "t": "a"}, schema)) == ["t", "b", "a"]
    assert list(reorder_for_schema({"b": 1, "a": 2, "t": "z"}, schema)) == ["t", "a", "b"]


def test_reorder_const_and_enum_objects_take_the_schema_key_order() -> None:
    schema = {"properties": {"c": {"const": {"y": 1, "x": [{"q": 1, "p": 2}]}}, "e": {"enum": [1, {"n": 1, "m": 2}]}}}
    instance = {"e": {"m": 2, "n": 1}, "c": {"x": [{"p": 2, "q": 1}], "y": 1}}
    out = reorder_for_schema(instance, schema)
    assert serialize(out) == b'{"c":{"y":1,"x":[{"q":1,"p":2}]},"e":{"n":1,"m":2}}'
    # numbers are kept as the instance writes them: 1.0 stays 1.0
    assert serialize(reorder_for_schema({"a": 1.0}, {"const": {"a": 1}})) == b'{"a":1.0}'


def test_reorder_arrays_prefixitems_items_and_draft7_additionalitems() -> None:
    inner = {"properties": {"b": {}, "a": {}}}
    other = {"properties": {"d": {}, "c": {}}}
    row = [{"a": 1, "b": 2}, {"c": 1, "d": 2}, {"c": 3, "d": 4}]
    expect = [[("b", None), ("a", None)], [("d", None), ("c", None)], [("d", None), ("c", None)]]
    assert keys(reorder_for_schema(row, {"prefixItems": [inner], "items": other})) == expect
    assert keys(reorder_for_schema(row, {"items": [inner], "additionalItems": other})) == expect
    assert keys(reorder_for_schema(row, {"items": other}))[0] == [("a", None), ("b", None)]


def test_reorder_values_by_pattern_and_additional_properties() -> None:
    schema = {
        "properties": {"fixed": {}},
        "patternProperties": {"^x-": {"properties": {"b": {}, "a": {}}}},
        "additionalProperties": {"properties": {"d": {}, "c": {}}},
    }
    instance = {"other": {"c": 1, "d": 2}, "x-1": {"a": 1, "b": 2}, "fixed": {"z": 1, "y": 2}}
    assert keys(reorder_for_schema(instance, schema)) == [
        ("fixed", [("z", None), ("y", None)]),
        ("other", [("d", None), ("c", None)]),
        ("x-1", [("b", None), ("a", None)]),
    ]


def test_reorder_uses_root_for_refs_inside_a_subschema() -> None:
    root = {"$defs": {"p": {"properties": {"b": {}, "a": {}}}}, "properties": {"v": {"$ref": "#/$defs/p"}}}
    assert list(reorder_for_schema({"a": 1, "b": 2}, root["properties"]["v"], root)) == ["b", "a"]


def _compiled_accepts(schema: Any, instance: Any) -> bool:
    from gramspec.grammars.json_schema import compile_json_schema

    return compile_json_schema(schema, BYTE_VOCAB).accepts_bytes(serialize(reorder_for_schema(instance, schema)))


def test_reorder_puts_merged_allof_properties_before_branch_properties() -> None:
    # the compiler merges allOf parts at once, then each anyOf branch with the merge
    # (MaskBench Github_medium/o60846: 'platforms' after 'devices' was rejected)
    schema = {"allOf": [{"properties": {"a": {}}}, {"anyOf": [{"properties": {"b": {}}}, {"properties": {"c": {}}}]},
                        {"properties": {"d": {}}}]}  # fmt: skip
    assert list(reorder_for_schema({"a": 1, "b": 1, "d": 1}, schema)) == ["a", "d", "b"]
    assert list(reorder_for_schema({"c": 1, "d": 1, "a": 1}, schema)) == ["a", "d", "c"]
    nested = {"$defs": {"base": {"properties": {"x": {}}, "anyOf": [{"properties": {"y": {}}}]}},
              "allOf": [{"$ref": "#/$defs/base"}], "properties": {"z": {}}}  # fmt: skip
    assert list(reorder_for_schema({"y": 1, "x": 1, "z": 1}, nested)) == ["z", "x", "y"]
    for instance in ({"a": 1, "b": 1, "d": 1}, {"b": 1, "d": 1}, {"a": 1, "c": 1, "d": 1, "e": 1}):
        assert _compiled_accepts(schema, instance), instance
    assert _compiled_accepts(nested, {"y": 1, "x": 1, "z": 1})


def test_reorder_puts_required_then_dependent_names_after_the_listed_ones() -> None:
    # listed properties, required names not listed, names dependentRequired mentions
    # (sorted), then other keys (MaskBench Github_hard/o12335, o29388)
    schema = {"properties": {"a": {}}, "required": ["c"], "dependentRequired": {"a": ["e", "d"]}}
    instance = {"x": 1, "d": 1, "c": 1, "e": 1, "a": 1}
    assert list(reorder_for_schema(instance, schema)) == ["a", "c", "d", "e", "x"]
    assert _compiled_accepts(schema, instance)
    draft7 = {"$schema": "http://json-schema.org/draft-07/schema#", "dependencies": {"a": ["b"]},
              "oneOf": [{"$ref": "#/definitions/w"}], "definitions": {"w": {"required": ["k"]}}}  # fmt: skip
    assert list(reorder_for_schema({"z": 1, "k": 1, "b": 1, "a": 1}, draft7)) == ["k", "a", "b", "z"]
    assert _compiled_accepts(draft7, {"z": 1, "k": 1, "b": 1, "a": 1})
    # the compiler's branch for a dependent schema requires the trigger, so it is written there
    dependent = {"properties": {"p": {}}, "dependentSchemas": {"t": {"properties": {"q": {}}}}}
    assert list(reorder_for_schema({"z": 1, "t": 1, "q": 1, "p": 1}, dependent)) == ["p", "q", "t", "z"]
    assert _compiled_accepts(dependent, {"z": 1, "t": 1, "q": 1, "p": 1})


def test_reorder_prefers_a_branch_the_instance_validates_against() -> None:
    # the second branch lists both keys but 'port' fails its type there; the instance is
    # valid by the first, which lists only 'level' (MaskBench Github_medium/o71550)
    schema = {"anyOf": [{"properties": {"level": {}}}, {"properties": {"port": {"type": "string"}, "level": {}}}]}
    assert list(reorder_for_schema({"port": 8080, "level": "c"}, schema)) == ["level", "port"]
    assert list(reorder_for_schema({"level": "c", "port": "p"}, schema)) == ["port", "level"]
    assert _compiled_accepts(schema, {"port": 8080, "level": "c"})


def test_reorder_passes_over_keywords_the_draft_does_not_apply() -> None:
    # draft 4 has no if/then/else, const, dependentSchemas (dependencies: applied in every draft)
    schema = {"$schema": "http://json-schema.org/draft-04/schema#", "properties": {"a": {}},
              "if": {"properties": {"b": {}}}, "then": {"properties": {"c": {}}}, "dependentSchemas": {"a": {"properties": {"d": {}}}},
              "items": {"const": {"y": 1, "x": 2}}}  # fmt: skip
    assert list(reorder_for_schema({"d": 1, "c": 1, "b": 1, "a": 1}, schema)) == ["a", "d", "c", "b"]
    assert serialize(reorder_for_schema([{"x": 2, "y": 1}], schema)) == b'[{"x":2,"y":1}]'
    assert _compiled_accepts(schema, {"d": 1, "c": 1, "b": 1, "a": 1})
    later = {"$schema": "http://json-schema.org/draft-07/schema#", "properties": {"a": {}},
             "dependentSchemas": {"a": {"properties": {"d": {}}}}, "dependentRequired": {"b": ["c"]}}  # fmt: skip
    assert list(reorder_for_schema({"d": 1, "b": 1, "a": 1}, later)) == ["a", "d", "b"]
    assert _compiled_accepts(later, {"d": 1, "b": 1, "a": 1})


def test_serialize_is_compact_utf8_and_survives_lone_surrogates() -> None:
    assert serialize({"a": [1, 2.5, "é", None, True]}) == '{"a":[1,2.5,"é",null,true]}'.encode()
    assert serialize("\ud800") == b'"\\ud800"'


# --------------------------------------------------------------------------- classification with fake grammars


class FakeGrammar:
    """Accepts what ``accept(bytes)`` says; its matcher works on BYTE_VOCAB."""

    def __init__(self, accept: Any, token_accept: Any = None) -> None:
        self.accept = accept
        self.token_accept = token_accept or accept
        self.vocab = BYTE_VOCAB

    def accepts_bytes(self, data: bytes) -> bool:
        return bool(self.accept(data))

    def matcher(self) -> FakeMatcher:
        return FakeMatcher(self)


class FakeMatcher:
    def __init__(self, grammar: FakeGrammar) -> None:
        self.grammar = grammar
        self.data = b""

    def advance(self, token: int) -> bool:
        if token == 256:
            return bool(self.grammar.token_accept(self.data))
        self.data += bytes([token])
        return True

    def is_accepting(self) -> bool:
        return bool(self.grammar.token_accept(self.data))


def fake_compiler(accept: Any, **extra: Any) -> Any:
    def compile_fn(schema: Any, vocab: Any, *, whitespace: str = "compact", strict: bool = True) -> FakeGrammar:
        return FakeGrammar(lambda data: accept(schema, data), **extra)

    return compile_fn


def raising(error: BaseException) -> Any:
    def compile_fn(schema: Any, vocab: Any, **options: Any) -> Any:
        raise error

    return compile_fn


def validates(schema: Any, data: bytes) -> bool:
    return jsonschema.Draft202012Validator(schema).is_valid(json.loads(data))


TESTS = [
    {"data": {"b": 1, "a": "x"}, "valid": True, "description": "good"},
    {"data": {"a": 1}, "valid": False, "description": "a is not a string"},
    {"data": {"a": "y", "b": 2}, "valid": True, "description": "also good"},
    {"data": [], "valid": False, "description": "not an object"},
]
SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}, "b": {}}}
OPTIONS = CheckOptions(token_sample=4, time_limit=10)


@pytest.mark.parametrize(
    ("verdicts", "status"),
    [
        ([], "passed"),
        ([(True, True), (False, False)], "passed"),
        ([(True, False), (False, False)], "over-constrained"),
        ([(True, True), (False, True)], "under-constrained"),
        ([(True, False), (False, True)], "over-and-under-constrained"),
        ([(False, True)], "under-constrained"),
    ],
)
def test_classify(verdicts: list[tuple[bool, bool]], status: str) -> None:
    assert classify(Verdict(valid, accepted) for valid, accepted in verdicts) == status


def test_check_schema_exact_grammar_passes_and_sees_the_reordered_compact_text() -> None:
    seen: list[bytes] = []

    def accept(schema: Any, data: bytes) -> bool:
        seen.append(data)
        return validates(schema, data)

    compile_fn = fake_compiler(accept, token_accept=lambda data: validates(SCHEMA, data))
    record = check_schema(SCHEMA, TESTS, BYTE_VOCAB, compile_fn, OPTIONS, "k")
    assert record["status"] == "passed", record
    assert (record["valid_total"], record["valid_accepted"], record["invalid_total"], record["invalid_accepted"]) == (2, 2, 2, 0)
    assert seen == [b'{"a":"x","b":1}', b'{"a":1}', b'{"a":"y","b":2}', b"[]"]
    assert record["token_checked"] == 4 and record["token_mismatches"] == []


@pytest.mark.parametrize(
    ("accept", "status", "wrong"),
    [
        (lambda s, d: True, "under-constrained", [1, 3]),
        (lambda s, d: False, "over-constrained", [0, 2]),
        (lambda s, d: not validates(s, d), "over-and-under-constrained", [0, 1, 2, 3]),
        # key order matters to the grammar: a reorder bug would show as over-constrained
        (lambda s, d: validates(s, d) and d.find(b'"a"') <= max(d.find(b'"b"'), 0), "passed", []),
    ],
)
def test_check_schema_classifies_wrong_grammars(accept: Any, status: str, wrong: list[int]) -> None:
    record = check_schema(SCHEMA, TESTS, BYTE_VOCAB, fake_compiler(accept), OPTIONS, "k")
    assert record["status"] == status
    assert [w["index"] for w in record["wrong"]] == wrong


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (UnsupportedSchemaError("keyword 'uniqueItems' cannot be enforced exactly", pointer="/items/uniqueItems"), "unsupported"),
        (SchemaError("minLength must be a non-negative integer", pointer="/minLength"), "schema-error"),
        (LimitError("automaton needs more than 10 states"), "limit"),
        (RecursionError("boom"), "crash"),
        (KeyError("x"), "crash"),
    ],
)
def test_check_schema_classifies_compile_errors(error: BaseException, status: str) -> None:
    record = check_schema(SCHEMA, TESTS, BYTE_VOCAB, raising(error), OPTIONS, "k")
    assert record["status"] == status
    assert "valid_accepted" not in record
    if status == "unsupported":
        assert record["keyword"] == "uniqueItems" and record["pointer"] == "/items/uniqueItems"


def test_check_schema_matching_crash_and_timeout() -> None:
    def boom(schema: Any, data: bytes) -> bool:
        raise IndexError("matcher bug")

    assert check_schema(SCHEMA, TESTS, BYTE_VOCAB, fake_compiler(boom), OPTIONS, "k")["status"] == "crash"

    def slow(schema: Any, vocab: Any, **options: Any) -> Any:
        time.sleep(5)

    def swallowing(schema: Any, vocab: Any, **options: Any) -> Any:
        try:
            time.sleep(5)
        except Exception:  # noqa: BLE001 - a compiler's broad except must not hide the time limit
            return FakeGrammar(lambda data: True)

    for compile_fn in (slow, swallowing):
        started = time.perf_counter()
        record = check_schema(SCHEMA, TESTS, BYTE_VOCAB, compile_fn, CheckOptions(time_limit=0.2), "k")
        assert record["status"] == "timeout"
        assert time.perf_counter() - started < 2


def test_check_schema_reports_token_level_disagreements() -> None:
    compile_fn = fake_compiler(validates, token_accept=lambda data: False)
    record = check_schema(SCHEMA, TESTS, BYTE_VOCAB, compile_fn, OPTIONS, "k")
    assert record["status"] == "passed"  # the byte-level verdict decides the status...
    assert sorted(m["index"] for m in record["token_mismatches"]) == [0, 2]  # ...and mismatches are listed


@pytest.mark.parametrize(
    ("error", "keyword"),
    [
        (UnsupportedSchemaError("x", pointer="/properties/a~1b/uniqueItems"), "uniqueItems"),
        (UnsupportedSchemaError("remote reference 'a.json' is not supported", pointer="/items/$ref"), "$ref"),
        (UnsupportedSchemaError("keyword 'not' cannot be enforced", pointer="/properties/not/x"), "not"),
        (UnsupportedSchemaError("'contains' with 'minContains' is not supported", pointer=""), "contains"),
        (UnsupportedSchemaError("cannot do this", pointer="/a/b"), "?"),
    ],
)
def test_unsupported_keyword(error: UnsupportedSchemaError, keyword: str) -> None:
    assert c.unsupported_keyword(error) == keyword


def test_tokenize_covers_the_bytes_whatever_the_rng() -> None:
    vocab = Vocabulary.from_token_bytes([bytes([b]) for b in range(256)] + [b'{"', b'":', b"abc", b"ab", b""], eos_token_ids=[260])
    data = b'{"abc":"ab"}'
    assert vocab.decode(c.tokenize(vocab, data) or []) == data
    assert c.tokenize(vocab, data)[:2] == [256, 258]  # longest first
    rng = random.Random(1)
    for _ in range(20):
        assert vocab.decode(c.tokenize(vocab, data, rng) or []) == data
    no_bytes = Vocabulary.from_token_bytes([b"a", b"bc", b""], eos_token_ids=[2])
    assert c.tokenize(no_bytes, b"abcb") is None
    assert no_bytes.decode(c.tokenize(no_bytes, b"abca") or []) == b"abca"


# --------------------------------------------------------------------------- the runners on a tiny suite


def write_suite(root: Path) -> Path:
    draft = root / "draft2020-12"
    (draft / "optional").mkdir(parents=True)
    groups = [
        {"description": "strings", "schema": {"type": "string"}, "tests": [
            {"description": "s", "data": "x", "valid": True}, {"description": "n", "data": 1, "valid": False}]},
        {"description": "objects", "schema": SCHEMA, "tests": TESTS},
    ]  # fmt: skip
    (draft / "type.json").write_text(json.dumps(groups))
    (draft / "optional" / "extra.json").write_text(json.dumps(groups[:1]))
    return root


def test_run_test_suite_counts_per_file_and_leaves_optional_out(tmp_path: Path) -> None:
    root = write_suite(tmp_path)

    def picky(schema: Any, data: bytes) -> bool:  # rejects every object: over-constrained on group 1
        return validates(schema, data) and not data.startswith(b"{")

    result = c.run_test_suite("draft2020-12", BYTE_VOCAB, root=root, compile_fn=fake_compiler(picky), options=OPTIONS)
    assert {k: r["status"] for k, r in result["groups"].items()} == {"type.json#0": "passed", "type.json#1": "over-constrained"}
    assert result["per_file"] == {"type.json": {"groups": 2, "passed": 1, "over": 1, "under": 0, "unsupported": 0, "error": 0}}
    assert result["totals"]["valid_accepted"] == 1 and result["totals"]["valid_total"] == 3
    with_optional = c.run_test_suite(
        "draft2020-12", BYTE_VOCAB, root=root, include_optional=True, compile_fn=fake_compiler(picky), options=OPTIONS
    )
    assert "optional/extra.json#0" in with_optional["groups"]


def test_maskbench_runner_cross_checks_labels(tmp_path: Path) -> None:
    (tmp_path / "Sub").mkdir()
    doc = {
        "schema": {"type": "object", "properties": {"d": {"type": "string", "format": "email"}}},
        "tests": [
            {"description": "ok", "valid": True, "data": {"d": "a@b.co"}},
            {"description": "mislabelled", "valid": True, "data": {"d": "not an email"}},
            {"description": "bad", "valid": False, "data": {"d": 3}},
        ],
    }
    (tmp_path / "Sub" / "one.json").write_text(json.dumps(doc))
    (tmp_path / "Sub" / "two.json").write_text(json.dumps({**doc, "schema": {"not": {}}, "tests": []}))

    def compile_fn(schema: Any, vocab: Any, **options: Any) -> Any:
        if "not" in schema:
            raise UnsupportedSchemaError("keyword 'not' cannot be enforced exactly", pointer="/not")
        return FakeGrammar(lambda data: True)

    result = c.run_maskbench(BYTE_VOCAB, root=tmp_path, compile_fn=compile_fn, options=OPTIONS)
    one = result["schemas"]["Sub/one.json"]
    assert one["status"] == "under-constrained" and one["invalid_accepted"] == 1
    assert [d["index"] for d in one["label_disagreements"]] == [1]
    totals = result["totals"]
    assert (totals["schemas"], totals["compiled"], totals["unsupported"], totals["coverage"]) == (2, 1, 1, 0.5)
    assert totals["label_disagreements"] == 1 and totals["compile_p50_ms"] is not None
    assert c.top_unsupported([result]) == [("not", 1)]
    assert "Sub" in c.format_report(result)


def test_sample_selection_is_seeded_and_leaves_out_slow_schemas() -> None:
    records = {f"S/{i}.json": {"status": "passed", "elapsed_s": 0.1 * i} for i in range(10)}
    order = [f"S/{i}.json" for i in (9, 1, 5, 2, 0, 7)]
    assert c.select_sample(records, order, per_subset=3, max_seconds=0.55) == ["S/1.json", "S/2.json", "S/5.json"]
    records["S/1.json"]["status"] = "timeout"
    assert c.select_sample(records, order, per_subset=3, max_seconds=0.55) == ["S/0.json", "S/2.json", "S/5.json"]


# --------------------------------------------------------------------------- ratchet comparison


def suite_result(statuses: dict[str, str]) -> dict[str, Any]:
    groups = {k: {"status": s, "file": k.split("#")[0]} for k, s in statuses.items()}
    return {"kind": "test-suite", "draft": "d", "groups": groups, "per_file": c._per_file(groups), "totals": c._totals(groups.values())}


@pytest.mark.parametrize(
    ("old", "new", "regression", "improvement"),
    [
        ("passed", "passed", False, False),
        ("passed", "over-constrained", True, False),
        ("passed", "unsupported", True, False),
        ("over-constrained", "under-constrained", True, False),
        ("over-constrained", "over-and-under-constrained", True, False),
        ("over-constrained", "unsupported", True, False),  # fewer compiled
        ("unsupported", "under-constrained", True, False),  # compiling into wrong answers is worse
        ("under-constrained", "unsupported", False, True),  # refusing beats accepting invalid input
        ("under-constrained", "passed", False, True),
        ("unsupported", "over-constrained", False, True),
        ("unsupported", "passed", False, True),
        ("schema-error", "unsupported", False, False),
        ("over-and-under-constrained", "over-constrained", False, True),
    ],
)
def test_compare_statuses(old: str, new: str, regression: bool, improvement: bool) -> None:
    expected = c.ratchet_payload(suite_result({"f.json#0": old, "f.json#1": "passed"}))
    comparison = compare_ratchet(expected, suite_result({"f.json#0": new, "f.json#1": "passed"}))
    assert bool(comparison.regressions) == regression, comparison.message("t")
    assert bool(comparison.improvements) == improvement, comparison.message("t")
    if regression:
        assert "f.json#0" in comparison.message("t") and "regression" in comparison.message("t")
    if improvement:
        assert c.UPDATE_COMMAND in comparison.message("t")


def test_compare_maskbench_counts(tmp_path: Path) -> None:
    def result(invalid_accepted: int, valid_accepted: int, status: str = "under-constrained") -> dict[str, Any]:
        record = {"status": status, "subset": "S", "compile_s": 0.01, "valid_total": 2, "valid_accepted": valid_accepted,
                  "invalid_total": 3, "invalid_accepted": invalid_accepted}  # fmt: skip
        return c.maskbench_summary({"S/a.json": record}, CheckOptions(), 0.0)

    path = tmp_path / "r.json"
    c.write_ratchet(path, result(1, 2))
    expected = c.read_ratchet(path)
    assert compare_ratchet(expected, result(1, 2)).message("t") == ""
    worse = compare_ratchet(expected, result(2, 2))
    assert worse.regressions == ["S/a.json: invalid instances accepted 1 -> 2"]
    assert compare_ratchet(expected, result(1, 1)).regressions == ["S/a.json: valid instances accepted 2 -> 1"]
    better = compare_ratchet(expected, result(0, 2, "passed"))
    assert better.ok and len(better.improvements) == 2


def test_ratchet_round_trip_and_notes_for_new_groups(tmp_path: Path) -> None:
    path = tmp_path / "suite.json"
    c.write_ratchet(path, suite_result({"f.json#0": "passed"}))
    expected = c.read_ratchet(path)
    assert expected["groups"] == {"f.json#0": "passed"} and expected["update_with"] == c.UPDATE_COMMAND
    comparison = compare_ratchet(expected, suite_result({"f.json#0": "passed", "f.json#1": "unsupported"}))
    assert comparison.ok and any("new group" in n for n in comparison.notes)


# --------------------------------------------------------------------------- the real compiler against the ratchets


#: Compile-time budget per schema in the ratchet runs: the ratchets track exactness, not
#: speed (benchmarks do), and a pathological sample schema (Handwritten/allany22, ~26 s on
#: one core) must not flip to "limit" on a busy machine; the per-schema time limit (compile
#: and matching) is twice that.
RATCHET_SECONDS = 60


@pytest.fixture(scope="module")
def compile_json_schema() -> Any:
    try:
        compile_fn = c.default_compile()
    except ImportError as error:
        pytest.skip(f"gramspec.grammars.json_schema.compile_json_schema is not available: {error}")
    return functools.partial(compile_fn, max_seconds=RATCHET_SECONDS)


@pytest.fixture(scope="module")
def llama_bpe(vocab_for: Any) -> Any:
    return vocab_for("llama-bpe")


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not found (shared/ material, see tests/conftest.py)")
    return path


def check_against_ratchet(name: str, results: dict[str, Any]) -> None:
    path = RATCHETS / (f"test_suite_{name}.json" if name in c.DRAFTS else f"{name}.json")
    if not path.is_file():
        pytest.fail(f"{path} is missing; create it with {c.UPDATE_COMMAND}")
    comparison = compare_ratchet(c.read_ratchet(path), results)
    message = comparison.message(path.name)
    if comparison.improvements:
        print(message)
        warnings.warn(f"{path.name}: {len(comparison.improvements)} improvement(s); record them with {c.UPDATE_COMMAND}", stacklevel=2)
    assert comparison.ok, message


_RUNS: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="module")
def suite_run(compile_json_schema: Any, llama_bpe: Any) -> Any:
    def run(draft: str) -> dict[str, Any]:
        if draft not in _RUNS:
            require(c.suite_dir() / draft)
            options = CheckOptions(token_sample=1, time_limit=2 * RATCHET_SECONDS)
            _RUNS[draft] = c.run_test_suite(draft, llama_bpe, compile_fn=compile_json_schema, options=options)
        return _RUNS[draft]

    return run


@pytest.fixture(scope="module")
def maskbench_run(compile_json_schema: Any, llama_bpe: Any) -> dict[str, Any]:
    require(c.maskbench_dir())
    path = RATCHETS / "maskbench_sample.json"
    if not path.is_file():
        pytest.fail(f"{path} is missing; create it with {c.UPDATE_COMMAND}")
    files = sorted(c.read_ratchet(path)["schemas"])
    options = CheckOptions(token_sample=1, time_limit=2 * RATCHET_SECONDS)
    return c.run_maskbench(llama_bpe, files=files, compile_fn=compile_json_schema, options=options)


@pytest.mark.parametrize("draft", c.DRAFTS)
def test_json_schema_test_suite_ratchet(draft: str, suite_run: Any) -> None:
    results = suite_run(draft)
    print(c.format_report(results, cases=10))
    check_against_ratchet(draft, results)


def test_maskbench_sample_ratchet(maskbench_run: dict[str, Any]) -> None:
    print(c.format_report(maskbench_run, cases=10))
    check_against_ratchet("maskbench_sample", maskbench_run)


@pytest.mark.parametrize("draft", c.DRAFTS)
def test_token_level_agrees_with_bytes_on_the_suite(draft: str, suite_run: Any) -> None:
    results = suite_run(draft)
    mismatches = {k: r["token_mismatches"] for k, r in results["groups"].items() if r.get("token_mismatches")}
    assert results["totals"]["token_checked"] > 100
    assert not mismatches, f"token-by-token matching disagrees with accepts_bytes: {mismatches}"


@pytest.mark.model
def test_token_level_agrees_with_bytes_with_smollm2(compile_json_schema: Any, vocab_for: Any) -> None:
    """The Test Suite token by token through SmolLM2's vocabulary (the Llama-3 one runs above)."""
    require(c.suite_dir() / "draft2020-12")
    options = CheckOptions(token_sample=1, time_limit=2 * RATCHET_SECONDS)
    results = c.run_test_suite("draft2020-12", vocab_for("smollm2"), compile_fn=compile_json_schema, options=options)
    mismatches = {k: r["token_mismatches"] for k, r in results["groups"].items() if r.get("token_mismatches")}
    assert results["totals"]["token_checked"] > 100
    assert not mismatches, f"token-by-token matching disagrees with accepts_bytes: {mismatches}"
    assert results["totals"]["invalid_accepted"] == 0


def test_token_level_agrees_with_bytes_on_maskbench(maskbench_run: dict[str, Any]) -> None:
    mismatches = {k: r["token_mismatches"] for k, r in maskbench_run["schemas"].items() if r.get("token_mismatches")}
    assert maskbench_run["totals"]["token_checked"] > 20
    assert not mismatches, f"token-by-token matching disagrees with accepts_bytes: {mismatches}"


def test_suite_schemas_get_their_folders_draft(tmp_path: Path) -> None:
    draft = tmp_path / "draft7"
    draft.mkdir()
    groups = [{"description": "g", "schema": {"items": [{}]}, "tests": []}, {"description": "b", "schema": True, "tests": []}]
    (draft / "items.json").write_text(json.dumps(groups))
    seen: list[Any] = []

    def compile_fn(schema: Any, vocab: Any, **options: Any) -> Any:
        seen.append(schema)
        return FakeGrammar(lambda data: True)

    c.run_test_suite("draft7", BYTE_VOCAB, root=tmp_path, compile_fn=compile_fn, options=OPTIONS)
    assert seen == [{"$schema": "http://json-schema.org/draft-07/schema#", "items": [{}]}, True]
    assert c.with_draft({"$schema": "x"}, "draft7") == {"$schema": "x"}
