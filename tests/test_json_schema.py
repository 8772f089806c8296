"""JSON Schema compilation against python-jsonschema (Draft 2020-12 with format checking).

Conformance counts over the JSON Schema Test Suite and MaskBench live in
tests/test_conformance.py; these are targeted checks and error tables.
"""

from __future__ import annotations

import itertools
import json
import random
import warnings
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from gramspec import LimitError, SchemaError, UnsupportedSchemaError, Vocabulary
from gramspec.grammars import CompiledGrammar
from gramspec.grammars.compiled import State
from gramspec.grammars.json_schema import compile_json_schema, integer_range_dfa, number_range_dfa

BYTE_VOCAB = Vocabulary.from_token_bytes([bytes([b]) for b in range(256)] + [b""], eos_token_ids=[256])
SHARED = Path(__file__).resolve().parents[2] / "shared"


def validator(schema: Any) -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def random_document(grammar: CompiledGrammar, rng: random.Random, steps: int) -> bytes:
    """Walk the grammar byte by byte, uniformly among viable bytes, then close by the shortest completion."""
    state: State = grammar.initial_state
    out = bytearray()
    for _ in range(steps):
        options = [(b, nxt) for b in range(256) if (nxt := grammar.walk(state, bytes((b,)))) is not None]
        if not options or (grammar.is_accepting(state) and rng.random() < 0.2):
            break
        byte, state = rng.choice(options)
        out.append(byte)
    return bytes(out) + close_document(grammar, state)


# Bytes tried first when closing a document: end strings, containers and values quickly.
_CLOSERS = b'"}]10n' + bytes(range(0x61, 0x7B)) + b":-.Ee+tf[{" + bytes(range(0x20, 0x7F)) + b","


def close_document(grammar: CompiledGrammar, state: State) -> bytes:
    """Some text that completes ``state``: greedy by :data:`_CLOSERS` (never revisiting a
    state), then breadth-first search if greed goes nowhere within 2000 bytes."""
    out = bytearray()
    current = state
    seen = {state}
    while not grammar.is_accepting(current) and len(out) < 2000:
        for byte in _CLOSERS:
            nxt = grammar.walk(current, bytes((byte,)))
            if nxt is not None and nxt not in seen:
                break
        else:
            options = [(b, n) for b in range(256) if (n := grammar.walk(current, bytes((b,)))) is not None]
            assert options, f"dead end after {bytes(out)!r}"
            byte, nxt = options[0]
        seen.add(nxt)
        out.append(byte)
        current = nxt
    if grammar.is_accepting(current):
        return bytes(out)
    queue: deque[tuple[State, bytes]] = deque([(state, b"")])
    visited = {state}
    while queue:
        current, text = queue.popleft()
        if grammar.is_accepting(current):
            return text
        assert len(visited) < 50_000, "no completion found"
        for byte in _CLOSERS:
            nxt = grammar.walk(current, bytes((byte,)))
            if nxt is not None and nxt not in visited:
                visited.add(nxt)
                queue.append((nxt, text + bytes((byte,))))
    raise AssertionError(f"dead end: no completion from {state}")


