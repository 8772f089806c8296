"""JSON Schema to grammar.

``compile_json_schema(schema, vocab)`` builds a context-free grammar whose
strings are exactly the JSON documents (in the chosen whitespace style, with
object properties in the schema's order) that validate against ``schema``,
then compiles it for ``vocab``. Every keyword is either enforced exactly,
enforced with a documented, deliberate restriction (docs/json_schema.md), or
refused: in strict mode (the default) an :class:`UnsupportedSchemaError`
names the keyword and its JSON pointer; with ``strict=False`` the keyword is
dropped and one warning lists everything dropped. Nothing is dropped silently.

Restrictions that only ever forbid valid documents (never allow invalid ones):
numbers are written without exponents when bounded, integers without a
fraction or exponent, ``-0`` is never written, enum/const values are written
in compact canonical form, formats use a strict subset of their grammar, keys
that the schema does not list (which may repeat) count once toward ``minProperties``.

``unlisted_keys="forbid"`` is an opt-in restriction of the same kind: an object
schema that lists properties and says nothing of other keys (no
``additionalProperties``, ``patternProperties`` or ``unevaluatedProperties``,
read after ``allOf``/``$ref``/branches are merged) gets no keys beyond the ones
it names, as if it said ``additionalProperties: false``.
"""

from __future__ import annotations

import copy
import decimal
import itertools
import json
import math
import re
import time
import urllib.parse
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import jsonschema
import jsonschema.exceptions
import referencing
import referencing.exceptions
import referencing.jsonschema

from gramspec.errors import GrammarError, LimitError, SchemaError, UnsupportedSchemaError
from gramspec.grammars.builder import GrammarBuilder, Symbol
from gramspec.grammars.compiled import CompiledGrammar
from gramspec.grammars.regex_dfa import ByteDFA, difference, intersect, json_string_dfa, regex_to_dfa
from gramspec.vocab import Vocabulary

Whitespace = Literal["compact", "flexible"]
#: What an object schema that says nothing of keys beyond its ``properties`` allows there:
#: ``"schema"`` any (JSON Schema), ``"forbid"`` none (restricted; docs/json_schema.md).
UnlistedKeys = Literal["schema", "forbid"]
# Internal annotation (unlisted_keys="forbid"): a part of this merged schema lists a property that
# may appear, though merging may have turned it false (dependentSchemas: the trigger left out).
_LISTS_PROPERTIES = "x-gramspec-lists-properties"

_ANNOTATIONS = frozenset(
    {
        "$schema", "$id", "id", "$comment", "$anchor", "$dynamicAnchor", "$vocabulary", "title", "description",
        "default", "examples", "example", "deprecated", "readOnly", "writeOnly", "definitions", "$defs",
        "contentMediaType", "contentEncoding", "contentSchema", "nullable", "discriminator", "xml",
        "externalDocs", "markdownDescription", "enumDescriptions", "errorMessage", "additionalItems_",
        _LISTS_PROPERTIES,
    }
)  # fmt: skip
_TYPES = ("null", "boolean", "object", "array", "string", "number", "integer")
_STRING_KEYS = frozenset({"minLength", "maxLength", "pattern", "format"})
_NUMBER_KEYS = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"})
_OBJECT_KEYS = frozenset(
    {"properties", "required", "additionalProperties", "patternProperties", "propertyNames",
     "minProperties", "maxProperties", "dependentRequired", "dependentSchemas", "dependencies",
     "unevaluatedProperties"}
)  # fmt: skip
_ARRAY_KEYS = frozenset(
    {"items", "prefixItems", "additionalItems", "minItems", "maxItems", "uniqueItems", "contains",
     "minContains", "maxContains", "unevaluatedItems"}
)  # fmt: skip
# Internal keyword: string/boolean/null values to leave out (what `not: {enum: ...}` becomes).
_NOT_ENUM = "x-gramspec-not-enum"
# Internal keyword: patterns (search semantics) a string must not match (what `not: {pattern: ...}` becomes).
_NOT_PATTERN = "x-gramspec-not-pattern"
_CONDITIONAL = frozenset({"if", "then", "else"})
_STRUCTURAL = frozenset(
    {"properties", "patternProperties", "additionalProperties", "unevaluatedProperties",
     "items", "prefixItems", "additionalItems", "unevaluatedItems"}
)  # fmt: skip
_COMBINATORS = frozenset({"anyOf", "oneOf", "allOf", "not", "if", "then", "else", "$ref", "enum", "const", "type"})

# Decoded-value regexes for formats: each a strict subset of what the format allows.
_DATE = r"\d{4}-(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1\d|2[0-8])|(?:0[13-9]|1[0-2])-(?:29|30)|(?:0[13578]|1[02])-31)"
_TIME = r"(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d{1,9})?(?:Z|[+-](?:[01]\d|2[0-3]):[0-5]\d)"
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_H16 = r"[0-9a-fA-F]{1,4}"
_IPV6 = "|".join(
    [
        rf"(?:{_H16}:){{7}}{_H16}",
        *(rf"(?:{_H16}:){{0,{i}}}{_H16}?::(?:{_H16}:){{0,{5 - i}}}{_H16}" for i in range(6)),
        rf"(?:{_H16}:){{0,6}}{_H16}?::",
        r"::",
    ]
)
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
FORMATS: dict[str, str] = {
    "date": _DATE,
    "time": _TIME,
    "date-time": rf"{_DATE}T{_TIME}",
    "duration": r"P(?:(?:\d+Y(?:\d+M)?(?:\d+D)?|\d+M(?:\d+D)?|\d+D)(?:T(?:\d+H(?:\d+M)?(?:\d+S)?|\d+M(?:\d+S)?|\d+S))?"
    r"|T(?:\d+H(?:\d+M)?(?:\d+S)?|\d+M(?:\d+S)?|\d+S)|\d+W)",
    "email": r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){1,8}",
    "idn-email": r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){1,8}",
    "hostname": rf"{_LABEL}(?:\.{_LABEL}){{0,8}}",
    "idn-hostname": rf"{_LABEL}(?:\.{_LABEL}){{0,8}}",
    "ipv4": rf"{_OCTET}(?:\.{_OCTET}){{3}}",
    "ipv6": _IPV6,
    "uuid": r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
    "uri": r"[a-zA-Z][a-zA-Z0-9+.-]*:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+",
    "iri": r"[a-zA-Z][a-zA-Z0-9+.-]*:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+",
    "uri-reference": r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*",
    "iri-reference": r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*",
    "uri-template": r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%{}]*",
    "json-pointer": r"(?:/(?:[^~/]|~[01])*)*",
    "relative-json-pointer": r"(?:0|[1-9]\d*)(?:#|(?:/(?:[^~/]|~[01])*)*)",
}

#: Default bound on the time one schema may take to compile.
DEFAULT_COMPILE_SECONDS = 30.0
#: Default bound on free whitespace runs in "flexible" mode.
DEFAULT_MAX_WHITESPACE = 4
#: Default bound on how far arrays/objects with counted bounds are unrolled.
DEFAULT_MAX_UNROLL = 1024
#: Names with dependent schemas one object may have (one grammar branch per subset of them present).
MAX_DEPENDENT_SCHEMAS = 6
#: Values an item of a ``uniqueItems`` array may take from, at most (counted per integer range too).
MAX_UNIQUE_VALUES = 64
#: Sets of used values (automaton states) a ``uniqueItems`` array may need, at most.
MAX_UNIQUE_STATES = 4096


@dataclass
class _Dropped:
    items: list[tuple[str, str]] = field(default_factory=list)  # (pointer, keyword)


def compile_json_schema(
    schema: dict[str, Any] | bool | str | type,
    vocab: Vocabulary,
    *,
    whitespace: Whitespace = "compact",
    strict: bool = True,
    max_whitespace: int = DEFAULT_MAX_WHITESPACE,
    max_seconds: float = DEFAULT_COMPILE_SECONDS,
    unlisted_keys: UnlistedKeys = "schema",
) -> CompiledGrammar:
    """Compile a JSON Schema (dict, bool, JSON text or pydantic model class) for ``vocab``.

    Compilation taking longer than ``max_seconds`` stops with :class:`LimitError`.
    ``unlisted_keys="forbid"`` writes no keys beyond the listed ones in objects whose
    schema lists properties and says nothing of other keys (a documented restriction).
    """
    spec = json_schema_spec(
        schema, whitespace=whitespace, strict=strict, max_whitespace=max_whitespace, max_seconds=max_seconds,
        unlisted_keys=unlisted_keys,
    )
    return CompiledGrammar(spec, vocab)


def json_schema_spec(
    schema: dict[str, Any] | bool | str | type,
    *,
    whitespace: Whitespace = "compact",
    strict: bool = True,
    max_whitespace: int = DEFAULT_MAX_WHITESPACE,
    max_seconds: float = DEFAULT_COMPILE_SECONDS,
    unlisted_keys: UnlistedKeys = "schema",
) -> Any:
    """The vocabulary-independent grammar of ``schema`` (see :func:`compile_json_schema`)."""
    if not isinstance(max_seconds, (int, float)) or not max_seconds > 0:
        raise ValueError(f"max_seconds must be a positive number, not {max_seconds!r}")
    if whitespace not in ("compact", "flexible"):
        raise ValueError(f"whitespace must be 'compact' or 'flexible', not {whitespace!r}")
    if not isinstance(max_whitespace, int) or not 0 <= max_whitespace <= 64:
        raise ValueError(f"max_whitespace must be an int from 0 to 64, not {max_whitespace!r}")
    if unlisted_keys not in ("schema", "forbid"):
        raise ValueError(f"unlisted_keys must be 'schema' or 'forbid', not {unlisted_keys!r}")
    root = _load(schema)
    _check_against_metaschema(root)
    compiler = _Compiler(
        root, whitespace=whitespace, strict=strict, max_whitespace=max_whitespace, max_seconds=max_seconds,
        forbid_unlisted_keys=unlisted_keys == "forbid",
    )
    try:
        spec = compiler.build()
    except RecursionError:
        raise LimitError("schema is nested too deeply") from None
    if compiler.dropped.items:
        listed = ", ".join(f"{kw} at {ptr or '#'}" for ptr, kw in compiler.dropped.items)
        warnings.warn(f"strict=False dropped unsupported keywords: {listed}", UserWarning, stacklevel=3)
    return spec


def _load(schema: object) -> Any:
    if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
        return schema.model_json_schema()
    if isinstance(schema, (str, bytes)):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as exc:
            raise SchemaError(f"schema is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(schema, (dict, bool)):
        raise SchemaError(f"a schema must be an object or a boolean, not {type(schema).__name__}")
    return schema


# Keywords that python-jsonschema applies only from (_SINCE) or up to (_UNTIL) a draft; in
# other drafts they are unknown keywords, i.e. annotations (draft 3 is left as it is).
# ``dependencies`` (draft 7 and before) is applied in every draft, a documented restriction:
# schemas without $schema (read as 2020-12) use it as draft 7 does.
_DRAFTS = {
    jsonschema.Draft4Validator: 4, jsonschema.Draft6Validator: 6, jsonschema.Draft7Validator: 7,
    jsonschema.Draft201909Validator: 2019, jsonschema.Draft202012Validator: 2020,
}
_SINCE = {
    "const": 6, "contains": 6, "propertyNames": 6, "if": 7, "then": 7, "else": 7,
    "dependentRequired": 2019, "dependentSchemas": 2019, "unevaluatedProperties": 2019,
    "unevaluatedItems": 2019, "minContains": 2019, "maxContains": 2019, "$recursiveRef": 2019,
    "prefixItems": 2020, "$dynamicRef": 2020,
}  # fmt: skip
_UNTIL = {"$recursiveRef": 2019}
# where a keyword holds subschemas: a map of them, a list of them, or one
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "definitions", "$defs", "dependentSchemas", "dependencies"})
_SCHEMA_LISTS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems", "items"})
_SCHEMA_ONE = frozenset(
    {"items", "additionalItems", "additionalProperties", "unevaluatedItems", "unevaluatedProperties", "contains",
     "propertyNames", "not", "if", "then", "else", "contentSchema"}
)  # fmt: skip