SCHEMAS: list[tuple[dict[str, Any], list[Any], list[Any]]] = [
    # (schema, valid instances, invalid instances)
    (
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 8},
                "age": {"type": "integer", "minimum": 0, "exclusiveMaximum": 150},
                "email": {"type": "string", "format": "email"},
                "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 2},
            },
            "required": ["name", "age"],
            "additionalProperties": False,
        },
        [{"name": "Bo", "age": 0}, {"name": "Ann", "age": 149, "tags": ["a", "c"]}, {"name": "x", "age": 3, "email": "a@b.co"}],
        [{"name": "", "age": 1}, {"name": "Bo", "age": 150}, {"name": "Bo"}, {"name": "Bo", "age": 1, "x": 1}, {"name": "Bo", "age": 1, "tags": ["d"]}],
    ),
    (
        {"type": "string", "pattern": "^[A-Z]{2}-\\d{3}$"},
        ["AB-123", "AB-123\n"],
        ["ab-123", "AB-1234", "xAB-123"],
    ),
    (
        {"type": "string", "pattern": "^ab|cd$|[|^]x"},
        ["abz", "zcd", "cd\n", "z|x", "q^x"],
        ["zab", "cdz", "x"],
    ),
    (
        {"type": "string", "pattern": "\\d"},
        ["abc1", "1", "x\u00e98y"],
        ["abc", ""],
    ),
    (
        {"type": "number", "minimum": -1, "maximum": 1},
        [-1, 0, 0.5, 1, -0.999],
        [1.5, -2, 100],
    ),
    (
        {"type": "integer", "multipleOf": 5, "minimum": 3},
        [5, 10, 1000],
        [0, 3, 7],
    ),
    (
        {"$defs": {"tree": {"type": "object", "properties": {"v": {"type": "integer"}, "c": {"type": "array", "items": {"$ref": "#/$defs/tree"}}}, "required": ["v"], "additionalProperties": False}}, "$ref": "#/$defs/tree"},
        [{"v": 1}, {"v": 1, "c": [{"v": 2, "c": []}, {"v": 3}]}],
        [{"c": []}, {"v": 1, "c": [{}]}],
    ),
    (
        {"anyOf": [{"type": "string", "format": "date"}, {"type": "integer", "maximum": 0}]},
        ["2024-02-28", -5, 0],
        ["2024-02-30", 1, "yesterday"],
    ),
    (
        {"oneOf": [{"type": "object", "properties": {"kind": {"const": "a"}, "x": {"type": "integer"}}, "required": ["kind"]},
                   {"type": "object", "properties": {"kind": {"const": "b"}, "y": {"type": "string"}}, "required": ["kind"]}]},
        [{"kind": "a", "x": 1}, {"kind": "b", "y": "z"}],
        [{"kind": "c"}, {"kind": "a", "x": "1"}],
    ),
    (
        {"type": "object", "allOf": [{"properties": {"a": {"type": "integer"}}}, {"properties": {"b": {"type": "boolean"}}, "required": ["b"]}], "unevaluatedProperties": False},
        [{"a": 1, "b": True}, {"b": False}],
        [{"a": 1}, {"a": 1, "b": True, "c": 0}],
    ),
    (
        {"type": "array", "prefixItems": [{"type": "string"}, {"type": "null"}], "items": False, "minItems": 1},
        [["x"], ["x", None]],
        [[], [1], ["x", None, None]],
    ),
    (
        {"type": "array", "contains": {"type": "integer", "minimum": 10}, "items": {"type": "integer"}},
        [[10], [1, 2, 30], [11, 1]],
        [[], [1, 2, 3], ["a", 10]],
    ),
    (
        {"type": "object", "patternProperties": {"^S_": {"type": "string"}, "^I_": {"type": "integer"}}, "additionalProperties": False},
        [{"S_a": "x", "I_b": 2}, {}],
        [{"S_a": 1}, {"other": 1}],
    ),
    (
        {"type": "string", "maxLength": 2},
        ["", "\U0001f600\U0001f600", "\u00e9\""],
        ["abc"],
    ),
    (
        {"enum": ["red", "green", 3, None, [1, {"a": True}]]},
        ["red", 3, None, [1, {"a": True}]],
        ["blue", 4, [1]],
    ),
    (
        {
            "type": "object",
            "properties": {"kind": {"type": "string"}, "v": {}},
            "if": {"properties": {"kind": {"const": "num"}}, "required": ["kind"]},
            "then": {"properties": {"v": {"type": "number"}}},
            "else": {"properties": {"v": {"type": "string"}}},
        },
        [{"kind": "num", "v": 1}, {"kind": "txt", "v": "a"}, {"v": "x"}, {"kind": "n\u00fam", "v": "x"}],
        [{"kind": "num", "v": "a"}, {"kind": "x", "v": 1}, {"v": 2}],
    ),
    (
        {  # recursive definitions merged by allOf become a cycle of merged schemas
            "$defs": {
                "a": {"type": "object", "properties": {"x": {"$ref": "#/$defs/a"}}},
                "b": {"properties": {"x": {"$ref": "#/$defs/b"}, "y": {"type": "integer", "multipleOf": 2}}},
                "c": {"properties": {"y": {"multipleOf": 3}}},
            },
            "allOf": [{"$ref": "#/$defs/a"}, {"$ref": "#/$defs/b"}, {"$ref": "#/$defs/c"}],
        },
        [{"x": {"x": {"y": 6}}}, {}, {"y": -12}],
        [{"x": {"x": {"y": "a"}}}, {"x": 1}, {"y": 4}, {"x": {"y": 9}}],
    ),
    (
        {"oneOf": [{"type": "null"}, {"minimum": 3}, {"$ref": "#/$defs/short"}], "$defs": {"short": {"type": "string", "maxLength": 2}}},
        [3, 4, 3.5, "abc", [], {}, True],  # "minimum" holds for every non-number
        [1, 2, "ab", "a", None],
    ),
    (
        {"type": "object", "properties": {"a": {}, "b": {}, "c": {}}, "dependentRequired": {"c": ["a"], "a": ["b"], "d": ["c"]}},
        [{}, {"b": 1}, {"a": 1, "b": 1}, {"a": 1, "b": 1, "c": 1}, {"a": 1, "b": 2, "c": 3, "d": 4}],
        [{"a": 1}, {"b": 1, "c": 1}, {"c": 1}, {"d": 1}, {"b": 1, "c": 1, "d": 1}],
    ),
    (
        {"$schema": "http://json-schema.org/draft-07/schema#", "properties": {"x": {"type": "integer"}}, "dependencies": {"x": ["y"]}},
        [{}, {"y": 1}, {"x": 1, "y": 1}, 3],
        [{"x": 1}, {"x": "a", "y": 1}],
    ),
    (
        {"not": {"required": ["a"]}},  # non-objects satisfy "required", so "not" rejects them
        [{}, {"b": 1}],
        [{"a": 1}, 1, "x", None, []],
    ),
    (
        {"not": {"minimum": 3, "maxLength": 2, "pattern": "^x"}},
        [2, 2.5, -1, "abc", "xyz", "ab", ""],
        [3, 10, "x", "xy", None, True, [], {}],
    ),
    (
        {"type": ["string", "number"], "not": {"anyOf": [{"type": "string", "pattern": "a"}, {"type": "number", "maximum": 0}]}},
        ["bcd", "", 1, 42, 2.5],
        ["cat", 0, -5, None],
    ),
    (
        {"not": {"enum": ["a", None, True]}},
        ["b", False, 1, 2.5, [], {"a": 1}, ""],
        ["a", None, True],
    ),
    (
        {"if": {"type": "string"}, "then": {"minLength": 2}, "else": {"type": "integer"}},
        ["ab", 3],
        ["a", 1.5, None],
    ),
    (
        {"properties": {"foo": {"type": "string"}}, "dependentSchemas": {"foo": {"properties": {"bar": {"const": "bar"}}, "required": ["bar"]}},
         "unevaluatedProperties": False},
        [{"foo": "x", "bar": "bar"}, {}, 3, "x", []],  # properties of a dependent schema count as evaluated
        [{"bar": "bar"}, {"foo": "x"}, {"foo": "x", "bar": "baz"}, {"foo": 1, "bar": "bar"}, {"foo": "x", "bar": "bar", "z": 1}],
    ),
    (
        {"type": "object", "properties": {"a": {}, "b": {}}, "dependentSchemas": {"a": {"required": ["b"], "properties": {"b": {"type": "integer"}}}, "b": {"maxProperties": 2}}},
        [{}, {"b": "x"}, {"a": 1, "b": 2}, {"b": 1, "c": 2}, {"c": 1, "d": 2, "e": 3}],
        [{"a": 1}, {"a": 1, "b": "x"}, {"b": 1, "c": 2, "d": 3}, {"a": 1, "b": 2, "c": 3}],  # b's schema holds with a's
    ),
    (
        {"$schema": "http://json-schema.org/draft-07/schema#", "dependencies": {"x": ["y"], "y": {"properties": {"x": {"type": "integer"}}}, "z": False}},
        [{}, {"y": 1}, {"x": 1, "y": 1}, {"y": 1, "q": "a"}, "s"],
        [{"x": 1}, {"x": "a", "y": 1}, {"z": 1}, {"y": 1, "z": None}],
    ),
    (
        {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "uniqueItems": True},
        [[], ["red"], ["blue", "red"], ["green", "red", "blue"]],
        [["red", "red"], ["red", "blue", "red"], ["red", "green", "blue", "red"], ["pink"]],
    ),
    (
        {"type": "array", "items": {"enum": [1, 1.0, 2, True, "1", None, [1], {"a": 1}]}, "uniqueItems": True, "minItems": 2},
        [[1, 2], [1.0, True], [1, "1", [1], None], [True, 1, {"a": 1}]],  # true and "1" differ from 1
        [[1], [1, 1.0], [1.0, 2, 1], [None, None], [[1], [1]]],
    ),
    (
        {"type": "array", "prefixItems": [{"type": "boolean"}, {"type": ["boolean", "null"]}, {"const": 1}], "items": False, "uniqueItems": True},
        [[], [True], [True, False], [False, None, 1], [True, None]],
        [[True, True], [False, None, 1, 2], [None], [True, False, 2]],
    ),
    (
        {"type": "array", "items": {"type": "integer", "minimum": -2, "maximum": 6, "multipleOf": 2}, "uniqueItems": True,
         "contains": {"minimum": 3}, "maxContains": 1},
        [[4], [-2, 0, 6], [6, 2, -2, 0]],
        [[], [0, 2], [4, 6], [4, 4], [-2, 4, -2], [3]],
    ),
    # allOf nested in allOf, and under a double not (was a KeyError in the merge)
    ({"allOf": [{"allOf": [{"allOf": [{"type": "integer"}]}]}], "minimum": 3}, [3, 40], [2, 3.5, "3", None]),
    ({"allOf": [{"enum": [None, 1]}, {"not": {"not": {"allOf": [{"allOf": [{"type": "null"}]}]}}}]}, [None], [1, 0, False]),
    # keywords of later drafts are unknown (annotations) in earlier ones: draft 4 has no
    # if/then/else, const, contains, propertyNames, dependentRequired (MaskBench Github_medium/o3385)
    (
        {"$schema": "http://json-schema.org/draft-04/schema#", "type": ["object", "array"], "properties": {"a": {"type": "string"}},
         "if": {"properties": {"t": {"const": "x"}}}, "then": {"required": ["c"]}, "const": {"t": "x"}, "contains": {"type": "null"},
         "propertyNames": {"maxLength": 1}, "dependentRequired": {"a": ["b"]}, "prefixItems": [{"type": "string"}]},
        [{"t": "x"}, {"a": "s", "t": "y", "long": 1}, [1], []],
        [{"a": 1}, "s", None],
    ),
    (  # draft 6: const applies, if/then/else do not
        {"$schema": "http://json-schema.org/draft-06/schema#", "properties": {"t": {"const": "x"}},
         "if": {"required": ["t"]}, "then": {"required": ["c"]}, "else": False},
        [{}, {"t": "x"}, {"t": "x", "c": 1}, 3],
        [{"t": "y"}, {"t": 1}],
    ),
    (  # draft 7: dependencies apply, dependentSchemas/unevaluatedProperties do not
        {"$schema": "http://json-schema.org/draft-07/schema#", "properties": {"a": {}}, "dependencies": {"a": ["b"]},
         "dependentSchemas": {"b": False}, "unevaluatedProperties": False},
        [{}, {"a": 1, "b": 2}, {"b": 1, "z": 2}],
        [{"a": 1}, {"a": 1, "z": 2}],
    ),
    (  # a $ref may point through a keyword the draft does not apply
        {"$schema": "http://json-schema.org/draft-04/schema#", "properties": {"a": {"$ref": "#/then/properties/x"}},
         "then": {"properties": {"x": {"type": "string", "const": "q"}}}},
        [{}, {"a": "z"}, {"a": "q"}],
        [{"a": 1}, {"a": None}],
    ),
    # the compiler's key order (conformance.reorder_for_schema follows it): merged allOf
    # properties, then branch properties; listed names, then required names not listed,
    # then other keys (MaskBench Github_medium/o60846, Github_hard/o12335, o29388)
    (
        {"allOf": [{"properties": {"a": {}}}, {"anyOf": [{"properties": {"b": {}}}, {"properties": {"c": {}}}]}, {"properties": {"d": {}}}]},
        [{"a": 1, "d": 1, "b": 1}, {"d": 1, "b": 1}, {"a": 1, "d": 1, "c": 1}, {"a": 1, "d": 1, "e": 1}],
        [],
    ),
    (
        {"properties": {"a": {"type": "integer"}}, "required": ["c"], "patternProperties": {"^x": {"type": "string"}}},
        [{"c": 1}, {"a": 1, "c": 1, "x": "s"}, {"c": "x", "x1": "s", "b": None}],
        [{"a": 1}, {"a": "1", "c": 1}, {"c": 1, "x": 1}],
    ),
    # $ref resolves against the base URI ($id; id in draft 4) of the schema holding it:
    # "#/$defs/x" inside a subschema with its own $id means that resource's $defs, not the root's
    (
        {"$defs": {"x": {"type": "string"}}, "properties": {"a": {"$id": "http://example.com/inner.json",
         "$defs": {"x": {"type": "integer"}}, "$ref": "#/$defs/x"}}},
        [{}, {"a": 1}],
        [{"a": "s"}],
    ),
    (
        {"$schema": "http://json-schema.org/draft-04/schema#", "definitions": {"x": {"type": "string"}},
         "items": {"id": "http://example.com/inner.json", "definitions": {"x": {"type": "integer"}},
                   "properties": {"b": {"$ref": "#/definitions/x"}}}},
        [[], [{"b": 1}]],
        [[{"b": "s"}]],
    ),
    (  # relative $ids and a $ref by URI to a sibling resource, and back to the root by its URI
        {"$id": "http://example.com/root.json", "properties": {
            "a": {"$id": "a/", "$defs": {"n": {"$id": "n.json", "type": "integer"}}, "$ref": "n.json"},
            "b": {"$ref": "a/n.json"}, "c": {"$ref": "http://example.com/a/n.json"},
            "d": {"$ref": "root.json#/$defs/s"}}, "$defs": {"s": {"type": "string"}}},
        [{"a": 1, "b": 2, "c": 3, "d": "x"}],
        [{"a": "1"}, {"b": "2"}, {"c": "3"}, {"d": 4}],
    ),
    (  # the same $anchor in two resources, and a URN base
        {"$id": "urn:uuid:deadbeef-1234-ffff-ffff-4321feebdaed", "$defs": {
            "A": {"$anchor": "x", "type": "integer"},
            "B": {"$id": "urn:example:b", "$defs": {"y": {"$anchor": "x", "type": "string"}}, "$ref": "#x"}},
         "properties": {"a": {"$ref": "#x"}, "b": {"$ref": "urn:example:b"},
                        "c": {"$ref": "urn:uuid:deadbeef-1234-ffff-ffff-4321feebdaed#/$defs/A"}}},
        [{"a": 1, "b": "s", "c": 2}],
        [{"a": "1"}, {"b": 2}, {"c": "x"}],
    ),
    (  # draft 7: an $id beside $ref is ignored, so the $ref resolves against the parent's base
        {"$schema": "http://json-schema.org/draft-07/schema#", "$id": "http://example.com/r.json",
         "definitions": {"x": {"type": "integer"}}, "properties": {
             "a": {"$id": "http://example.com/other/", "$ref": "#/definitions/x"},
             "b": {"$id": "http://example.com/inner.json", "definitions": {"x": {"type": "string"}},
                   "properties": {"c": {"$ref": "#/definitions/x"}}}}},
        [{"a": 1, "b": {"c": "s"}}],
        [{"a": "1"}, {"b": {"c": 1}}],
    ),
]


@pytest.mark.parametrize("index", range(len(SCHEMAS)))
def test_schema_languages_agree_with_jsonschema(index: int) -> None:
    schema, valid, invalid = SCHEMAS[index]
    grammar = compile_json_schema(schema, BYTE_VOCAB)
    check = validator(schema)
    for instance in valid:
        assert check.is_valid(instance), instance  # the fixture itself is right
        assert grammar.accepts_bytes(compact(instance)), instance
    for instance in invalid:
        assert not check.is_valid(instance), instance
        assert not grammar.accepts_bytes(compact(instance)), instance
    # \u escapes and ASCII-only serializations are the same documents
    for instance in valid:
        assert grammar.accepts_bytes(json.dumps(instance, separators=(",", ":")).encode()), instance


@pytest.mark.parametrize("index", range(len(SCHEMAS)))
def test_random_documents_validate(index: int) -> None:
    schema = SCHEMAS[index][0]
    grammar = compile_json_schema(schema, BYTE_VOCAB)
    check = validator(schema)
    rng = random.Random(index)
    for _ in range(15):
        document = random_document(grammar, rng, rng.randrange(5, 60))
        instance = json.loads(document)
        assert check.is_valid(instance), (document, list(check.iter_errors(instance))[:1])


def _maskbench_sample(count: int) -> list[Path]:
    root = SHARED / "maskbench-dev"
    if not root.is_dir():
        pytest.skip(f"MaskBench schemas not found at {root}")
    files = sorted(root.glob("*/*.json"))
    return random.Random(7).sample(files, min(count, len(files)))