def draft_ignored_keywords(root: Any) -> frozenset[str]:
    """The keywords (of those that vary between drafts) that the draft of ``root`` (its
    ``$schema``, else Draft 2020-12, as python-jsonschema picks it) does not apply: e.g.
    ``if``/``then``/``else`` and ``const`` in draft 4, ``prefixItems`` before 2020-12."""
    cls = jsonschema.validators.validator_for(root, default=jsonschema.Draft202012Validator) if isinstance(root, dict) else jsonschema.Draft202012Validator
    draft = _DRAFTS.get(cls)
    if draft is None:
        return frozenset()
    return frozenset({k for k, v in _SINCE.items() if draft < v} | {k for k, v in _UNTIL.items() if draft > v})


class _DraftView:
    """Schemas with the keywords their draft does not apply left out (copies, one per source
    dict, so that sharing and recursion are kept); other schemas are returned as they are."""

    def __init__(self, root: Any) -> None:
        self.ignored = draft_ignored_keywords(root)
        if self.ignored and not _has_any_key(root, self.ignored):
            self.ignored = frozenset()
        self.copies: dict[int, dict[str, Any]] = {}
        self.keep_alive: list[Any] = []

    def schema(self, node: Any) -> Any:
        if not self.ignored or not isinstance(node, dict):
            return node
        found = self.copies.get(id(node))
        if found is not None:
            return found
        out: dict[str, Any] = {}
        self.copies[id(node)] = out
        self.keep_alive.append(node)
        for key, value in node.items():
            if key in self.ignored:
                continue
            if key in _SCHEMA_MAPS and isinstance(value, dict):
                value = {k: v if isinstance(v, list) else self.schema(v) for k, v in value.items()}
            elif key in _SCHEMA_LISTS and isinstance(value, list):
                value = [self.schema(v) for v in value]
            elif key in _SCHEMA_ONE:
                value = self.schema(value)
            out[key] = value
        return out


class _CopySources:
    """The source dict of each draft view copy, by the copy's id (the copies are made lazily)."""

    def __init__(self, view: _DraftView) -> None:
        self.view = view
        self.by_copy: dict[int, Any] = {}
        self.seen = 0

    def get(self, key: int, default: Any) -> Any:
        if len(self.view.keep_alive) != self.seen:
            for source in self.view.keep_alive[self.seen:]:
                self.by_copy[id(self.view.copies[id(source)])] = source
            self.seen = len(self.view.keep_alive)
        return self.by_copy.get(key, default)


class _RefIndex:
    """Where each ``$ref`` leads, as python-jsonschema (the ``referencing`` library) resolves
    it: against the base URI of the schema that holds it (``$id``, ``id`` in draft 4, joined
    onto the enclosing base), within this document only (other targets are remote)."""

    def __init__(self, root: Any) -> None:
        cls = jsonschema.validators.validator_for(root, default=jsonschema.Draft202012Validator) if isinstance(root, dict) else jsonschema.Draft202012Validator
        self.spec = referencing.jsonschema.specification_with(cls.ID_OF(cls.META_SCHEMA), default=referencing.jsonschema.DRAFT202012)
        resource = self.spec.create_resource(root)
        self.root_base = resource.id() or ""
        self.malformed = False  # a keyword of the wrong kind (where the metaschema check was skipped)
        self.registry = referencing.Registry().with_resource(self.root_base, resource)
        try:
            self.registry = self.registry.crawl()
        except (AttributeError, TypeError):
            self.malformed = True
        # the base URI of each schema dict, by where it stands (None: two bases, unknown)
        self.bases: dict[int, str | None] = {}
        self.keep_alive: list[Any] = []
        stack: list[tuple[Any, str]] = [(root, "")]
        while stack:
            node, base = stack.pop()
            if not isinstance(node, dict):
                continue
            declared = self.spec.id_of(node)
            if declared is not None:
                base = urllib.parse.urljoin(base, declared)
            if id(node) in self.bases:
                if self.bases[id(node)] != base:
                    self.bases[id(node)] = None
                continue
            self.bases[id(node)] = base
            self.keep_alive.append(node)
            try:
                stack.extend((sub, base) for sub in self.spec.subresources_of(node))
            except (AttributeError, TypeError):
                self.malformed = True
        # one base everywhere: a schema that is not in the index (a merge) has it too
        self.single_base = len(set(self.bases.values())) <= 1 and None not in self.bases.values() and not self.malformed
        self.cache: dict[tuple[str, str], Any] = {}

    def base_of(self, source: Any) -> str | None:
        if self.malformed:
            return None
        if self.single_base:
            return self.root_base
        return self.bases.get(id(source)) if isinstance(source, dict) else None

    def lookup(self, ref: str, base: str, pointer: str) -> Any:
        key = (base, ref)
        if key in self.cache:
            return self.cache[key]
        where = pointer + "/$ref"
        try:
            found = self.registry.resolver(base_uri=base).lookup(ref).contents
        except referencing.exceptions.PointerToNowhere:
            raise SchemaError(f"reference {ref!r} points nowhere", pointer=where) from None
        except (referencing.exceptions.NoSuchAnchor, referencing.exceptions.InvalidAnchor):
            raise SchemaError(f"reference {ref!r} names no anchor in the schema", pointer=where) from None
        except referencing.exceptions.Unresolvable:
            target = urllib.parse.urljoin(base, ref)
            raise UnsupportedSchemaError(
                f"remote reference {ref!r} (to {target!r}) is not supported: it leads outside the schema",
                pointer=where,
            ) from None
        self.cache[key] = found
        return found


def _has_any_key(node: Any, keys: frozenset[str]) -> bool:
    stack, seen = [node], set()
    while stack:
        node = stack.pop()
        if isinstance(node, (dict, list)) and id(node) not in seen:
            seen.add(id(node))
            if isinstance(node, dict):
                if not keys.isdisjoint(node):
                    return True
                stack.extend(node.values())
            else:
                stack.extend(node)
    return False