@pytest.mark.parametrize(
    ("options", "count", "seed", "minimum"),
    [({}, 60, 3, 30), ({"unlisted_keys": "forbid"}, 40, 5, 20)],
    ids=["exact", "forbid-unlisted-keys"],
)
def test_random_documents_from_real_schemas_validate(options: dict[str, Any], count: int, seed: int, minimum: int) -> None:
    rng = random.Random(seed)
    compiled = 0
    for path in _maskbench_sample(count):
        schema = json.loads(path.read_text())["schema"]
        try:
            grammar = compile_json_schema(schema, BYTE_VOCAB, **options)
        except (UnsupportedSchemaError, LimitError):
            continue
        compiled += 1
        check = validator(schema)
        for _ in range(3):
            document = random_document(grammar, rng, rng.randrange(10, 120))
            assert check.is_valid(json.loads(document)), (path.name, document)
    assert compiled >= minimum


def test_flexible_whitespace_is_bounded() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "integer"}}}}
    grammar = compile_json_schema(schema, BYTE_VOCAB, whitespace="flexible", max_whitespace=2)
    assert grammar.accepts_bytes(b' { "a" : [ 1 ,2 ] } ')
    assert grammar.accepts_bytes(b'{"a":[]}')
    assert not grammar.accepts_bytes(b'{   "a":[]}')  # three spaces: over the bound
    assert not compile_json_schema(schema, BYTE_VOCAB).accepts_bytes(b'{ "a":[]}')


def test_mask_with_real_vocabulary(vocab_for) -> None:  # type: ignore[no-untyped-def]
    vocab = vocab_for("gpt-2")
    schema = SCHEMAS[0][0]
    grammar = compile_json_schema(schema, vocab)
    matcher = grammar.matcher()
    allowed = matcher.allowed_tokens()
    opening = [i for i in np.flatnonzero(allowed)]
    assert opening and all(vocab.token_bytes[i].startswith(b"{") for i in opening)
    for token in (vocab.token_bytes.index(b'{"'), vocab.token_bytes.index(b"name")):
        assert matcher.advance(token)
    assert vocab.token_bytes.index(b'":"') in np.flatnonzero(matcher.allowed_tokens())


# -- errors: typed, with a JSON pointer --------------------------------------------

SCHEMA_ERRORS = [
    ({"type": "strin"}, SchemaError, "at /type"),
    ({"properties": {"a": {"minLength": -1}}, "type": "object"}, SchemaError, "/properties/a/minLength"),
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}, SchemaError, "/properties/a/$ref"),
    ({"$ref": "https://example.com/other.json"}, UnsupportedSchemaError, "at /$ref"),
    # a relative $ref inside an embedded resource resolves against its $id: still remote
    ({"$defs": {"x": {"type": "string"}}, "properties": {"a": {"$id": "http://example.com/inner.json",
      "$ref": "x.json"}}}, UnsupportedSchemaError, "http://example.com/x.json"),
    ({"$id": "http://example.com/root.json", "$defs": {"x": {"$id": "x.json", "type": "string"}},
      "properties": {"a": {"$ref": "other.json#/$defs/x"}}}, UnsupportedSchemaError, "/properties/a/$ref"),
    ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, UnsupportedSchemaError, "at /uniqueItems"),
    ({"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 40}, "uniqueItems": True}, UnsupportedSchemaError, "41 distinct item values"),
    ({"type": "array", "items": {"type": "integer", "minimum": 0}, "uniqueItems": True}, UnsupportedSchemaError, "at /uniqueItems"),
    ({"dependentSchemas": {c: {"required": ["z"]} for c in "abcdefg"}}, UnsupportedSchemaError, "at /dependentSchemas"),
    ({"dependentSchemas": {"a": {"not": {"format": "email"}}}}, UnsupportedSchemaError, "/not"),
    ({"type": "object", "properties": {"x": {"type": "string", "pattern": "a(b|^c)"}}}, UnsupportedSchemaError, "/properties/x/pattern"),
    ({"oneOf": [{"type": "integer"}, {"format": "email"}]}, UnsupportedSchemaError, "at /oneOf"),
    ({"type": "number", "multipleOf": 0.1}, UnsupportedSchemaError, "at /multipleOf"),
    ({"allOf": [{"type": "string"}, {"type": "integer"}]}, SchemaError, "unsatisfiable"),
    ({"type": "string", "pattern": "[unclosed"}, SchemaError, "/pattern"),
    ("{not json", SchemaError, "not valid JSON"),
    ({"type": "object", "properties": {"a": {"items": 3}}}, SchemaError, "at /properties/a/items"),
    ({"patternProperties": "x"}, SchemaError, "at /patternProperties"),
    ({"$schema": -1}, SchemaError, "at /$schema"),
    ({"allOf": [{"$ref": []}]}, SchemaError, "at /allOf/0/$ref"),
    (42, SchemaError, "must be an object or a boolean"),
]


@pytest.mark.parametrize("schema, error, where", SCHEMA_ERRORS)
def test_schema_error_table(schema: Any, error: type[Exception], where: str) -> None:
    with pytest.raises(error) as info:
        compile_json_schema(schema, BYTE_VOCAB)
    assert where in str(info.value)
    assert isinstance(info.value, ValueError)


def test_non_strict_drops_with_one_warning_listing_everything() -> None:
    schema = {
        "type": "object",
        "properties": {"tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True}},
        "dependentSchemas": {c: {"required": ["x"]} for c in ["tags", "a", "b", "c", "d", "e", "f"]},  # over the limit
    }
    with pytest.raises(UnsupportedSchemaError):
        compile_json_schema(schema, BYTE_VOCAB)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grammar = compile_json_schema(schema, BYTE_VOCAB, strict=False)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1
    assert "uniqueItems at /properties/tags" in messages[0] and "dependentSchemas at #" in messages[0]
    assert grammar.accepts_bytes(b'{"tags":["a","a"]}')


def test_bad_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="whitespace"):
        compile_json_schema({}, BYTE_VOCAB, whitespace="pretty")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_whitespace"):
        compile_json_schema({}, BYTE_VOCAB, max_whitespace=-1)
    with pytest.raises(ValueError, match="unlisted_keys"):
        compile_json_schema({}, BYTE_VOCAB, unlisted_keys="strict")  # type: ignore[arg-type]


def test_huge_bounds_are_limit_errors() -> None:
    with pytest.raises(LimitError):
        compile_json_schema({"type": "array", "minItems": 100_000}, BYTE_VOCAB)
    with pytest.raises(LimitError):
        compile_json_schema({"type": "string", "maxLength": 100_000_000}, BYTE_VOCAB)


# -- number languages, checked exhaustively ------------------------------------------


@pytest.mark.parametrize(
    "lo, hi", [(0, 100), (-5, 5), (None, 10), (7, None), (-100, -3), (None, -20), (123, 4567), (0, 0), (-1, 0), (1000, 1000)]
)
def test_integer_ranges(lo: int | None, hi: int | None) -> None:
    dfa = integer_range_dfa(lo, hi)
    for x in range(-1200, 6000):
        assert dfa.matches(str(x).encode()) == ((lo is None or x >= lo) and (hi is None or x <= hi)), x
    assert not dfa.matches(b"-0") and not dfa.matches(b"007") and not dfa.matches(b"")


def test_huge_integer_bounds_stay_small() -> None:
    dfa = integer_range_dfa(-(2**63), 2**63 - 1)
    assert dfa.n_states < 1000  # linear in the digits, not in the range
    assert dfa.matches(str(2**63 - 1).encode()) and not dfa.matches(str(2**63).encode())
    assert dfa.matches(str(-(2**63)).encode()) and not dfa.matches(str(-(2**63) - 1).encode())


@pytest.mark.parametrize(
    "lo, lo_strict, hi, hi_strict",
    [
        (0, False, 100, False), (0, True, 1, True), (-5, False, 5, True), (None, False, 0, True), (1, True, None, False),
        (-10, True, -2, False), (0.25, False, 2.5, True), (-1.75, True, 0.05, False), (None, False, -0.5, False),
        (1.05, True, None, False), (-3.5, False, -3.25, False), (0.5, True, 0.5, False),
    ],
)  # fmt: skip
def test_number_ranges(lo: float | None, lo_strict: bool, hi: float | None, hi_strict: bool) -> None:
    from decimal import Decimal

    dfa = number_range_dfa(lo, lo_strict, hi, hi_strict)
    texts = {f"{sign}{q // 100}.{q % 100:02d}" for q in range(0, 1200, 5) for sign in ("", "-")}
    texts |= {f"{sign}{n}" for n in range(12) for sign in ("", "-")} | {"0.0", "0.50", "2.500", "-0.05", "0.049", "1.0501"}
    for text in sorted(texts):
        x = Decimal(text)
        ok = (lo is None or (x > Decimal(repr(lo)) if lo_strict else x >= Decimal(repr(lo)))) and (
            hi is None or (x < Decimal(repr(hi)) if hi_strict else x <= Decimal(repr(hi)))
        )
        if text.startswith("-") and x == 0:
            ok = False  # -0 is never written
        assert dfa.matches(text.encode()) == ok, text


def test_compile_time_is_bounded() -> None:
    # 300 properties, each with its own pattern: far more work than 0.05 s allows
    schema = {"type": "object", "properties": {f"p{i}": {"type": "string", "pattern": f"^a{i}b+$"} for i in range(300)}}
    with pytest.raises(LimitError, match="max_seconds"):
        compile_json_schema(schema, BYTE_VOCAB, max_seconds=0.05)
    with pytest.raises(ValueError, match="max_seconds"):
        compile_json_schema({}, BYTE_VOCAB, max_seconds=0)


def test_one_of_with_closed_objects_is_exact() -> None:
    schema = {
        "oneOf": [
            {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": False},
            {"type": "object", "properties": {"b": {"type": "string"}}, "required": ["b"], "additionalProperties": False},
        ]
    }
    grammar = compile_json_schema(schema, BYTE_VOCAB)
    check = validator(schema)
    for instance in [{"a": 1}, {"b": "x"}, {"a": 1, "b": "x"}, {}, {"a": "x"}]:
        assert grammar.accepts_bytes(compact(instance)) == check.is_valid(instance), instance
    # 1 and 1.0 are the same JSON number, so these branches overlap
    with pytest.raises(UnsupportedSchemaError):
        compile_json_schema({"oneOf": [{"const": 1}, {"const": 1.0}]}, BYTE_VOCAB)


def test_if_then_else_act_within_their_own_schema_under_all_of() -> None:
    schema = {"allOf": [{"if": {"exclusiveMaximum": 0}}, {"then": {"minimum": -10}}, {"else": {"multipleOf": 2}}]}
    grammar = compile_json_schema(schema, BYTE_VOCAB)
    for instance in [-100, 3, 0, "x"]:  # every instance is valid: no if/then/else pair shares a schema
        assert validator(schema).is_valid(instance)
        assert grammar.accepts_bytes(compact(instance)), instance
    paired = {"allOf": [{"if": {"type": "string"}, "then": {"maxLength": 1}}, {"type": ["string", "integer"]}]}
    grammar = compile_json_schema(paired, BYTE_VOCAB)
    for instance, valid in [("a", True), ("ab", False), (5, True), (None, False)]:
        assert validator(paired).is_valid(instance) == valid
        assert grammar.accepts_bytes(compact(instance)) == valid, instance


def test_dependencies_apply_in_every_draft() -> None:
    # documented restriction: 2019-09 and 2020-12 (also no $schema) dropped 'dependencies',
    # python-jsonschema ignores it there, the compiler applies it as draft 7 does
    for draft in ("", "https://json-schema.org/draft/2019-09/schema", "https://json-schema.org/draft/2020-12/schema"):
        schema = {"dependencies": {"a": ["b"], "c": {"required": ["d"]}}, **({"$schema": draft} if draft else {})}
        grammar = compile_json_schema(schema, BYTE_VOCAB)
        assert validator(schema).is_valid({"a": 1}) and validator(schema).is_valid({"c": 1})
        assert not grammar.accepts_bytes(b'{"a":1}') and not grammar.accepts_bytes(b'{"c":1}')
        assert grammar.accepts_bytes(b'{"a":1,"b":2}') and grammar.accepts_bytes(b'{"c":1,"d":2}')


def test_mutated_real_schemas_never_crash() -> None:
    """Malformed schemas (keywords given values of the wrong kind) are typed errors, never crashes."""
    rng = random.Random(11)
    junk: list[Any] = [None, 1, -1, 2.5, "x", "", [], {}, [1, "a"], {"a": 1}, True, False, {"type": 3}, "^(", {"$ref": "#/nope"}]

    def mutate(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: rng.choice(junk) if rng.random() < 0.08 else mutate(v) for k, v in node.items()}
        if isinstance(node, list):
            return [mutate(v) for v in node]
        return node

    tried = 0
    for path in _maskbench_sample(40)[:20]:
        schema = json.loads(path.read_text())["schema"]
        for _ in range(3):
            tried += 1
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    compile_json_schema(mutate(schema), BYTE_VOCAB, strict=rng.random() < 0.5, max_seconds=2)
            except (SchemaError, LimitError):
                pass
    assert tried == 60


def test_known_strings_have_one_spelling_free_strings_any() -> None:
    schema = {"type": "object", "properties": {"na\u00efve": {"enum": ["caf\u00e9", "a\"b"]}, "free": {"type": "string"}}}
    grammar = compile_json_schema(schema, BYTE_VOCAB)
    assert grammar.accepts_bytes('{"na\u00efve":"caf\u00e9"}'.encode())
    assert grammar.accepts_bytes(b'{"na\\u00efve":"caf\\u00e9"}') is False  # escaped key and value
    assert grammar.accepts_bytes(b'{"na\xc3\xafve":"a\\"b"}')  # what JSON requires is still escaped
    assert grammar.accepts_bytes(b'{"free":"caf\\u00e9 \\n \\ud83d\\ude00"}')
    # the escaped spelling of a listed name is not an "additional" property either
    assert not grammar.accepts_bytes(b'{"na\\u00efve":1}')


# -- uniqueItems and dependent schemas, checked exhaustively against jsonschema ----------------


def _arrays(values: list[Any], longest: int) -> list[list[Any]]:
    return [list(t) for k in range(longest + 1) for t in itertools.product(values, repeat=k)]


UNIQUE_SCHEMAS: list[tuple[dict[str, Any], list[Any], int]] = [
    # (schema, candidate item values, longest candidate array); candidates are written as the
    # grammar writes them (enum values as given, integers without fraction)
    ({"type": "array", "items": {"enum": ["a", "b", "c"]}, "uniqueItems": True}, ["a", "b", "c", "d"], 4),
    ({"type": "array", "items": {"enum": [1, 1.0, 2, True, None]}, "uniqueItems": True}, [1, 1.0, 2, True, False, None], 4),
    ({"type": "array", "items": {"type": ["boolean", "null"]}, "uniqueItems": True, "minItems": 2}, [True, False, None, 0], 4),
    ({"items": [{"type": "boolean"}, {"type": "boolean"}], "uniqueItems": True, "additionalItems": False,
      "$schema": "http://json-schema.org/draft-07/schema#"}, [True, False, None], 3),
    ({"type": "array", "prefixItems": [{"enum": [1, 1.0]}], "items": {"enum": [1.0, 2, "x"]}, "uniqueItems": True, "maxItems": 3}, [1, 1.0, 2, "x"], 4),
    ({"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 4}, "uniqueItems": True,
      "contains": {"minimum": 3}, "minContains": 1, "maxContains": 1}, [0, 1, 2, 3, 4, 5], 5),
    ({"type": "array", "items": {"anyOf": [{"$ref": "#/$defs/small"}, {"type": "null"}]}, "uniqueItems": True,
      "$defs": {"small": {"enum": [[1], {"a": 1, "b": [2]}, [1.0]]}}}, [[1], [1.0], {"a": 1, "b": [2]}, None, [2]], 3),
    ({"type": "array", "items": {"enum": ["a", "b", "c"], "not": {"const": "b"}}, "uniqueItems": True}, ["a", "b", "c"], 3),
    ({"type": "array", "allOf": [{"uniqueItems": True}, {"uniqueItems": False, "items": {"type": "boolean"}}]}, [True, False], 3),
    ({"type": "array", "items": {"type": "boolean"}, "uniqueItems": False}, [True, False, None], 3),
]


@pytest.mark.parametrize("index", range(len(UNIQUE_SCHEMAS)))
def test_unique_items_language_is_exact(index: int) -> None:
    schema, values, longest = UNIQUE_SCHEMAS[index]
    check = validator(schema)
    for whitespace in ("compact", "flexible"):
        grammar = compile_json_schema(schema, BYTE_VOCAB, whitespace=whitespace)  # type: ignore[arg-type]
        candidates = _arrays(values, longest)
        assert any(check.is_valid(c) for c in candidates) and not all(check.is_valid(c) for c in candidates)
        for candidate in candidates:
            assert grammar.accepts_bytes(compact(candidate)) == check.is_valid(candidate), candidate
        rng = random.Random(index)
        for _ in range(20):
            instance = json.loads(random_document(grammar, rng, rng.randrange(2, 40)))
            assert check.is_valid(instance), instance


def _key_orders(value: Any) -> list[Any]:
    """``value`` written with every order of its object keys (small objects only)."""
    if not isinstance(value, dict):
        return [value]
    out = []
    for keys in itertools.permutations(value):
        for values in itertools.product(*(_key_orders(value[k]) for k in keys)):
            out.append(dict(zip(keys, values)))
    return out


DEPENDENT_SCHEMAS: list[dict[str, Any]] = [
    {"dependentSchemas": {"bar": {"properties": {"foo": {"type": "integer"}, "bar": {"type": "integer"}}}}},
    {"dependentSchemas": {"foo": True, "bar": False}},
    {"properties": {"foo": {}}, "dependentSchemas": {"foo": {"properties": {"bar": {}}, "additionalProperties": False}}},
    {"properties": {"foo": {}, "bar": {}}, "dependentSchemas": {"foo": {"required": ["bar"]}, "bar": {"properties": {"foo": {"type": "string"}}}},
     "unevaluatedProperties": False},
    {"type": "object", "properties": {"foo": {}, "bar": {}}, "dependentSchemas": {"foo": {"maxProperties": 2}},
     "anyOf": [{"required": ["bar"]}, {"properties": {"foo": {"type": "integer"}}}]},
    {"$defs": {"d": {"dependentSchemas": {"foo": {"properties": {"bar": {"type": "string"}}}}}},
     "allOf": [{"$ref": "#/$defs/d"}, {"dependentSchemas": {"bar": {"properties": {"foo": {"type": "integer"}}}}}]},
    {"$schema": "http://json-schema.org/draft-07/schema#", "dependencies": {"foo": ["bar"], "bar": {"properties": {"foo": {"const": 1}}}}},
    {"type": "object", "properties": {"x": {"$ref": "#"}}, "dependentSchemas": {"x": {"required": ["foo"]}}},
]


@pytest.mark.parametrize("index", range(len(DEPENDENT_SCHEMAS)))
def test_dependent_schemas_language_is_exact(index: int) -> None:
    schema = DEPENDENT_SCHEMAS[index]
    grammar = compile_json_schema(schema, BYTE_VOCAB)
    check = validator(schema)
    values: list[Any] = [1, "s", None]
    candidates: list[Any] = [0, "x", [], [1]]
    for names in itertools.chain.from_iterable(itertools.combinations(["foo", "bar", "baz"], k) for k in range(4)):
        for chosen in itertools.product(values, repeat=len(names)):
            candidates.append(dict(zip(names, chosen)))
    candidates += [{"x": {}}, {"x": {"foo": 1}, "foo": 1}, {"x": {"x": {}}, "foo": 1}]
    assert any(check.is_valid(c) for c in candidates) and not all(check.is_valid(c) for c in candidates)
    for candidate in candidates:
        # the grammar writes properties in one order: some key order of the object is accepted
        accepted = any(grammar.accepts_bytes(compact(v)) for v in _key_orders(candidate))
        assert accepted == check.is_valid(candidate), candidate
    rng = random.Random(index)
    for _ in range(20):
        instance = json.loads(random_document(grammar, rng, rng.randrange(2, 40)))
        assert check.is_valid(instance), instance


# -- repeated keys: extra keys count once toward minProperties, every time toward maxProperties ---

# (schema, names it lists in "properties", in order); extra keys come from patternProperties
# and additionalProperties (or unevaluatedProperties) and may be written twice, so they count once
# toward minProperties: objects that need two distinct extra keys are left out (restricted)
REPEATED_KEY_SCHEMAS: list[tuple[dict[str, Any], list[str]]] = [
    ({"patternProperties": {"^[a-f]$": {}}, "additionalProperties": False, "minProperties": 1}, []),
    ({"patternProperties": {"^[a-f]$": {}}, "additionalProperties": False, "minProperties": 2, "properties": {"p": {}}}, ["p"]),
    ({"patternProperties": {"^[a-f]$": {"type": "integer"}}, "additionalProperties": False, "minProperties": 2, "maxProperties": 3,
      "properties": {"p": {}, "q": {"type": "string"}}}, ["p", "q"]),
    ({"patternProperties": {"^[a-f]$": {"type": "integer"}}, "additionalProperties": False, "minProperties": 3,
      "properties": {"p": {}, "q": {"type": "string"}}}, ["p", "q"]),
    ({"additionalProperties": {"type": "integer"}, "minProperties": 1}, []),
    ({"additionalProperties": {"type": "integer"}, "minProperties": 2, "properties": {"p": {}}}, ["p"]),
    ({"additionalProperties": {"type": "integer"}, "minProperties": 3, "properties": {"p": {}, "q": {}}}, ["p", "q"]),
    ({"additionalProperties": {"type": "integer"}, "minProperties": 2, "maxProperties": 2, "properties": {"p": {}}}, ["p"]),
    ({"patternProperties": {"^[a-f]$": {"type": "integer"}}, "additionalProperties": {"type": "string"}, "minProperties": 3,
      "properties": {"p": {}, "q": {}}}, ["p", "q"]),
    ({"properties": {"p": {}}, "unevaluatedProperties": {"type": "integer"}, "minProperties": 2}, ["p"]),
    ({"properties": {"p": {}}, "propertyNames": {"maxLength": 1}, "minProperties": 2}, ["p"]),
    ({"type": "object", "properties": {"p": {}}, "not": {"maxProperties": 1}}, ["p"]),
    ({"properties": {"p": {}}, "required": ["p"], "maxProperties": 2}, ["p"]),
    ({"patternProperties": {"^[a-f]$": {}}, "additionalProperties": False, "maxProperties": 1}, []),
]

# keys as written (escaped spellings too) and as parsed; values (1 is not a string, "s" not an integer)
_KEYS = [('"p"', "p"), ('"\\u0070"', "p"), ('"q"', "q"), ('"a"', "a"), ('"\\u0061"', "a"), ('"b"', "b"), ('"z"', "z")]
_VALUES = ["1", '"s"']


def _object_texts(longest: int) -> Iterator[list[tuple[str, str, str]]]:
    """Objects of up to ``longest`` members from :data:`_KEYS` and :data:`_VALUES`, keys repeating:
    lists of (written key, parsed key, written value)."""
    pairs = [(written, key, value) for written, key in _KEYS for value in _VALUES]
    for k in range(longest + 1):
        yield from (list(members) for members in itertools.product(pairs, repeat=k))


def _in_restricted_language(schema: dict[str, Any], listed: list[str], members: list[tuple[str, str, str]]) -> bool:
    """Whether the grammar should accept ``members``: each value valid (a parser keeps only the
    last of a repeated key), listed names once, in order, in their one spelling, before any
    extra key; extra keys counting once toward minProperties and every member toward maxProperties."""
    check = validator(schema)
    keys = [key for _, key, _ in members]
    if not check.is_valid({k: json.loads(v) for _, k, v in members}):
        return False
    for i, (written, key, value) in enumerate(members):
        if key in listed and (written != f'"{key}"' or keys.index(key) != i):
            return False
        document = {k: json.loads(v) for _, k, v in members}
        document[key] = json.loads(value)  # every member's value must hold, not only the last
        if not check.is_valid(document):
            return False
    declared = [key for key in keys if key in listed]
    if declared != sorted(declared, key=listed.index) or keys[: len(declared)] != declared:
        return False
    extra = len(keys) > len(declared)
    low = schema.get("minProperties", schema.get("not", {}).get("maxProperties", -1) + 1)  # "not" of maxProperties: minProperties
    return len(declared) + extra >= low and len(keys) <= schema.get("maxProperties", len(keys))


@pytest.mark.parametrize("index", range(len(REPEATED_KEY_SCHEMAS)))
def test_repeated_keys_never_count_twice(index: int) -> None:
    schema, listed = REPEATED_KEY_SCHEMAS[index]
    grammar = compile_json_schema(schema, BYTE_VOCAB)
    check = validator(schema)
    accepted = 0
    for members in _object_texts(3):
        text = ("{" + ",".join(f"{k}:{v}" for k, _, v in members) + "}").encode()
        ok = grammar.accepts_bytes(text)
        if ok:  # the contract: what is accepted parses and validates
            assert check.is_valid(json.loads(text)), text
            accepted += 1
        assert ok == _in_restricted_language(schema, listed, members), text
    assert accepted


def test_repeated_extra_key_does_not_reach_min_properties() -> None:
    schema = {"patternProperties": {"^[a-f]$": {}}, "additionalProperties": False, "minProperties": 2}
    assert not validator(schema).is_valid(json.loads(b'{"a":1,"a":1}'))  # parsed: {"a": 1}
    grammar = compile_json_schema(schema, BYTE_VOCAB)  # non-objects are valid
    assert grammar.accepts_bytes(b"1") and not grammar.accepts_bytes(b'{"a":1,"a":1}')
    assert not grammar.accepts_bytes(b'{"a":1,"b":1}')  # two distinct extra keys would be needed: restricted
    # where that leaves nothing, the error says so rather than "unsatisfiable"
    with pytest.raises(UnsupportedSchemaError, match="minProperties") as caught:
        compile_json_schema({**schema, "type": "object"}, BYTE_VOCAB)
    assert caught.value.pointer == "/minProperties"
    for variant in ({"type": "object", "additionalProperties": {"type": "integer"}, "minProperties": 2},
                    {"type": "object", "not": {"maxProperties": 1}},
                    {"type": "object", "properties": {"p": {}}, "additionalProperties": True, "minProperties": 3}):
        with pytest.raises(UnsupportedSchemaError, match="minProperties"):
            compile_json_schema(variant, BYTE_VOCAB)
    with pytest.raises(SchemaError, match="unsatisfiable"):  # truly empty
        compile_json_schema({"type": "object", "properties": {"p": {}}, "additionalProperties": False, "minProperties": 2}, BYTE_VOCAB)


# -- unlisted_keys="forbid": no keys beyond the listed ones where the schema says nothing of them ---

_BASE = {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]}
# (schema, valid instances still accepted, valid instances now rejected: they have a key the
# merged object schema does not list); every accepted instance must validate
UNLISTED_KEY_CASES: list[tuple[dict[str, Any], list[Any], list[Any]]] = [
    ({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}}, "required": ["a"]},
     [{"a": 1}, {"a": 1, "b": "s"}], [{"a": 1, "z": 1}, {"a": 1, "b": "s", "z": "s"}]),
    # allOf: keys listed by any part, also the same key in two parts
    ({"allOf": [{"properties": {"a": {}}}, {"properties": {"b": {}}}]}, [{"a": 1, "b": 1}, {"b": "s"}], [{"a": 1, "z": 1}]),
    ({"properties": {"a": {"type": "integer"}}, "allOf": [{"properties": {"a": {"minimum": 0}, "b": {}}}]},
     [{"a": 1, "b": 1}], [{"a": 1, "z": 1}]),
    # a $ref'd base and properties beside it (draft 2020-12: siblings apply), or in allOf
    ({"$defs": {"base": _BASE}, "$ref": "#/$defs/base", "properties": {"name": {"type": "string"}}},
     [{"id": 1, "name": "s"}, {"id": 1}], [{"id": 1, "z": 1}]),
    ({"$defs": {"base": _BASE}, "allOf": [{"$ref": "#/$defs/base"}], "properties": {"name": {}}},
     [{"id": 1, "name": 1}], [{"id": 1, "name": 1, "z": 1}]),
    # dependentSchemas and if/then add their keys where they apply, and only there
    ({"properties": {"a": {}}, "dependentSchemas": {"a": {"properties": {"b": {"type": "integer"}}}}},
     [{"a": 1, "b": 1}, {"a": 1}], [{"a": 1, "z": 1}, {"b": 1}]),
    ({"properties": {"kind": {"enum": ["x", "y"]}}, "required": ["kind"],
      "if": {"properties": {"kind": {"const": "x"}}}, "then": {"properties": {"extra": {"type": "integer"}}}},
     [{"kind": "x", "extra": 1}, {"kind": "y"}], [{"kind": "y", "extra": 1}, {"kind": "x", "z": 1}]),
    ({"properties": {"kind": {}}, "allOf": [{"if": {"required": ["kind"]}, "then": {"properties": {"v": {}}}}]},
     [{"kind": 1, "v": 1}, {}], [{"v": 1}, {"kind": 1, "z": 1}]),
    # anyOf/oneOf: each branch merged with its container, closed on its own
    ({"type": "object", "properties": {"a": {}},
      "anyOf": [{"properties": {"b": {}}, "required": ["b"]}, {"properties": {"c": {}}, "required": ["c"]}]},
     [{"a": 1, "b": 1}, {"a": 1, "c": 1}], [{"a": 1, "b": 1, "c": 1}, {"b": 1, "z": 1}]),
    ({"oneOf": [{"properties": {"t": {"const": "a"}, "x": {}}, "required": ["t"]},
                {"properties": {"t": {"const": "b"}, "y": {}}, "required": ["t"]}]},
     [{"t": "a", "x": 1}, {"t": "b", "y": 1}], [{"t": "a", "y": 1}]),
    ({"oneOf": [{"properties": {"a": {"type": "string"}}}, {"properties": {"b": {"type": "string"}}}]},
     [{"a": "s", "b": 1}, {"a": 1, "b": "s"}], [{"a": "s", "b": 1, "z": 1}]),
    # names required or dependentRequired but not in properties stay writable
    ({"properties": {"a": {}}, "required": ["b"]}, [{"b": 1}, {"a": 1, "b": 1}], [{"b": 1, "z": 1}]),
    ({"properties": {"a": {}}, "dependentRequired": {"a": ["b"]}}, [{"a": 1, "b": 1}, {"b": 1}], [{"a": 1, "b": 1, "z": 1}]),
    ({"properties": {"a": {}, "b": {}}, "minProperties": 2}, [{"a": 1, "b": 1}], [{"a": 1, "z": 1}]),
    ({"properties": {"a": {}, "b": {}}, "not": {"required": ["a", "b"]}}, [{"a": 1}, {}], [{"a": 1, "z": 1}]),
    # nested and recursive objects are closed too; a value schema of {} stays any JSON value
    ({"properties": {"inner": {"properties": {"a": {}}}, "free": {}}},
     [{"inner": {"a": 1}}, {"free": {"z": 1}}], [{"inner": {"z": 1}}]),
    ({"$defs": {"node": {"type": "object", "properties": {"v": {"type": "integer"}, "next": {"$ref": "#/$defs/node"}}}},
      "$ref": "#/$defs/node"}, [{"v": 1, "next": {"v": 2}}], [{"v": 1, "next": {"z": 1}}]),
    # schemas that speak of other keys are followed exactly, also when a merged part does
    ({"properties": {"a": {}}, "additionalProperties": True}, [{"a": 1, "z": 1}], []),
    ({"properties": {"a": {}}, "allOf": [{"additionalProperties": True}]}, [{"a": 1, "z": 1}], []),
    ({"properties": {"a": {}}, "additionalProperties": {"type": "integer"}}, [{"a": "s", "z": 1}], []),
    ({"properties": {"a": {}}, "patternProperties": {"^x": {"type": "integer"}}}, [{"a": 1, "x1": 1, "z": "s"}], []),
    ({"properties": {"a": {}}, "allOf": [{"properties": {"b": {}}}], "unevaluatedProperties": {"type": "integer"}},
     [{"a": "s", "b": "s", "z": 1}], []),
    # objects whose schema lists no property stay free-form (as in xgrammar's strict mode)
    ({"type": "object"}, [{"z": 1}], []),
    ({"type": "object", "properties": {}, "required": ["id"]}, [{"id": 1, "z": 1}], []),
    ({"properties": {"a": False}}, [{"z": 1}], []),
    ({"type": "object", "not": {"required": ["a"]}}, [{"z": 1}], []),
    ({"type": "object", "if": {"required": ["a"]}, "then": {"required": ["b"]}}, [{"a": 1, "b": 1, "z": 1}, {"z": 1}], []),
    # enum/const values are written as given
    ({"properties": {"a": {}}, "enum": [{"a": 1, "z": 2}]}, [{"a": 1, "z": 2}], []),
]