def _check_against_metaschema(root: Any) -> None:
    """Malformed schemas (a keyword with a value of the wrong kind) fail here, with the pointer."""
    if isinstance(root, dict) and "$schema" in root and not isinstance(root["$schema"], str):
        raise SchemaError("$schema must be a string (a URI)", pointer="/$schema")
    if _shares_subschemas(root):
        return  # a DAG built in Python: validating it as a tree could take exponential time
    cls = jsonschema.validators.validator_for(root, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(root)
    except jsonschema.exceptions.SchemaError as exc:
        where = "".join(f"/{_pointer_escape(str(p))}" for p in exc.path)
        raise SchemaError(f"malformed schema: {exc.message}", pointer=where) from None
    except RecursionError:
        raise LimitError("schema is nested too deeply") from None


def _shares_subschemas(root: Any) -> bool:
    """Whether some dict or list occurs twice in ``root`` (never the case for parsed JSON)."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, (dict, list)):
            if id(node) in seen:
                return True
            seen.add(id(node))
            stack.extend(node.values() if isinstance(node, dict) else node)
    return False


def _pointer_escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


class _Compiler:
    def __init__(
        self, root: Any, *, whitespace: Whitespace, strict: bool, max_whitespace: int, max_seconds: float,
        forbid_unlisted_keys: bool = False,
    ) -> None:
        # keywords the schema's draft does not apply are left out of what is compiled; $ref
        # pointers are followed in the schema as written (they may pass through such keywords)
        self.source_root = root
        self.draft_view = _DraftView(root)
        self.root = self.draft_view.schema(root)
        self._refs: _RefIndex | None = None  # built at the first $ref
        self.sources = _CopySources(self.draft_view)
        self.forbid_unlisted_keys = forbid_unlisted_keys
        self.max_seconds = max_seconds
        self.deadline = time.monotonic() + max_seconds
        self.strict = strict
        self.flexible = whitespace == "flexible"
        self.max_ws = max_whitespace
        self.g = GrammarBuilder()
        self.dropped = _Dropped()
        self.memo: dict[int, Symbol] = {}
        self.keep_alive: list[Any] = []  # merged schemas, so ids in memo stay unique
        self.merges: dict[tuple[bool, tuple[int, ...]], Any] = {}
        self.expansions: dict[int, dict[str, Any]] = {}  # schemas with their dependent schemas expanded
        self.siblings: dict[tuple[int, str], dict[str, Any]] = {}
        draft = str(root.get("$schema", "")) if isinstance(root, dict) else ""
        self.ref_siblings_ignored = any(d in draft for d in ("draft-04", "draft-06", "draft-07", "draft-03"))

        def resolve_ref(ref: str, holder: Any = None) -> Any:  # for negations; they read ignores_siblings too
            return self.resolve(ref, "", holder)[0]

        resolve_ref.ignores_siblings = self.ref_siblings_ignored  # type: ignore[attr-defined]
        self.resolve_ref = resolve_ref
        self._any: Symbol | None = None
        # objects a restriction left empty (minProperties short of keys): the error if nothing is left
        self.emptied_by_restriction: list[UnsupportedSchemaError] = []

    # -- entry -----------------------------------------------------------------

    def build(self) -> Any:
        value = self.value(self.root, "")
        root = self.g.nonterminal("document")
        if self.flexible:
            ws = self.ws_terminal()
            self.g.rule(root, value)
            self.g.rule(root, ws, value)
            self.g.rule(root, value, ws)
            self.g.rule(root, ws, value, ws)
        else:
            self.g.rule(root, value)
        spec = self.g.spec(root, "JSON schema")
        if spec is None:
            if self.emptied_by_restriction:  # empty by a restriction, not necessarily unsatisfiable
                raise self.emptied_by_restriction[0]
            raise SchemaError("schema accepts no JSON value (it is unsatisfiable)", pointer="")
        return spec

    # -- errors and drops --------------------------------------------------------

    def unsupported(self, keyword: str, pointer: str, why: str = "") -> None:
        where = f"{pointer}/{_pointer_escape(keyword)}"
        if self.strict:
            detail = f": {why}" if why else ""
            raise UnsupportedSchemaError(f"keyword {keyword!r} cannot be enforced exactly{detail}", pointer=where)
        self.dropped.items.append((pointer, keyword))

    # -- punctuation and whitespace ------------------------------------------------

    def ws_terminal(self) -> Symbol:
        return self.g.regex(rf"[ \t\n\r]{{1,{self.max_ws}}}", "WS")

    def punct(self, char: str) -> Symbol:
        if not self.flexible:
            return self.g.literal(char)
        ws = rf"[ \t\n\r]{{0,{self.max_ws}}}"
        return self.g.regex(ws + re.escape(char) + ws, repr(char))

    def without(self, schema: dict[str, Any], keyword: str) -> dict[str, Any]:
        """``schema`` less ``keyword``, the same dict each time: merges of it are memoized by
        id, so recursive schemas (a property ``$ref: "#"`` beside ``anyOf``) close into cycles."""
        key = (id(schema), keyword)
        found = self.siblings.get(key)
        if found is None:
            found = self.siblings[key] = {k: v for k, v in schema.items() if k != keyword}
            self.keep_alive.append((schema, found))
        return found

    # -- references ------------------------------------------------------------------

    def resolve(self, ref: str, pointer: str, holder: Any = None) -> tuple[Any, str]:
        """The target of ``ref``, held by the schema ``holder`` (a source schema or its draft
        view copy): references resolve against its base URI, so a holder whose base is not
        known for sure (a merge of schemas from several resources) is an error, never a guess."""
        if self._refs is None:
            self._refs = _RefIndex(self.source_root)
        source = self.sources.get(id(holder), holder)
        base = self._refs.base_of(source)
        if base is None:
            raise UnsupportedSchemaError(
                f"reference {ref!r} cannot be resolved exactly: the base URI of the schema holding it is not "
                "known for sure (it was combined from schemas with different base URIs ($id), or the schema is malformed)",
                pointer=pointer + "/$ref",
            )
        node = self._refs.lookup(ref, base, pointer)
        return self.draft_view.schema(node), ref

    # -- values -------------------------------------------------------------------------

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise LimitError(f"compiling the schema took longer than {self.max_seconds:g} s (max_seconds)")

    def value(self, schema: Any, pointer: str) -> Symbol:
        self.check_time()
        if schema is True or schema == {}:
            return self.any_value()
        key = id(schema)
        found = self.memo.get(key)
        if found is not None:
            return found
        symbol = self.g.nonterminal(pointer or "#")
        self.memo[key] = symbol
        if schema is False:
            return symbol  # no rules: nothing matches
        if not isinstance(schema, dict):
            raise SchemaError(f"a schema must be an object or a boolean, not {type(schema).__name__}", pointer=pointer)
        for alternative in self.alternatives(schema, pointer):
            self.g.rule(symbol, alternative)
        return symbol

    def alternatives(self, schema: dict[str, Any], pointer: str) -> Iterator[Symbol]:
        """Symbols whose union is the language of ``schema``."""
        if _has_dependent_schemas(schema):
            yield from self.alternatives(self.expand_dependent_schemas(schema, pointer), pointer)
            return
        if "$ref" in schema:
            target, _ = self.resolve(schema["$ref"], pointer, schema)
            rest = self.without(schema, "$ref")
            if self.ref_siblings_ignored or not _constraining(rest):
                yield self.value(target, pointer + "/$ref")
                return
            merged = self.merge([rest, target], pointer)
            yield self.value(merged, pointer)
            return
        if "allOf" in schema:
            parts = schema["allOf"]
            if not isinstance(parts, list):
                raise SchemaError("allOf must be an array", pointer=pointer + "/allOf")
            rest = self.without(schema, "allOf")
            yield self.value(self.merge([rest, *parts], pointer), pointer)
            return
        for keyword in ("anyOf", "oneOf"):
            if keyword in schema:
                branches = schema[keyword]
                if not isinstance(branches, list) or not branches:
                    raise SchemaError(f"{keyword} must be a non-empty array", pointer=f"{pointer}/{keyword}")
                rest = self.without(schema, keyword)
                if keyword == "oneOf" and not _pairwise_disjoint(branches, self):
                    # exactly one: branch i and the negation of every other branch
                    negations = [_negate(b, self.resolve_ref) for b in branches]  # type: ignore[arg-type]
                    if any(n is None for n in negations) or any(_evaluation_clash(rest, n) for n in negations):
                        self.unsupported("oneOf", pointer, "branches may overlap and some cannot be negated")
                    else:
                        for i, branch in enumerate(branches):
                            others = [n for j, n in enumerate(negations) if j != i]
                            branch_pointer = f"{pointer}/oneOf/{i}"
                            yield self.value(self.merge([rest, branch, *others], branch_pointer), branch_pointer)
                        return
                for i, branch in enumerate(branches):
                    branch_pointer = f"{pointer}/{keyword}/{i}"
                    if _constraining(rest):
                        yield self.value(self.merge([rest, branch], branch_pointer), branch_pointer)
                    else:
                        yield self.value(branch, branch_pointer)
                return
        if "not" in schema:
            positive = self.apply_not(schema, pointer)
            if positive is None:
                return
            if "anyOf" in positive or "oneOf" in positive or "allOf" in positive:
                yield from self.alternatives(positive, pointer)
                return
            schema = positive
        if "if" in schema and ("then" in schema or "else" in schema):
            yield from self.if_then_else(schema, pointer)
            return
        for keyword in ("$dynamicRef", "$recursiveRef"):
            if keyword in schema:
                self.unsupported(keyword, pointer, "dynamic references are not supported")
        if "enum" in schema or "const" in schema:
            yield from self.enumerated(schema, pointer)
            return
        yield from self.typed(schema, pointer)

    def expand_dependent_schemas(self, schema: dict[str, Any], pointer: str) -> dict[str, Any]:
        """``schema`` with ``dependentSchemas`` (and the schema form of ``dependencies``) as
        ``anyOf`` branches: one for non-objects, which the keywords leave alone, and one per
        choice of which trigger names are present, requiring those names and their schemas
        and forbidding the others. This is ``allOf: [{if: {required: [a]}, then: S}, ...]``
        with each ``if`` resolved; the branches are disjoint, so annotations (for
        ``unevaluatedProperties``) come from exactly one of them."""
        found = self.expansions.get(id(schema))
        if found is not None:
            return found
        rest = dict(schema)
        triggers: dict[str, Any] = {}
        keywords = [k for k in ("dependentSchemas", "dependencies") if k in schema]
        for keyword in keywords:
            entries = rest.pop(keyword)
            if not isinstance(entries, dict):
                raise SchemaError(f"{keyword} must be an object", pointer=f"{pointer}/{keyword}")
            lists = {k: v for k, v in entries.items() if isinstance(v, list)}
            if keyword == "dependencies" and lists:
                rest[keyword] = lists  # the array form stays: object() enforces it
            for name, sub in entries.items():
                if name in lists or sub is True or sub == {}:
                    continue
                triggers[name] = {"allOf": [triggers[name], sub]} if name in triggers else sub
        if len(triggers) > MAX_DEPENDENT_SCHEMAS:
            self.unsupported(keywords[0], pointer, f"more than {MAX_DEPENDENT_SCHEMAS} names with dependent schemas")
            triggers = {}
        branches: list[Any] = [{"type": [t for t in _TYPES if t not in ("object", "integer")]}] if triggers else []
        for present in itertools.product((False, True), repeat=len(triggers)) if triggers else ():
            chosen = [name for name, there in zip(triggers, present) if there]
            branch: dict[str, Any] = {"type": "object", "required": chosen, "allOf": [triggers[n] for n in chosen]}
            absent = {name: False for name in triggers if name not in chosen}
            if absent:
                branch["properties"] = absent
            branches.append(branch)
        if branches and "anyOf" in rest:  # the schema's own anyOf and these must both hold
            rest["allOf"] = [*rest.get("allOf", []), {"anyOf": branches}]
        elif branches:
            rest["anyOf"] = branches
        self.expansions[id(schema)] = rest
        self.keep_alive.append((schema, rest))
        return rest

    def if_then_else(self, schema: dict[str, Any], pointer: str) -> Iterator[Symbol]:
        condition = schema["if"]
        rest = {k: v for k, v in schema.items() if k not in ("if", "then", "else")}
        negated = _negate(condition, self.resolve_ref)
        if negated is None:
            self.unsupported("if", pointer, "its negation is not expressible")
            yield self.value(rest, pointer)
            return
        if _evaluation_clash(rest, negated):
            self.unsupported("if", pointer, "its negation would mark items or properties as evaluated")
            yield self.value(rest, pointer)
            return
        then = schema.get("then", True)
        otherwise = schema.get("else", True)
        yield self.value(self.merge([rest, condition, then], pointer + "/then"), pointer + "/then")
        yield self.value(self.merge([rest, negated, otherwise], pointer + "/else"), pointer + "/else")

    def apply_not(self, schema: dict[str, Any], pointer: str) -> dict[str, Any] | None:
        """``schema`` with its ``not`` turned into positive keywords; None if nothing is left."""
        negated = _negate(schema["not"], self.resolve_ref)
        rest = {k: v for k, v in schema.items() if k != "not"}
        if negated is None:
            self.unsupported("not", pointer, "its negation is not expressible (see docs/json_schema.md)")
            return rest
        if _evaluation_clash(rest, negated):
            self.unsupported("not", pointer, "its negation would mark items or properties as evaluated")
            return rest
        merged = self.merge([rest, negated], pointer)
        return merged if isinstance(merged, dict) else None

    # -- merging (allOf) ---------------------------------------------------------------

    def merge(self, schemas: list[Any], pointer: str, *, container: bool = True) -> Any:
        """One schema equivalent to all of ``schemas`` together.

        With ``container``, ``schemas[0]`` is the container (the schema holding ``allOf``, the
        ``$ref`` or the branches): its ``unevaluated*`` keywords see what the
        others evaluate. The others' ``additionalProperties``/``items`` only
        see their own siblings, so they constrain the other schemas' properties
        and items too.
        """
        self.check_time()
        kept = [s for s in schemas if s is not True and s != {}]
        if len(kept) == 1:  # X and true is X itself: recursive merges then close into cycles
            return kept[0]
        key = (container, tuple(id(s) for s in schemas))
        if key in self.merges:  # recursive definitions merge into a cycle of merged schemas
            return self.merges[key]
        placeholder: dict[str, Any] = {}
        self.merges[key] = placeholder
        self.keep_alive.append((schemas, placeholder))
        merged = self._merge(schemas, pointer, container)
        if merged is False:
            placeholder["not"] = {}  # whoever already holds it gets the false schema
            self.merges[key] = False
            return False
        placeholder.update(merged)
        return placeholder

    def _merge(self, schemas: list[Any], pointer: str, container: bool) -> Any:
        flat: list[dict[str, Any]] = []
        for schema in schemas:
            schema = self.flatten(schema, pointer)
            if schema is False:
                return False
            flat.append(schema)
        out: dict[str, Any] = {}
        for schema in flat:
            plain = {k: v for k, v in schema.items() if k not in _STRUCTURAL | _CONDITIONAL}
            out = _merge_two(out, plain, self, pointer)
            if out is False:
                return False
            # if/then/else act within their own schema: as (if and then) or (not if and else)
            if "if" in schema and ("then" in schema or "else" in schema):
                negated = _negate(schema["if"], self.resolve_ref)
                if negated is None or _evaluation_clash(flat[0], negated):
                    self.unsupported("if", pointer, "its negation is not expressible")
                    continue
                branches = [
                    self.merge([schema["if"], schema.get("then", True)], pointer + "/then", container=False),
                    self.merge([negated, schema.get("else", True)], pointer + "/else", container=False),
                ]
                out = _merge_two(out, {"anyOf": [b for b in branches if b is not False] or [False]}, self, pointer)
        out.update(self.merge_objects(flat, pointer, container))
        arrays = self.merge_arrays(flat, pointer, container)
        if arrays is False:
            return False
        out.update(arrays)
        return out

    def flatten(self, schema: Any, pointer: str) -> Any:
        """``schema`` with top-level ``$ref``/``allOf`` merged in and draft-7 tuple items renamed."""
        for _ in range(32):  # follow $ref chains
            if isinstance(schema, dict) and "$ref" in schema:
                target, _ = self.resolve(schema["$ref"], pointer, schema)
                rest = self.without(schema, "$ref")
                schema = self.merge([rest, target], pointer) if _constraining(rest) and not self.ref_siblings_ignored else target
            else:
                break
        if schema is True:
            return {}
        if schema is False:
            return False
        if not isinstance(schema, dict):
            raise SchemaError("expected a schema", pointer=pointer)
        if _has_dependent_schemas(schema):
            schema = self.expand_dependent_schemas(schema, pointer)
        if "allOf" in schema:  # the merge of a single constraining part is that part, unflattened
            return self.flatten(self.merge([self.without(schema, "allOf"), *schema["allOf"]], pointer), pointer)
        if isinstance(schema.get("items"), list):  # draft 4-7 tuple form
            tuple_form = schema
            schema = {k: v for k, v in schema.items() if k not in ("items", "additionalItems")}
            schema["prefixItems"] = tuple_form["items"]
            if "additionalItems" in tuple_form:
                schema["items"] = tuple_form["additionalItems"]
        return schema

    def merge_objects(self, flat: list[dict[str, Any]], pointer: str, container: bool) -> dict[str, Any]:
        if not any(k in s for s in flat for k in ("properties", "patternProperties", "additionalProperties", "unevaluatedProperties")):
            return {}
        container_extra = flat[0].get("unevaluatedProperties") if container else None
        covers_all = any("additionalProperties" in s or ((i or not container) and "unevaluatedProperties" in s) for i, s in enumerate(flat))

        def rest(i: int) -> Any:  # what schema i says of a name it does not list
            s = flat[i]
            if "additionalProperties" in s:
                return s["additionalProperties"]
            return s.get("unevaluatedProperties", True) if i or not container else True

        names = list(dict.fromkeys(n for s in flat for n in (s.get("properties") or {})))
        properties = {}
        for name in names:
            parts = []
            for i, s in enumerate(flat):
                props = s.get("properties") or {}
                matched = [sub for pat, sub in (s.get("patternProperties") or {}).items() if re.search(pat, name)]
                parts.extend([props[name]] if name in props else matched or [rest(i)])
            properties[name] = self.merge(parts, f"{pointer}/properties/{_pointer_escape(name)}", container=False)
        patterns: dict[str, Any] = {}
        for i, s in enumerate(flat):
            for pat, sub in (s.get("patternProperties") or {}).items():
                parts = [sub, *(rest(j) for j in range(len(flat)) if j != i)]
                patterns[pat] = self.merge([patterns[pat], *parts] if pat in patterns else parts, pointer, container=False)
        extra = [rest(i) for i in range(len(flat))]
        if container_extra is not None and not covers_all:
            extra.append(container_extra)
        out: dict[str, Any] = {"properties": properties}
        if patterns:
            out["patternProperties"] = patterns
        additional = self.merge(extra, pointer + "/additionalProperties", container=False)
        # under unlisted_keys="forbid", a merged schema keeps saying that its parts speak of
        # other keys (additionalProperties: true), so that object() does not close it
        speaks_of_extra = any(k in s for s in flat for k in ("additionalProperties", "unevaluatedProperties"))
        if additional != {} or (self.forbid_unlisted_keys and speaks_of_extra):
            out["additionalProperties"] = additional
        if self.forbid_unlisted_keys and any(_lists_properties(s) for s in flat):
            out[_LISTS_PROPERTIES] = True
        return out

    def merge_arrays(self, flat: list[dict[str, Any]], pointer: str, container: bool) -> Any:
        if not any(k in s for s in flat for k in ("items", "prefixItems", "unevaluatedItems")):
            return {}
        container_extra = flat[0].get("unevaluatedItems") if container else None
        covers_all = any("items" in s or ((i or not container) and "unevaluatedItems" in s) for i, s in enumerate(flat))
        if container_extra is not None and any("contains" in s for s in flat):
            self.unsupported("unevaluatedItems", pointer, "together with contains")

        def rest(i: int) -> Any:
            s = flat[i]
            if "items" in s:
                return s["items"]
            return s.get("unevaluatedItems", True) if i or not container else True

        length = max(len(s.get("prefixItems") or []) for s in flat)
        prefix = []
        for j in range(length):
            parts = [(s.get("prefixItems") or [])[j] if j < len(s.get("prefixItems") or []) else rest(i) for i, s in enumerate(flat)]
            prefix.append(self.merge(parts, f"{pointer}/prefixItems/{j}", container=False))
        extra = [rest(i) for i in range(len(flat))]
        if container_extra is not None and not covers_all:
            extra.append(container_extra)
        out: dict[str, Any] = {}
        if prefix:
            out["prefixItems"] = prefix
        items = self.merge(extra, pointer + "/items", container=False)
        if items != {}:
            out["items"] = items
        return out

    # -- enum / const ---------------------------------------------------------------------

    def enumerated(self, schema: dict[str, Any], pointer: str) -> Iterator[Symbol]:
        for value in self.enum_values(schema, pointer):
            yield self.constant(value)

    def enum_values(self, schema: dict[str, Any], pointer: str) -> list[Any]:
        """The ``enum``/``const`` values that also satisfy the sibling keywords, one per spelling."""
        values = [schema["const"]] if "const" in schema else schema["enum"]
        if not isinstance(values, list):
            raise SchemaError("enum must be an array", pointer=pointer + "/enum")
        rest = {k: v for k, v in schema.items() if k not in ("enum", "const")}
        check = None
        if _constraining(rest):
            check = jsonschema.validators.validator_for(self.root, default=jsonschema.Draft202012Validator)(
                rest, format_checker=jsonschema.FormatChecker()
            )
        seen: set[str] = set()
        kept: list[Any] = []
        excluded = schema.get(_NOT_ENUM, [])
        for value in values:
            if any(_json_equal(value, v) for v in excluded):
                continue
            if isinstance(value, str) and any(re.search(p, value) for p in schema.get(_NOT_PATTERN, [])):
                continue
            if check is not None:
                try:
                    if not check.is_valid(value):
                        continue
                except (jsonschema.exceptions.RefResolutionError, jsonschema.exceptions.SchemaError, KeyError):  # type: ignore[attr-defined]
                    self.unsupported("enum", pointer, "cannot check enum values against sibling keywords")
            text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=False)
            if text in seen:
                continue
            seen.add(text)
            kept.append(value)
        return kept

    def constant(self, value: Any) -> Symbol:
        if isinstance(value, str):
            return self.string_literal(value)
        if isinstance(value, dict):
            symbol = self.g.nonterminal("const-object")
            parts: list[Symbol] = [self.punct("{")]
            for i, (k, v) in enumerate(value.items()):
                if i:
                    parts.append(self.punct(","))
                parts.extend([self.string_literal(k), self.punct(":"), self.constant(v)])
            parts.append(self.punct("}"))
            self.g.rule(symbol, *parts)
            return symbol
        if isinstance(value, list):
            symbol = self.g.nonterminal("const-array")
            parts = [self.punct("[")]
            for i, v in enumerate(value):
                if i:
                    parts.append(self.punct(","))
                parts.append(self.constant(v))
            parts.append(self.punct("]"))
            self.g.rule(symbol, *parts)
            return symbol
        return self.g.literal(json.dumps(value))

    # -- types -------------------------------------------------------------------------------

    def typed(self, schema: dict[str, Any], pointer: str) -> Iterator[Symbol]:
        types = schema.get("type")
        if types is None:
            allowed = set(_TYPES)
        else:
            listed = [types] if isinstance(types, str) else types
            if not isinstance(listed, list) or any(t not in _TYPES for t in listed):
                raise SchemaError(f"type must be one of {', '.join(_TYPES)} or a list of them", pointer=pointer + "/type")
            allowed = set(listed)
        if "number" in allowed:
            allowed.discard("integer")
        for t in _TYPES:
            if t not in allowed:
                continue
            excluded = schema.get(_NOT_ENUM, [])
            if t == "null":
                if not any(v is None for v in excluded):
                    yield self.g.literal("null")
            elif t == "boolean":
                for value in (True, False):
                    if not any(v is value for v in excluded):
                        yield self.g.literal(json.dumps(value))
            elif t == "string":
                symbol = self.string(schema, pointer)
                if symbol is not None:
                    yield symbol
            elif t in ("number", "integer"):
                symbol = self.number(schema, pointer, integer=t == "integer")
                if symbol is not None:
                    yield symbol
            elif t == "object":
                yield self.object(schema, pointer)
            elif t == "array":
                yield self.array(schema, pointer)

    # -- strings -------------------------------------------------------------------------------

    def string(self, schema: dict[str, Any], pointer: str) -> Symbol | None:
        patterns: list[str] = []
        raw_patterns = schema.get("pattern")
        for i, raw in enumerate(raw_patterns if isinstance(raw_patterns, list) else [raw_patterns] if raw_patterns is not None else []):
            if not isinstance(raw, str):
                raise SchemaError("pattern must be a string", pointer=pointer + "/pattern")
            full = self.search_to_fullmatch(raw, pointer)
            if full is not None:
                patterns.append(full)
        fmt = schema.get("format")
        if fmt is not None:
            regex = FORMATS.get(fmt)
            if regex is not None:
                patterns.append(regex)
            elif fmt == "regex":
                self.unsupported("format", pointer, "format 'regex' is not a regular language")
        min_length = _non_negative_int(schema.get("minLength", 0), pointer + "/minLength")
        max_length = schema.get("maxLength")
        if max_length is not None:
            max_length = _non_negative_int(max_length, pointer + "/maxLength")
            if max_length < min_length:
                return None
        excluded = tuple(sorted({re.escape(v) for v in schema.get(_NOT_ENUM, []) if isinstance(v, str)}))
        for raw in schema.get(_NOT_PATTERN, []):
            full = self.search_to_fullmatch(raw, pointer)
            if full is None:
                return None  # unsupported and dropped: keep nothing rather than the complement
            excluded += (full,)
        return self.string_terminal(tuple(patterns), min_length, max_length, pointer, excluded)

    def string_literal(self, value: str) -> Symbol:
        """A known string (a property name, an enum or const value) in its one canonical
        spelling: escaping only what JSON requires. Other spellings are valid JSON too,
        but a model that wanders into ``\\u0065`` escapes inside a key writes worse JSON."""
        return self.g.literal(json.dumps(value, ensure_ascii=False))

    def string_terminal(
        self,
        patterns: tuple[str, ...],
        min_length: int,
        max_length: int | None,
        pointer: str = "",
        excluded: tuple[str, ...] = (),
    ) -> Symbol:
        key = ("str", patterns, min_length, max_length, excluded)
        name = "STRING" if not patterns else f"STRING~{patterns[0][:40]}"

        def make() -> ByteDFA:
            try:
                dfa = json_string_dfa(patterns, min_length=min_length, max_length=max_length)
                if excluded:  # regexes of decoded values to leave out
                    dfa = difference(dfa, json_string_dfa(("|".join(f"(?:{v})" for v in excluded),)))
                return dfa
            except GrammarError as exc:
                raise UnsupportedSchemaError(f"pattern cannot be compiled: {exc}", pointer=pointer + "/pattern") from None

        return self.g.terminal(key, name, make)

    def search_to_fullmatch(self, pattern: str, pointer: str) -> str | None:
        """A regex that fully matches what ``re.search(pattern, s)`` finds anywhere in ``s``."""
        try:
            re.compile(pattern)
        except re.error as exc:
            raise SchemaError(f"invalid pattern {pattern!r}: {exc}", pointer=pointer + "/pattern") from None
        alternatives = _split_top_level(pattern)
        if len(alternatives) > 1 and _has_anchor(pattern):  # anchors per alternative: ^a|b$
            parts = [self.search_to_fullmatch(a, pointer) for a in alternatives]
            return None if any(p is None for p in parts) else "|".join(f"(?:{p})" for p in parts)
        core, start, end = pattern, False, ""
        if core.startswith("^"):
            core, start = core[1:], True
        elif core.startswith(r"\A"):
            core, start = core[2:], True
        if core.endswith(r"\Z") and not _escaped_at(core, len(core) - 2):
            core, end = core[:-2], "Z"
        elif core.endswith("$") and not _escaped_at(core, len(core) - 1):
            core, end = core[:-1], "$"
        if _has_anchor(core) or ((start or end) and _top_level_branch(core)):
            self.unsupported("pattern", pointer, "anchors inside the pattern")
            return None
        prefix = "" if start else "(?s:.*)"
        suffix = "\n?" if end == "$" else "" if end == "Z" else "(?s:.*)"
        return f"{prefix}(?:{core}){suffix}"

    # -- numbers -------------------------------------------------------------------------------

    def number(self, schema: dict[str, Any], pointer: str, *, integer: bool) -> Symbol | None:
        low, low_strict, high, high_strict = _bounds(schema, pointer)
        multiple = schema.get("multipleOf")
        if multiple is not None:
            if not isinstance(multiple, (int, float)) or isinstance(multiple, bool) or multiple <= 0:
                raise SchemaError("multipleOf must be a positive number", pointer=pointer + "/multipleOf")
            if float(multiple).is_integer():
                integer = True
                if multiple != 1:
                    return self.multiple_of(int(multiple), low, low_strict, high, high_strict, pointer)
            else:
                self.unsupported("multipleOf", pointer, "only integer multiples are expressible")
        if integer:
            lo, hi = _integer_bounds(low, low_strict, high, high_strict)
            if lo is not None and hi is not None and lo > hi:
                return None
            return self.g.terminal(("int", lo, hi), f"INT[{lo},{hi}]", lambda: integer_range_dfa(lo, hi))
        if low is None and high is None:
            return self.g.regex(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?", "NUMBER")
        key = ("number", low, low_strict, high, high_strict)
        dfa = number_range_dfa(low, low_strict, high, high_strict)
        if not dfa.accepting.any():
            return None
        return self.g.terminal(key, f"NUMBER[{low},{high}]", lambda: dfa)

    def multiple_of(
        self, k: int, low: float | None, low_strict: bool, high: float | None, high_strict: bool, pointer: str
    ) -> Symbol | None:
        lo, hi = _integer_bounds(low, low_strict, high, high_strict)
        if lo is not None and hi is not None and lo > hi:
            return None
        if k > 10_000:
            self.unsupported("multipleOf", pointer, f"multipleOf {k} is over the limit of 10000")
        key = ("multiple", k, lo, hi)
        return self.g.terminal(key, f"INT%{k}", lambda: intersect(integer_range_dfa(lo, hi), _multiples(k)))

    # -- objects ---------------------------------------------------------------------------

    def object(self, schema: dict[str, Any], pointer: str) -> Symbol:
        g = self.g
        properties = schema.get("properties", {})
        if not isinstance(properties, dict):
            raise SchemaError("properties must be an object", pointer=pointer + "/properties")
        required = schema.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise SchemaError("required must be an array of strings", pointer=pointer + "/required")
        dependencies = schema.get("dependentRequired") or {
            k: v for k, v in (schema.get("dependencies") or {}).items() if isinstance(v, list)
        }
        if not isinstance(dependencies, dict) or not all(
            isinstance(v, list) and all(isinstance(x, str) for x in v) for v in dependencies.values()
        ):
            raise SchemaError("dependentRequired must map names to arrays of names", pointer=pointer + "/dependentRequired")
        dependents = {t: set(v) - {t} for t, v in dependencies.items() if set(v) - {t}}
        relevant = set(dependents) | {d for v in dependents.values() for d in v}
        if len(relevant) > 10:
            self.unsupported("dependentRequired", pointer, "more than 10 names take part")
            dependents, relevant = {}, set()
        patterns = schema.get("patternProperties", {}) or {}
        additional = schema.get("additionalProperties", schema.get("unevaluatedProperties", True))
        names = list(properties) + [r for r in dict.fromkeys(required) if r not in properties]
        names += [d for d in sorted(relevant) if d not in names]  # every name that takes part gets a slot
        required_set = set(required)
        min_props = _non_negative_int(schema.get("minProperties", 0), pointer + "/minProperties")
        max_props = schema.get("maxProperties")
        if max_props is not None:
            max_props = _non_negative_int(max_props, pointer + "/maxProperties")
        name_filter = schema.get("propertyNames")

        def value_schema(name: str) -> Any:
            parts = []
            if name in properties:
                parts.append(properties[name])
            for pattern, sub in patterns.items():
                if re.search(pattern, name):
                    parts.append(sub)
            if not parts:
                parts.append(additional)
            return parts[0] if len(parts) == 1 else self.merge(parts, f"{pointer}/properties/{_pointer_escape(name)}")

        entries: list[tuple[Symbol, bool, str]] = []
        for name in names:
            if name_filter not in (None, True) and not _name_allowed(name, name_filter, self):
                if name in required_set:
                    return g.nonterminal("unsatisfiable")
                continue
            sub = value_schema(name)
            if sub is False:
                if name in required_set:
                    return g.nonterminal("unsatisfiable")
                continue
            kv = g.nonterminal(f"{pointer}/properties/{name}")
            value_pointer = f"{pointer}/properties/{_pointer_escape(name)}"
            g.rule(kv, self.string_literal(name), self.punct(":"), self.value(sub, value_pointer))
            entries.append((kv, name in required_set, name))
        position = {name: i for i, (_, _, name) in enumerate(entries)}
        # a trigger may appear only if its dependents that come before it did (those after are
        # enforced when they are skipped); a dependent that cannot appear rules the trigger out
        allowed_with: dict[int, frozenset[str] | None] = {}
        for i, (_, _, name) in enumerate(entries):
            if name in dependents:
                needed = dependents[name]
                allowed_with[i] = None if needed - position.keys() else frozenset(d for d in needed if position[d] < i)

        # unlisted_keys="forbid": a schema listing properties and silent on other keys gets none
        closed = self.forbid_unlisted_keys and _closed_by_forbid(schema)
        extra = None if closed else self.extra_properties(names, patterns, additional, name_filter, pointer)
        cap = max_props if max_props is not None else min_props
        if cap > DEFAULT_MAX_UNROLL:
            raise LimitError(f"minProperties/maxProperties {cap} is over the limit of {DEFAULT_MAX_UNROLL}", )
        n = len(entries)
        if extra is not None and min_props > n + 1:
            self.emptied_by_restriction.append(UnsupportedSchemaError(
                "keyword 'minProperties' cannot be enforced exactly: it needs two or more distinct keys "
                "beyond the listed properties (extra keys count once)", pointer=pointer + "/minProperties"))
        if closed and min_props > n:
            self.emptied_by_restriction.append(UnsupportedSchemaError(
                f"keyword 'minProperties' cannot be met with unlisted_keys='forbid': it needs keys beyond "
                f"the {n} the schema lists", pointer=pointer + "/minProperties"))
        memo: dict[tuple[str, int, int, frozenset[str]], Symbol] = {}
        left_tail: list[Symbol] = []
        after: dict[int, Symbol] = {}

        def tail_list() -> Symbol:
            # L -> ε | L "," EXTRA   (left recursive, so long tails share parser states)
            if not left_tail:
                symbol = g.nonterminal(f"{pointer}/additional*")
                g.rule(symbol)
                assert extra is not None
                g.rule(symbol, symbol, self.punct(","), extra)
                left_tail.append(symbol)
            return left_tail[0]

        def seq(first: bool, i: int, count: int, present: frozenset[str] = frozenset()) -> Symbol:
            key = ("F" if first else "R", i, count, present)
            found = memo.get(key)
            if found is not None:
                return found
            symbol = g.nonterminal(f"{pointer}/{key[:3]}")
            memo[key] = symbol
            nxt = min(count + 1, cap) if max_props is None else count + 1
            sep = () if first else (self.punct(","),)
            if i < n:
                kv, is_required, name = entries[i]
                needed = allowed_with.get(i, frozenset())
                if (max_props is None or count + 1 <= max_props) and needed is not None and needed <= present:
                    g.rule(symbol, *sep, kv, seq(False, i + 1, nxt, present | {name} if name in relevant else present))
                demanded = any(name in dependents.get(t, ()) for t in present)
                if not is_required and not demanded:
                    g.rule(symbol, seq(first, i + 1, count, present))
                return symbol
            # an extra key may be written twice (a grammar cannot tell the keys of a large language
            # apart) and a parser keeps one, so extra keys count once toward minProperties (valid
            # objects that need two distinct ones are left out) and each time toward maxProperties
            if count >= min_props:
                g.rule(symbol)
            if extra is not None and count + 1 >= min_props and (max_props is None or count + 1 <= max_props):
                g.rule(symbol, *sep, extra, more_extras(count + 1))
            return symbol

        def more_extras(count: int) -> Symbol:
            # the extra pairs after the first, ``count`` properties written so far
            if max_props is None:
                return tail_list()
            if not after:
                assert extra is not None
                for c in range(max_props, -1, -1):  # from the end: no recursion
                    symbol = g.nonterminal(f"{pointer}/additional{c}")
                    g.rule(symbol)
                    if c < max_props:
                        g.rule(symbol, self.punct(","), extra, after[c + 1])
                    after[c] = symbol
            return after[count]

        for i in range(n, -1, -1) if not dependents else ():  # from the end: shallow recursion
            for count in range(cap + 1):
                seq(False, i, count)
                seq(True, i, count)
        symbol = g.nonterminal(pointer + "/object")
        g.rule(symbol, self.punct("{"), seq(True, 0, 0), self.punct("}"))
        return symbol

    def extra_properties(
        self, names: list[str], patterns: dict[str, Any], additional: Any, name_filter: Any, pointer: str
    ) -> Symbol | None:
        """A symbol for one extra "key":value pair (keys not in ``names``), or None."""
        g = self.g
        alternatives: list[tuple[ByteDFA, Any, str]] = []
        key_filter = _name_filter_dfa(name_filter, self, pointer) if name_filter not in (None, True) else None
        full = {p: self.search_to_fullmatch(p, f"{pointer}/patternProperties") for p in patterns}
        names_regex = [re.escape(n) for n in names]

        def keys_except(allowed: tuple[str, ...], excluded: list[str]) -> ByteDFA:
            dfa = json_string_dfa(allowed)
            if excluded:
                dfa = difference(dfa, json_string_dfa(("|".join(f"(?:{e})" for e in excluded),)))
            return dfa

        found = {p: f for p, f in full.items() if f is not None}
        usable = list(found)
        # a key matching several patterns must match all their schemas: one key language per
        # combination of patterns (up to 4 patterns; beyond, keys matching two are left out)
        width = len(usable) if len(usable) <= 4 else 1
        for size in range(1, width + 1):
            for group in itertools.combinations(usable, size):
                subs = [patterns[p] for p in group]
                if any(sub is False for sub in subs):
                    continue
                others = [found[p] for p in usable if p not in group]
                dfa = keys_except(tuple(found[p] for p in group), [*others, *names_regex])
                where = f"{pointer}/patternProperties/{_pointer_escape(group[0])}"
                alternatives.append((dfa, subs[0] if size == 1 else self.merge(subs, where, container=False), where))
        if additional is not False:
            dfa = keys_except((), [*found.values(), *names_regex])
            alternatives.append((dfa, additional, f"{pointer}/additionalProperties"))
        if not alternatives:
            return None
        symbol = g.nonterminal(f"{pointer}/extra")
        for dfa, sub, sub_pointer in alternatives:
            if key_filter is not None:
                dfa = intersect(dfa, key_filter)
            if not dfa.accepting.any():
                continue
            key = g.terminal(("dfa", id(dfa)), "KEY", lambda dfa=dfa: dfa)  # type: ignore[misc]
            self.keep_alive.append(dfa)
            g.rule(symbol, key, self.punct(":"), self.value(sub, sub_pointer))
        return symbol

    # -- arrays ----------------------------------------------------------------------------------

    def array(self, schema: dict[str, Any], pointer: str) -> Symbol:
        g = self.g
        prefix = schema.get("prefixItems")
        items = schema.get("items", schema.get("unevaluatedItems", True))
        if isinstance(items, list):  # draft 4-7 tuple form
            prefix, items = items, schema.get("additionalItems", True)
        prefix = list(prefix or [])
        min_items = _non_negative_int(schema.get("minItems", 0), pointer + "/minItems")
        max_items = schema.get("maxItems")
        if max_items is not None:
            max_items = _non_negative_int(max_items, pointer + "/maxItems")
        contains = schema.get("contains")
        min_contains = max_contains = None
        if contains is not None:
            min_contains = _non_negative_int(schema.get("minContains", 1), pointer + "/minContains")
            if "maxContains" in schema:
                max_contains = _non_negative_int(schema["maxContains"], pointer + "/maxContains")
        longest = len(prefix) if items is False else None  # no arrays longer than this
        if max_items is not None:
            longest = max_items if longest is None else min(longest, max_items)
        if schema.get("uniqueItems") is True and (longest is None or longest > 1):
            unique = self.unique_array(prefix, items, min_items, longest, contains, min_contains, max_contains, pointer)
            if unique is not None:
                return unique
        negated = None
        if max_contains is not None:
            negated = _negate(contains, self.resolve_ref)
            if negated is None:  # items that do not match would need "not contains"
                self.unsupported("maxContains", pointer, "the negation of contains is not expressible")
                max_contains = None
        if contains is None or (min_contains == 0 and max_contains is None):
            variants: tuple[str, ...] = ("plain",)
            min_contains = 0
        else:
            variants = ("match", "plain") if max_contains is None else ("match", "miss")
        assert min_contains is not None
        cap = max_contains if max_contains is not None else min_contains
        steady = max(len(prefix), min_items)  # from here on every position looks the same
        last = steady if max_items is None else max_items
        if max(last, cap) > DEFAULT_MAX_UNROLL:
            raise LimitError(f"array bounds need {max(last, cap)} unrolled items (limit {DEFAULT_MAX_UNROLL})")

        def item(j: int, kind: str) -> Symbol | None:
            sub = prefix[j] if j < len(prefix) else items
            sub_pointer = f"{pointer}/prefixItems/{j}" if j < len(prefix) else f"{pointer}/items"
            if kind != "plain":
                sub = self.merge([sub, contains if kind == "match" else negated], sub_pointer)
            return None if sub is False else self.value(sub, sub_pointer)

        tail: list[Symbol] = []

        def steady_tail() -> Symbol:
            # L -> ε | L "," ITEM: left recursive, so long arrays revisit the same parser states
            if not tail:
                symbol = g.nonterminal(f"{pointer}/items*")
                tail.append(symbol)
                g.rule(symbol)
                element = item(steady, "plain")
                if element is not None:
                    g.rule(symbol, symbol, self.punct(","), element)
            return tail[0]

        memo: dict[tuple[bool, int, int], Symbol] = {}

        def seq(first: bool, j: int, count: int) -> Symbol:
            key = (first, j, count)
            if key in memo:
                return memo[key]
            symbol = memo[key] = g.nonterminal(f"{pointer}/items{key}")
            sep = () if first else (self.punct(","),)
            done = count >= min_contains
            if j >= min_items and done:
                g.rule(symbol)
            if max_items is not None and j >= max_items:
                return symbol
            if max_items is None and max_contains is None and j >= steady and done:
                element = item(j, "plain")
                if element is not None:
                    g.rule(symbol, *sep, element, steady_tail())
                return symbol
            for kind in variants:
                element = item(j, kind)
                if element is None:
                    continue
                after = count + (kind == "match")
                if max_contains is not None and after > max_contains:
                    continue
                g.rule(symbol, *sep, element, seq(False, min(j + 1, last), min(after, cap)))
            return symbol

        for j in range(last, 0, -1):  # from the end, so the recursion in seq stays shallow
            for count in range(cap + 1):
                seq(False, j, count)
        symbol = g.nonterminal(pointer + "/array")
        g.rule(symbol, self.punct("["), seq(True, 0, 0), self.punct("]"))
        return symbol

    def unique_array(
        self,
        prefix: list[Any],
        items: Any,
        min_items: int,
        longest: int | None,
        contains: Any,
        min_contains: int | None,
        max_contains: int | None,
        pointer: str,
    ) -> Symbol | None:
        """Arrays with pairwise distinct items, when every position takes its values from a
        small finite set: an automaton whose state is the set of values used so far (and the
        count of ``contains`` matches). Values equal as JSON (``1``, ``1.0``) share a slot.
        None (after reporting ``uniqueItems``) when this is not expressible."""
        g = self.g
        counted = contains is not None and (bool(min_contains) or max_contains is not None)
        min_contains = min_contains if counted and min_contains is not None else 0
        cap = max_contains if max_contains is not None else min_contains
        slots: list[Any] = []  # one value per JSON-equality class
        positions: list[list[tuple[int, Symbol, bool]]] = []  # (slot, spelling, matches contains)
        for j in range(len(prefix) + 1):
            if longest is not None and j >= longest:
                break
            sub = prefix[j] if j < len(prefix) else items
            sub_pointer = f"{pointer}/prefixItems/{j}" if j < len(prefix) else f"{pointer}/items"
            values = self.finite_values(sub, sub_pointer)
            matched = self.finite_values(self.merge([sub, contains], sub_pointer), sub_pointer) if counted else []
            if values is None or matched is None:
                why = "items must come from a small finite set of values (enum, const, boolean, null, small integer range)"
                self.unsupported("uniqueItems", pointer, why)
                return None
            matching = {_canonical(v) for v in matched}
            position = []
            for value in values:
                slot = next((i for i, v in enumerate(slots) if _json_equal(v, value)), None)
                if slot is None:
                    slot = len(slots)
                    slots.append(value)
                position.append((slot, self.constant(value), _canonical(value) in matching))
            positions.append(position)
        n = len(slots)
        length = n if longest is None else min(n, longest)
        states = sum(math.comb(n, k) for k in range(length + 1)) * (cap + 1)
        if states > MAX_UNIQUE_STATES:
            why = f"{n} distinct item values need {states} states (limit {MAX_UNIQUE_STATES})"
            self.unsupported("uniqueItems", pointer, why)
            return None
        memo: dict[tuple[frozenset[int], int], Symbol] = {}

        def state(used: frozenset[int], count: int) -> Symbol:
            key = (used, count)
            if key in memo:
                return memo[key]
            symbol = memo[key] = g.nonterminal(f"{pointer}/unique{sorted(used)}")
            j = len(used)  # every item takes a new slot, so the length is the number used
            if j >= min_items and count >= min_contains:
                g.rule(symbol)
            if j < length:
                sep = (self.punct(","),) if j else ()
                for slot, spelling, matches in positions[min(j, len(positions) - 1)]:
                    after = count + matches
                    if slot in used or (max_contains is not None and after > max_contains):
                        continue
                    g.rule(symbol, *sep, spelling, state(used | {slot}, min(after, cap)))
            return symbol

        symbol = g.nonterminal(pointer + "/array")
        g.rule(symbol, self.punct("["), state(frozenset(), 0), self.punct("]"))
        return symbol

    def finite_values(self, schema: Any, pointer: str, depth: int = 0) -> list[Any] | None:
        """The values the grammar of ``schema`` writes, one per spelling, when that is a
        small finite set this can read off the schema (enum/const, null, boolean, small
        integer ranges, and anyOf/$ref/allOf of those); None otherwise."""
        schema = self.flatten(schema, pointer)
        if schema is False:
            return []
        if depth > 8 or any(k in schema for k in ("$dynamicRef", "$recursiveRef", "oneOf")):
            return None
        if "not" in schema:
            schema = self.apply_not(schema, pointer)
            if schema is None:
                return []
            return self.finite_values(schema, pointer, depth + 1)
        if "if" in schema and ("then" in schema or "else" in schema):
            return None
        if "anyOf" in schema:
            rest = self.without(schema, "anyOf")
            values: list[Any] = []
            for branch in schema["anyOf"]:
                found = self.finite_values(self.merge([rest, branch], pointer) if _constraining(rest) else branch, pointer, depth + 1)
                if found is None:
                    return None
                values.extend(v for v in found if all(_canonical(v) != _canonical(w) for w in values))
            return values
        if "enum" in schema or "const" in schema:
            return self.enum_values(schema, pointer)
        types = schema.get("type")
        if types is None:
            return None
        listed = {types} if isinstance(types, str) else set(types)
        excluded = schema.get(_NOT_ENUM, [])
        values = [v for t, v in (("null", None), ("boolean", True), ("boolean", False)) if t in listed]
        values = [v for v in values if not any(_json_equal(v, x) for x in excluded)]
        if listed - {"null", "boolean", "integer"}:
            return None  # numbers, strings, arrays, objects: (practically) unbounded
        if "integer" in listed:  # as number() writes them: one spelling each
            lo, hi = _integer_bounds(*_bounds(schema, pointer))
            multiple = schema.get("multipleOf", 1)
            if lo is None or hi is None or hi - lo >= MAX_UNIQUE_VALUES or not _numeric(multiple, 1):
                return None
            if not float(multiple).is_integer():
                return None
            values.extend(x for x in range(lo, hi + 1) if x % int(multiple) == 0)
        return values

    # -- any value -----------------------------------------------------------------------------

    def any_value(self) -> Symbol:
        if self._any is not None:
            return self._any
        g = self.g
        value = self._any = g.nonterminal("any")
        for literal in ("null", "true", "false"):
            g.rule(value, g.literal(literal))
        g.rule(value, self.string_terminal((), 0, None))
        g.rule(value, g.regex(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?", "NUMBER"))
        members = g.nonterminal("any-members")  # left recursive lists
        pair = g.nonterminal("any-pair")
        g.rule(pair, self.string_terminal((), 0, None), self.punct(":"), value)
        g.rule(members, pair)
        g.rule(members, members, self.punct(","), pair)
        g.rule(value, self.punct("{"), self.punct("}"))
        g.rule(value, self.punct("{"), members, self.punct("}"))
        elements = g.nonterminal("any-elements")
        g.rule(elements, value)
        g.rule(elements, elements, self.punct(","), value)
        g.rule(value, self.punct("["), self.punct("]"))
        g.rule(value, self.punct("["), elements, self.punct("]"))
        return value


# -- helpers -------------------------------------------------------------------------------------


def _has_dependent_schemas(schema: dict[str, Any]) -> bool:
    """Whether ``schema`` has ``dependentSchemas`` or the schema form of ``dependencies``."""
    dependencies = schema.get("dependencies")
    return "dependentSchemas" in schema or (
        isinstance(dependencies, dict) and any(not isinstance(v, list) for v in dependencies.values())
    )


def _closed_by_forbid(schema: dict[str, Any]) -> bool:
    """Whether ``unlisted_keys="forbid"`` allows no unlisted keys in objects of (merged) ``schema``:
    it lists properties and says nothing of other keys. Objects whose schema lists none that
    may appear (``{"type": "object"}``, ``properties: {}``, ``not: {required: [a]}``) stay
    free-form, as in xgrammar's strict mode."""
    if any(k in schema for k in ("additionalProperties", "patternProperties", "unevaluatedProperties")):
        return False
    return _lists_properties(schema)


def _lists_properties(schema: dict[str, Any]) -> bool:
    """Whether ``schema`` (or a part merged into it) lists a property whose schema is not false."""
    properties = schema.get("properties") or {}
    return bool(schema.get(_LISTS_PROPERTIES)) or any(sub is not False for sub in properties.values())


def _constraining(schema: dict[str, Any]) -> bool:
    return any(k not in _ANNOTATIONS for k in schema)


def _escaped_at(text: str, index: int) -> bool:
    backslashes = 0
    i = index - 1
    while i >= 0 and text[i] == "\\":
        backslashes += 1
        i -= 1
    return backslashes % 2 == 1


def _has_anchor(pattern: str) -> bool:
    try:
        import re._parser as sre_parse  # type: ignore[import-not-found]
    except ImportError:  # pragma: no cover
        import sre_parse  # type: ignore[no-redef]

    def walk(items: Any) -> bool:
        for op, arg in items:
            if op == sre_parse.AT:
                return True
            if op in (sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT) and walk(arg[2]):
                return True
            if op == sre_parse.SUBPATTERN and walk(arg[-1]):
                return True
            if op == sre_parse.BRANCH and any(walk(b) for b in arg[1]):
                return True
        return False

    return walk(sre_parse.parse(pattern))


def _split_top_level(pattern: str) -> list[str]:
    """``pattern`` split at its top-level ``|`` (outside groups and classes)."""
    parts, depth, in_class, i, start = [], 0, False, 0, 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            i += 2
            continue
        if in_class:
            if ch == "]":
                in_class = False
        elif ch == "[":
            in_class = True
            if pattern[i + 1 : i + 2] == "^":
                i += 1
            if pattern[i + 1 : i + 2] == "]":
                i += 1
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(pattern[start:i])
            start = i + 1
        i += 1
    parts.append(pattern[start:])
    return parts


def _top_level_branch(pattern: str) -> bool:
    try:
        import re._parser as sre_parse  # type: ignore[import-not-found]
    except ImportError:  # pragma: no cover
        import sre_parse  # type: ignore[no-redef]
    parsed = sre_parse.parse(pattern)
    return any(op == sre_parse.BRANCH for op, _ in parsed)


def _non_negative_int(value: Any, pointer: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or not float(value).is_integer():
        raise SchemaError(f"expected a non-negative integer, got {value!r}", pointer=pointer)
    return int(value)


def _bounds(schema: dict[str, Any], pointer: str) -> tuple[float | None, bool, float | None, bool]:
    low, low_strict, high, high_strict = None, False, None, False
    for key in _NUMBER_KEYS - {"multipleOf"}:
        value = schema.get(key)
        if value is None or isinstance(value, bool) and key.startswith("exclusive"):
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise SchemaError(f"{key} must be a number", pointer=f"{pointer}/{key}")
    if "minimum" in schema:
        low = schema["minimum"]
        if schema.get("exclusiveMinimum") is True:  # draft 4
            low_strict = True
    if "maximum" in schema:
        high = schema["maximum"]
        if schema.get("exclusiveMaximum") is True:
            high_strict = True
    em, eM = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if isinstance(em, (int, float)) and not isinstance(em, bool) and (low is None or em >= low):
        low, low_strict = em, True
    if isinstance(eM, (int, float)) and not isinstance(eM, bool) and (high is None or eM <= high):
        high, high_strict = eM, True
    return low, low_strict, high, high_strict


def _integer_bounds(
    low: float | None, low_strict: bool, high: float | None, high_strict: bool
) -> tuple[int | None, int | None]:
    """The smallest and largest integers within the bounds (None: unbounded)."""
    lo = None if low is None else (math.floor(low) + 1 if low_strict else math.ceil(low))
    hi = None if high is None else (math.ceil(high) - 1 if high_strict else math.floor(high))
    return lo, hi


_SIGNED_INT = r"0|-?[1-9]\d*"


def integer_range_dfa(lo: int | None, hi: int | None) -> ByteDFA:
    """JSON integers in [lo, hi] (None: unbounded), without ``-0``: an
    intersection of one-sided automata, so huge bounds stay small."""
    dfa = regex_to_dfa(_SIGNED_INT)
    if lo is not None:
        above = _nonneg_at_least(lo) if lo >= 0 else rf"0|[1-9]\d*|-(?:{_nonneg_at_most(-lo)})"
        dfa = intersect(dfa, regex_to_dfa(above))
    if hi is not None:
        below = rf"-\d+|{_nonneg_at_most(hi)}" if hi >= 0 else rf"-(?:{_nonneg_at_least(-hi)})"
        dfa = intersect(dfa, regex_to_dfa(below))
    return dfa


def _nonneg_at_least(a: int) -> str:
    """Decimal integers >= a >= 0, no leading zeros (linear in the digits of a)."""
    digits = str(a)
    n = len(digits)
    alternatives = [rf"[1-9]\d{{{n},}}", digits]
    for k, d in enumerate(digits):
        if d != "9":
            alternatives.append(digits[:k] + _digit_class(int(d) + 1, 9) + rf"\d{{{n - k - 1}}}")
    return "|".join(f"(?:{a})" for a in alternatives)


def _nonneg_at_most(b: int) -> str:
    """Decimal integers 0 <= x <= b, no leading zeros (linear in the digits of b)."""
    digits = str(b)
    n = len(digits)
    alternatives = ["0", digits]
    if n >= 2:
        alternatives.append(rf"[1-9]\d{{0,{n - 2}}}")
    for k, d in enumerate(digits):
        lowest = 1 if k == 0 else 0
        if int(d) - 1 >= lowest:
            alternatives.append(digits[:k] + _digit_class(lowest, int(d) - 1) + rf"\d{{{n - k - 1}}}")
    return "|".join(f"(?:{a})" for a in alternatives)


_FRAC_ANY = r"(?:\.\d+)?"
# Plain decimals without "-0": 0, 12, 0.5, -3.25, -0.5 (exponents are not written when bounded)
_PLAIN_DECIMAL = r"(?:0|[1-9]\d*)(?:\.\d+)?|-(?:[1-9]\d*(?:\.\d+)?|0\.\d*[1-9]\d*)"


def number_range_dfa(low: float | None, low_strict: bool, high: float | None, high_strict: bool) -> ByteDFA:
    """Plain decimals (no exponent, no ``-0``) within the bounds, exactly: the
    bounds are read as the decimals they print as."""
    language = regex_to_dfa(_PLAIN_DECIMAL)
    if low is not None:
        language = intersect(language, regex_to_dfa(_at_least(decimal.Decimal(repr(low)), low_strict)))
    if high is not None:
        language = intersect(language, regex_to_dfa(_at_most(decimal.Decimal(repr(high)), high_strict)))
    return language


def _split(bound: decimal.Decimal) -> tuple[int, str]:
    """|bound| as (integer part, fractional digits without trailing zeros)."""
    text = format(abs(bound), "f")
    whole, _, frac = text.partition(".")
    return int(whole), frac.rstrip("0")


def _at_least(bound: decimal.Decimal, strict: bool) -> str:
    """Decimals x with x >= bound (x > bound if strict); "-0" forms may slip in (removed by intersection)."""
    whole, frac = _split(bound)
    if bound >= 0:
        parts = [f"(?:{_nonneg_at_least(whole + 1)}){_FRAC_ANY}", re.escape(str(whole)) + _frac_above(frac, strict)]
        return "|".join(f"(?:{p})" for p in parts if p is not None)
    # negatives -m with m <= |bound| (m < |bound| if strict), and every non-negative
    below = _magnitudes_below(whole, frac, strict)
    return "|".join(f"(?:{p})" for p in [rf"(?:0|[1-9]\d*){_FRAC_ANY}", *(f"-{b}" for b in below)])


def _at_most(bound: decimal.Decimal, strict: bool) -> str:
    whole, frac = _split(bound)
    if bound >= 0:
        parts = [rf"-(?:0|[1-9]\d*){_FRAC_ANY}", *_magnitudes_below(whole, frac, strict)]
        return "|".join(f"(?:{p})" for p in parts)
    # negatives -m with m >= |bound| (m > |bound| if strict)
    parts = [f"(?:{_nonneg_at_least(whole + 1)}){_FRAC_ANY}", re.escape(str(whole)) + _frac_above(frac, strict)]
    return "|".join(f"(?:-{p})" for p in parts if p is not None)


def _magnitudes_below(whole: int, frac: str, strict: bool) -> list[str]:
    """Non-negative decimals m <= whole.frac (m < whole.frac if strict)."""
    parts = []
    if whole >= 1:
        parts.append(f"(?:{_nonneg_at_most(whole - 1)}){_FRAC_ANY}")
    tail = _frac_below(frac, strict)
    if tail is not None:
        parts.append(re.escape(str(whole)) + tail)
    return parts


def _digit_class(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"[{lo}-{hi}]"


def _frac_above(digits: str, strict: bool) -> str:
    """Fraction parts (with the dot, maybe absent) f with 0.f >= 0.digits (> if strict)."""
    larger = [digits[:k] + _digit_class(int(d) + 1, 9) + r"\d*" for k, d in enumerate(digits) if d != "9"]
    if not strict:
        if not digits:
            return _FRAC_ANY
        return r"\.(?:" + "|".join([re.escape(digits) + r"\d*", *larger]) + ")"
    return r"\.(?:" + "|".join([re.escape(digits) + r"\d*[1-9]\d*", *larger]) + ")"


def _frac_below(digits: str, strict: bool) -> str | None:
    """Fraction parts (with the dot, maybe absent) f with 0.f <= 0.digits (< if strict); None if none."""
    smaller = [digits[:k] + _digit_class(0, int(d) - 1) + r"\d*" for k, d in enumerate(digits) if d != "0"]
    smaller += [re.escape(digits[:k]) for k in range(1, len(digits))]  # a prefix: the rest reads as zeros
    if not strict:
        equal = [re.escape(digits) + "0*"] if digits else ["0+"]
        return r"(?:\.(?:" + "|".join(equal + smaller) + "))?"
    if not digits:
        return None  # nothing is below a whole number with the same integer part
    return r"(?:\.(?:" + "|".join(smaller) + "))?" if smaller else ""


def _multiples(k: int) -> ByteDFA:
    """Decimal integers (optionally negative) that are multiples of ``k``: a DFA over remainders."""
    import numpy as np

    from gramspec.grammars.regex_dfa import _trim

    # states: 0 start, 1 after '-', 2 zero, 3 + r: remainder r after a non-zero first digit
    table = np.full((3 + k, 256), -1, dtype=np.int32)
    digits = [ord(str(d)) for d in range(10)]
    table[0, ord("-")] = 1
    table[0, digits[0]] = 2
    for start in (0, 1):
        for d in range(1, 10):
            table[start, digits[d]] = 3 + d % k
    for r in range(k):
        for d in range(10):
            table[3 + r, digits[d]] = 3 + (r * 10 + d) % k
    accepting = np.zeros(3 + k, dtype=bool)
    accepting[[2, 3]] = True
    return _trim(table, accepting, start=0)


def _pairwise_disjoint(branches: list[Any], compiler: _Compiler) -> bool:
    """Whether no JSON value can match two of ``branches`` (a conservative check)."""
    signatures = []
    for branch in branches:
        for _ in range(16):
            if isinstance(branch, dict) and "$ref" in branch:
                branch, _ = compiler.resolve(branch["$ref"], "", branch)
            else:
                break
        signatures.append(_signature(branch))
    for i in range(len(signatures)):
        for j in range(i + 1, len(signatures)):
            if not _disjoint(signatures[i], signatures[j]):
                return False
    return True


@dataclass(frozen=True)
class _Signature:
    types: frozenset[str]  # JSON types it allows
    values: list[Any] | None  # its const/enum values
    keyed: dict[str, Any]  # required properties with const/enum values
    required: frozenset[str]
    forbidden: Any  # a predicate: names an instance may not have


def _signature(schema: Any) -> _Signature:
    if not isinstance(schema, dict):
        return _Signature(frozenset(_TYPES) if schema else frozenset(), None, {}, frozenset(), lambda name: False)
    types = schema.get("type")
    allowed = frozenset(_TYPES) if types is None else frozenset([types] if isinstance(types, str) else types)
    if "number" in allowed:
        allowed = allowed | {"integer"}
    values = None
    if "const" in schema:
        values = [schema["const"]]
    elif "enum" in schema and isinstance(schema["enum"], list):
        values = schema["enum"]
    if values is not None:
        allowed = frozenset(_json_type(v) for v in values) & (allowed | ({"number"} if "integer" in allowed else set()))
    keyed: dict[str, Any] = {}
    props = schema.get("properties", {})
    required = set(schema.get("required", []))
    if isinstance(props, dict):
        for name, sub in props.items():
            if name in required and isinstance(sub, dict):
                if "const" in sub:
                    keyed[name] = [sub["const"]]
                elif isinstance(sub.get("enum"), list):
                    keyed[name] = sub["enum"]
    listed = dict(props) if isinstance(props, dict) else {}
    patterns = schema.get("patternProperties") or {}
    closed = schema.get("additionalProperties", True) is False and not patterns

    def forbidden(name: str) -> bool:
        return listed.get(name, True) is False or (closed and name not in listed)

    return _Signature(allowed, values, keyed, frozenset(required), forbidden)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if value.is_integer() else "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _evaluation_clash(container: dict[str, Any], negated: Any) -> bool:
    """Whether merging ``negated`` (which produces no annotations) into a schema
    with ``unevaluated*`` keywords would wrongly count its items/properties as evaluated."""
    if not ({"unevaluatedItems", "unevaluatedProperties"} & container.keys()):
        return False
    text = json.dumps(negated, default=str)
    return any(f'"{k}"' in text for k in _STRUCTURAL)


def _canonical(value: Any) -> str:
    """The compact text the grammar writes for a known value."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _json_equal(x: Any, y: Any) -> bool:
    """Equality as JSON sees it: 1 == 1.0, but true != 1."""
    if isinstance(x, bool) or isinstance(y, bool):
        return isinstance(x, bool) and isinstance(y, bool) and x == y
    if isinstance(x, (int, float)) and isinstance(y, (int, float)):
        return x == y
    if isinstance(x, list) and isinstance(y, list):
        return len(x) == len(y) and all(_json_equal(a, b) for a, b in zip(x, y))
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_json_equal(x[k], y[k]) for k in x)
    return type(x) is type(y) and x == y


def _disjoint(a: _Signature, b: _Signature) -> bool:
    types_a, values_a, keyed_a = a.types, a.values, a.keyed
    types_b, values_b, keyed_b = b.types, b.values, b.keyed
    common = types_a & types_b
    if "number" in types_a and "integer" in types_b or "number" in types_b and "integer" in types_a:
        common = common | {"integer"}
    if not common:
        return True
    if values_a is not None and values_b is not None:
        return not any(_json_equal(x, y) for x in values_a for y in values_b)
    if common <= {"object"}:
        for name in keyed_a.keys() & keyed_b.keys():
            if not any(_json_equal(x, y) for x in keyed_a[name] for y in keyed_b[name]):
                return True
        # a name one requires and the other forbids
        if any(b.forbidden(name) for name in a.required) or any(a.forbidden(name) for name in b.required):
            return True
    return False


def _negate(schema: Any, resolve: Any = None, depth: int = 0) -> Any:
    """A schema for "not ``schema``" (possibly ``False``), or None when there is no such form here.

    A schema is the conjunction of its keywords (those that depend on each
    other taken together), so its negation is the union of their negations.
    Keywords that speak of one type hold for every other type, so each
    negation stays within that type. Restricted constructs (formats, the
    integer writing) are never negated: the complement of a subset would let
    invalid documents through.
    """
    if schema is True or schema == {}:
        return False
    if schema is False:
        return {}
    if not isinstance(schema, dict) or depth > 32:
        return None
    keys = {k for k in schema if k not in _ANNOTATIONS}
    if not keys:
        return False
    if "$ref" in keys:  # not (target and siblings) = not target, or not siblings
        if resolve is None:
            return None
        rest = {k: v for k, v in schema.items() if k != "$ref" and not getattr(resolve, "ignores_siblings", False)}
        return _negate({"allOf": [resolve(schema["$ref"], schema), rest]}, resolve, depth + 1)
    parts: list[Any] = []
    handled: set[str] = set()
    object_group = keys & {"properties", "patternProperties", "additionalProperties"}
    if object_group:
        if object_group != {"properties"} or not isinstance(schema["properties"], dict):
            return None
        for name, sub in schema["properties"].items():
            negated = _negate(sub, resolve, depth + 1)
            if negated is None:
                return None
            if negated is not False:
                parts.append({"type": "object", "properties": {name: negated}, "required": [name]})
        handled |= object_group
    for key in sorted(keys - handled):
        negated = _negate_keyword(key, schema[key], resolve, depth + 1)
        if negated is None:
            return None
        if negated is not False:
            parts.append(negated)
    if not parts:
        return False
    return parts[0] if len(parts) == 1 else {"anyOf": parts}


def _negate_keyword(key: str, value: Any, resolve: Any = None, depth: int = 0) -> Any:
    """The negation of the one-keyword schema ``{key: value}`` (None: not expressible)."""
    number_bounds = {"minimum": "exclusiveMaximum", "exclusiveMinimum": "maximum", "maximum": "exclusiveMinimum", "exclusiveMaximum": "minimum"}
    counts = {
        "minLength": ("string", "maxLength"), "maxLength": ("string", "minLength"),
        "minItems": ("array", "maxItems"), "maxItems": ("array", "minItems"),
        "minProperties": ("object", "maxProperties"), "maxProperties": ("object", "minProperties"),
    }  # fmt: skip
    if key == "type":
        listed = {value} if isinstance(value, str) else set(value)
        if "integer" in listed and "number" not in listed:
            return None  # non-integer numbers: not expressible here
        others = [t for t in _TYPES if t not in listed and t != "integer"]
        return {"type": others} if others else False
    if key in ("const", "enum"):
        values = [value] if key == "const" else value
        if not isinstance(values, list) or any(_json_type(v) not in ("null", "boolean", "string") for v in values):
            return None  # numbers have many spellings, containers many orders
        return {"anyOf": [{"type": ["number", "array", "object"]}, {"type": ["null", "boolean", "string"], _NOT_ENUM: values}]}
    if key in number_bounds and _numeric(value, 0):
        return {"type": "number", number_bounds[key]: value}
    if key in counts and isinstance(value, int) and not isinstance(value, bool):
        kind, opposite = counts[key]
        if key.startswith("min"):
            return {"type": kind, opposite: value - 1} if value > 0 else False
        return {"type": kind, opposite: value + 1}
    if key == "required" and isinstance(value, list):
        branches = [{"type": "object", "properties": {name: False}} for name in value]
        return False if not branches else branches[0] if len(branches) == 1 else {"anyOf": branches}
    if key == "pattern" and isinstance(value, str):
        return {"type": "string", _NOT_PATTERN: [value]}
    if key == "uniqueItems" and value is False:
        return False  # always holds, so its negation never does
    if key == "not":
        return value if value is not True else {}
    if key == "allOf" and isinstance(value, list):
        negated = [_negate(v, resolve, depth) for v in value]
        if any(n is None for n in negated):
            return None
        kept = [n for n in negated if n is not False]
        return False if not kept else {"anyOf": kept}
    if key == "anyOf" and isinstance(value, list):
        negated = [_negate(v, resolve, depth) for v in value]
        if any(n is None for n in negated):
            return None
        if any(n is False for n in negated):
            return False
        return {"allOf": negated}
    return None


def _name_allowed(name: str, name_filter: Any, compiler: _Compiler) -> bool:
    try:
        return jsonschema.Draft202012Validator(name_filter).is_valid(name)
    except Exception:  # noqa: BLE001 - a filter the validator cannot read keeps the name
        return True


def _name_filter_dfa(name_filter: Any, compiler: _Compiler, pointer: str) -> ByteDFA | None:
    if name_filter is False:  # no property names at all
        return difference(json_string_dfa(), json_string_dfa())
    if not isinstance(name_filter, dict):
        return None
    keys = {k for k in name_filter if k not in _ANNOTATIONS}
    if not keys <= (_STRING_KEYS | {"type"}) or name_filter.get("type", "string") != "string":
        compiler.unsupported("propertyNames", pointer)
        return None
    patterns = []
    if "pattern" in name_filter:
        full = compiler.search_to_fullmatch(name_filter["pattern"], pointer + "/propertyNames")
        if full:
            patterns.append(full)
    if "format" in name_filter and name_filter["format"] in FORMATS:
        patterns.append(FORMATS[name_filter["format"]])
    return json_string_dfa(
        tuple(patterns), min_length=int(name_filter.get("minLength", 0)), max_length=name_filter.get("maxLength")
    )


def _merge_two(a: dict[str, Any], b: dict[str, Any], compiler: _Compiler, pointer: str) -> Any:
    """The conjunction of two schemas without $ref/allOf at the top."""
    out = dict(a)
    for key, value in b.items():
        if key not in out or key in _ANNOTATIONS:
            if key not in _ANNOTATIONS or key not in out:
                out[key] = copy.copy(value) if isinstance(value, (dict, list)) else value
            continue
        mine = out[key]
        if mine == value:
            continue
        if key == "type":
            ta = {mine} if isinstance(mine, str) else set(mine)
            tb = {value} if isinstance(value, str) else set(value)
            both = (ta & tb) | ({"integer"} if ("number" in ta and "integer" in tb) or ("integer" in ta and "number" in tb) else set())
            if not both:
                return False
            out[key] = sorted(both)
        elif key == "required":
            out[key] = list(dict.fromkeys([*mine, *value]))
        elif key == "uniqueItems":
            out[key] = mine is True or value is True
        elif key == "multipleOf" and all(isinstance(v, int) and not isinstance(v, bool) for v in (mine, value)):
            out[key] = math.lcm(mine, value)
        elif key in (_NOT_ENUM, _NOT_PATTERN):
            out[key] = [*mine, *(v for v in value if v not in mine)]
        elif key in ("properties", "patternProperties"):
            merged = dict(mine)
            for name, sub in value.items():
                merged[name] = compiler.merge([mine[name], sub], f"{pointer}/{key}/{name}") if name in mine else sub
            out[key] = merged
        elif key in ("minimum", "minLength", "minItems", "minProperties", "exclusiveMinimum") and _numeric(mine, value):
            out[key] = max(mine, value)
        elif key in ("maximum", "maxLength", "maxItems", "maxProperties", "exclusiveMaximum") and _numeric(mine, value):
            out[key] = min(mine, value)
        elif key in ("enum", "const"):
            values_a = [mine] if key == "const" else mine
            values_b = [value] if key == "const" else value
            common = [v for v in values_a if any(v == w and type(v) is type(w) for w in values_b)]
            if not common:
                return False
            out.pop("const", None)
            out["enum"] = common
        elif key in ("anyOf", "oneOf"):
            out["allOf"] = [*out.get("allOf", []), {key: value}]
        elif key == "pattern":
            out[key] = [*(mine if isinstance(mine, list) else [mine]), *(value if isinstance(value, list) else [value])]
        elif key in ("items", "additionalProperties", "contains", "propertyNames", "not") and not isinstance(value, list) and not isinstance(mine, list):
            if key == "not":
                out[key] = {"anyOf": [mine, value]}
            else:
                out[key] = compiler.merge([mine, value], f"{pointer}/{key}")
        elif key == "format":
            compiler.unsupported("format", pointer, "two different formats")
        else:
            compiler.unsupported(key, pointer, "cannot combine two different values in allOf")
    if "allOf" in out:
        rest = {k: v for k, v in out.items() if k != "allOf"}
        branches = out["allOf"]
        # distribute remaining anyOf/oneOf combinations: keep them for alternatives() via nesting
        nested: Any = rest
        for branch in branches:
            keyword = "anyOf" if "anyOf" in branch else "oneOf"
            if keyword in nested:
                if len(nested[keyword]) * len(branch[keyword]) > 64:
                    compiler.unsupported(keyword, pointer, "too many combinations of branches in allOf")
                    continue
                nested = {**{k: v for k, v in nested.items() if k != keyword}, keyword: [
                    compiler.merge([x, y], pointer) for x in nested[keyword] for y in branch[keyword]
                ]}
                nested[keyword] = [x for x in nested[keyword] if x is not False] or [False]
            else:
                nested = {**nested, keyword: branch[keyword]}
        out = nested
    return out


def _numeric(a: Any, b: Any) -> bool:
    return all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b))