def _keys_of(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value).union(*(_keys_of(v) for v in value.values()))
    return set()


@pytest.mark.parametrize("index", range(len(UNLISTED_KEY_CASES)))
def test_forbidding_unlisted_keys_only_restricts(index: int) -> None:
    schema, kept, rejected = UNLISTED_KEY_CASES[index]
    forbid = compile_json_schema(schema, BYTE_VOCAB, unlisted_keys="forbid")
    exact = compile_json_schema(schema, BYTE_VOCAB)
    check = validator(schema)

    def accepts(grammar: CompiledGrammar, value: Any) -> bool:  # in some key order: the grammar writes one
        return any(grammar.accepts_bytes(compact(v)) for v in _key_orders(value))

    for instance in kept:
        assert check.is_valid(instance) and accepts(forbid, instance), instance
    for instance in rejected:
        assert check.is_valid(instance) and accepts(exact, instance), instance  # valid: rejected by the option
        assert not accepts(forbid, instance), instance
    # the oracle: every object over these keys that the restricted grammar accepts validates
    keys = sorted(set().union(*(_keys_of(v) for v in kept + rejected)) | {"z"})
    for names in itertools.chain.from_iterable(itertools.combinations(keys, k) for k in range(min(len(keys), 3) + 1)):
        for values in itertools.product([1, "s"], repeat=len(names)):
            candidate = dict(zip(names, values))
            if accepts(forbid, candidate):
                assert check.is_valid(candidate) and accepts(exact, candidate), candidate
    rng = random.Random(index)
    for _ in range(20):
        document = random_document(forbid, rng, rng.randrange(2, 50))
        assert check.is_valid(json.loads(document)), document
        assert exact.accepts_bytes(document), document


def test_forbidding_unlisted_keys_short_of_min_properties() -> None:
    schema = {"type": "object", "properties": {"a": {}}, "minProperties": 2}
    assert compile_json_schema(schema, BYTE_VOCAB).accepts_bytes(b'{"a":1,"z":1}')
    with pytest.raises(UnsupportedSchemaError, match="unlisted_keys") as caught:
        compile_json_schema(schema, BYTE_VOCAB, unlisted_keys="forbid")
    assert caught.value.pointer == "/minProperties"
    nested = {"type": "object", "properties": {"p": schema}, "required": ["p"]}
    with pytest.raises(UnsupportedSchemaError, match="unlisted_keys") as caught:
        compile_json_schema(nested, BYTE_VOCAB, unlisted_keys="forbid")
    assert caught.value.pointer == "/properties/p/minProperties"
    # where something else is left, that is what is written
    grammar = compile_json_schema({**schema, "type": ["object", "null"]}, BYTE_VOCAB, unlisted_keys="forbid")
    assert grammar.accepts_bytes(b"null") and not grammar.accepts_bytes(b'{"a":1,"z":1}')
