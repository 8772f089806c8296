"""Conformance runs of the JSON Schema compiler, and ratchet files for their numbers.

Two corpora, both under ``shared/`` (``$GRAMSPEC_SHARED`` or ``<repo>/../shared``):

* the JSON Schema Test Suite (``jsonschema-test-suite/tests/<draft>/*.json``):
  groups of (schema, labelled instances). The suite's labels are the truth
  (``format`` is an annotation there, so format tests expect acceptance);
* MaskBench (``maskbench-dev/<subset>/*.json``): real-world schemas, each with
  labelled instances. The labels are the truth for the counts; python-jsonschema
  (the schema's ``$schema`` or Draft 2020-12, with format checking) is run as a
  cross-check and its disagreements with the labels are listed apart.

Each instance is reordered to the schema's property order
(:func:`reorder_for_schema`), serialized compactly and checked with
``compiled.accepts_bytes`` (the byte-level oracle). A sample is also fed token by
token through ``compiled.matcher()`` with a real vocabulary, ending with EOS;
any disagreement with the byte-level verdict is an engine bug and is listed.

A group (or MaskBench schema) is classified as

``passed``                      every valid instance accepted, every invalid one rejected
``over-constrained``            some valid instance rejected
``under-constrained``           some invalid instance accepted (the contract breaker)
``over-and-under-constrained``  both
``unsupported``                 compiling raised UnsupportedSchemaError
``schema-error`` / ``limit`` / ``timeout`` / ``crash``
                                compiling raised SchemaError / LimitError / ran past the
                                time limit / raised anything else

Ratchet files (``tests/ratchets/*.json``) hold each group's status (MaskBench:
each schema's counts). :func:`compare_ratchet` lists regressions (a group that
passed no longer does; a group becomes under-constrained; a group that compiled
and was not under-constrained stops compiling; more invalid or fewer valid
instances accepted) and improvements. Turning an under-constrained group into a
compile error is an improvement (contract 5: unsupported is an error, never
silently wrong).

Command line::

    python -m gramspec.evaluation.conformance                   # run, report, compare with the ratchets
    python -m gramspec.evaluation.conformance --update-ratchets # rewrite tests/ratchets/*.json
    python -m gramspec.evaluation.conformance --full            # all of MaskBench, not the sample
    python -m gramspec.evaluation.conformance --update-ratchets --resample  # redraw the MaskBench sample
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import re
import signal
import sys
import threading
import time
import traceback
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

from gramspec.errors import LimitError, SchemaError, UnsupportedSchemaError

REPO_ROOT = Path(__file__).resolve().parents[2]
RATCHET_DIR = REPO_ROOT / "tests" / "ratchets"
DRAFTS: tuple[str, ...] = ("draft2020-12", "draft7")
#: The $schema given to a Test Suite schema that names none (the suite means its folder's draft).
DRAFT_URIS: dict[str, str] = {
    "draft2020-12": "https://json-schema.org/draft/2020-12/schema",
    "draft2019-09": "https://json-schema.org/draft/2019-09/schema",
    "draft7": "http://json-schema.org/draft-07/schema#",
    "draft6": "http://json-schema.org/draft-06/schema#",
    "draft4": "http://json-schema.org/draft-04/schema#",
}
MASKBENCH_SUBSETS: tuple[str, ...] = (
    "Github_trivial",
    "Github_easy",
    "Github_medium",
    "Github_hard",
    "Glaiveai2K",
    "Snowplow",
    "Synthesized",
    "Handwritten",
    "JME",
)
#: Schemas per subset in the committed MaskBench sample (tests/ratchets/maskbench_sample.json).
SAMPLE_PER_SUBSET = 12
SAMPLE_SEED = 0
#: Candidates drawn per subset for the sample; those that take longer than
#: SAMPLE_MAX_SECONDS to compile and check are left out (CI time), in draw order.
SAMPLE_CANDIDATES = 24
SAMPLE_MAX_SECONDS = 2.0
UPDATE_COMMAND = "python -m gramspec.evaluation.conformance --update-ratchets"
RATCHET_FORMAT = 1

Status = Literal[
    "passed",
    "over-constrained",
    "under-constrained",
    "over-and-under-constrained",
    "unsupported",
    "schema-error",
    "limit",
    "timeout",
    "crash",
]
COMPILED_STATUSES = frozenset({"passed", "over-constrained", "under-constrained", "over-and-under-constrained"})
UNDER_STATUSES = frozenset({"under-constrained", "over-and-under-constrained"})
OVER_STATUSES = frozenset({"over-constrained", "over-and-under-constrained"})
ERROR_STATUSES = frozenset({"schema-error", "limit", "timeout", "crash"})

#: compile_json_schema(schema, vocab, *, whitespace=..., strict=...) -> CompiledGrammar
CompileFn = Callable[..., Any]

JSON_SCHEMA_KEYWORDS = frozenset(
    ["$anchor", "$comment", "$defs", "$dynamicAnchor", "$dynamicRef", "$id", "$recursiveAnchor", "$recursiveRef", "$ref", "$schema", "$vocabulary", "additionalItems", "additionalProperties", "allOf", "anyOf", "const", "contains", "contentEncoding", "contentMediaType", "contentSchema", "default", "definitions", "dependencies", "dependentRequired", "dependentSchemas", "deprecated", "description", "discriminator", "else", "enum", "examples", "exclusiveMaximum", "exclusiveMinimum", "format", "id", "if", "items", "maxContains", "maxItems", "maxLength", "maxProperties", "maximum", "minContains", "minItems", "minLength", "minProperties", "minimum", "multipleOf", "not", "nullable", "oneOf", "pattern", "patternProperties", "prefixItems", "properties", "propertyNames", "readOnly", "required", "then", "title", "type", "unevaluatedItems", "unevaluatedProperties", "uniqueItems", "writeOnly"]
)


# --------------------------------------------------------------------------- paths


def shared_path() -> Path:
    """Where shared/ should be: ``$GRAMSPEC_SHARED`` or ``<repo>/../shared``."""
    env = os.environ.get("GRAMSPEC_SHARED")
    return Path(env) if env else REPO_ROOT.parent / "shared"


def suite_dir(shared: Path | None = None) -> Path:
    return (shared or shared_path()) / "jsonschema-test-suite" / "tests"


def maskbench_dir(shared: Path | None = None) -> Path:
    return (shared or shared_path()) / "maskbench-dev"


def default_compile() -> CompileFn:
    """The real compiler (imported late: it may not exist yet on a branch)."""
    from gramspec.grammars.json_schema import compile_json_schema

    return compile_json_schema


# --------------------------------------------------------------------------- serialization and reordering


def serialize(instance: Any) -> bytes:
    """Compact JSON, UTF-8, non-ASCII kept (lone surrogates fall back to \\u escapes)."""
    try:
        return json.dumps(instance, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(instance, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def resolve_ref(ref: Any, root: Any) -> Any:
    """The subschema ``ref`` points at inside ``root`` (``#``, ``#/json/pointer``,
    ``#anchor``); None when it points elsewhere or nowhere."""
    if not isinstance(ref, str) or "#" not in ref:
        return None
    base, _, fragment = ref.partition("#")
    if base and not (isinstance(root, dict) and str(root.get("$id", "")).rstrip("#") == base):
        return None
    fragment = unquote(fragment)
    if fragment == "":
        return root
    if not fragment.startswith("/"):
        return _find_anchor(root, fragment)
    node = root
    for raw in fragment[1:].split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _find_anchor(node: Any, name: str) -> Any:
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            if current.get("$anchor") == name or current.get("$dynamicAnchor") == name:
                return current
            if current.get("$id") == "#" + name or current.get("id") == "#" + name:
                return current
            stack.extend(current.values())
        elif isinstance(current, list):
            stack.extend(current)
    return None


def _json_type_names(instance: Any) -> set[str]:
    if instance is None:
        return {"null"}
    if isinstance(instance, bool):
        return {"boolean"}
    if isinstance(instance, int):
        return {"integer", "number"}
    if isinstance(instance, float):
        return {"integer", "number"} if instance.is_integer() else {"number"}
    if isinstance(instance, str):
        return {"string"}
    if isinstance(instance, list):
        return {"array"}
    if isinstance(instance, dict):
        return {"object"}
    return set()


def _parts(schema: Any, root: Any, instance: Any, seen: frozenset[int] = frozenset()) -> list[dict[str, Any]]:
    """``schema`` and what it pulls in for ``instance``, in the compiler's order: first
    the parts it merges at once ($ref targets and allOf branches, recursively), then,
    for each of those, the dependent schemas of present names, the anyOf/oneOf branch
    that best fits ``instance`` and the if/then/else branch taken (each expanded the
    same way). Keywords that the draft of ``root`` does not apply are passed over."""
    ignored = _ignored_keywords(root)
    flat: list[dict[str, Any]] = []

    def collect(node: Any) -> None:
        nonlocal seen
        if not isinstance(node, dict) or id(node) in seen:
            return
        seen = seen | {id(node)}
        flat.append(node)
        for key in ("$ref", "$dynamicRef", "$recursiveRef"):
            if key in node and key not in ignored:
                target = resolve_ref(node.get(key), root)
                if key == "$recursiveRef" and node.get(key) == "#":
                    target = root
                collect(target)
        branches = node.get("allOf")
        if isinstance(branches, list):
            for branch in branches:
                collect(branch)

    collect(schema)
    out = list(flat)
    for node in flat:
        if isinstance(instance, dict):  # the compiler's order: dependent schemas of present names next
            for key in ("dependentSchemas", "dependencies"):
                entries = node.get(key)
                if isinstance(entries, dict) and key not in ignored:
                    present = [n for n, sub in entries.items() if n in instance and isinstance(sub, dict) and sub]
                    if present:  # the compiler's branch for them requires the names present
                        out.append({"required": present})
                    for name in present:
                        out.extend(_parts(entries[name], root, instance, seen))
        for key in ("anyOf", "oneOf"):
            branches = node.get(key)
            if isinstance(branches, list):
                chosen = _choose_branch(branches, root, instance, seen)
                if chosen is not None:
                    out.extend(chosen)
        if "if" in node and ("then" in node or "else" in node) and "if" not in ignored:
            # the compiler's order for if/then/else: own properties, the condition's, then the branch's
            out.extend(_parts(node["if"], root, instance, seen))
            branch = "then" if _satisfies(node["if"], root, instance) else "else"
            out.extend(_parts(node.get(branch), root, instance, seen))
    return out


_IGNORED_CACHE: list[Any] = [None, frozenset()]


def _ignored_keywords(root: Any) -> frozenset[str]:
    """The keywords the draft of ``root`` does not apply (see the compiler's draft_ignored_keywords)."""
    if _IGNORED_CACHE[0] is not root:
        from gramspec.grammars.json_schema import draft_ignored_keywords

        _IGNORED_CACHE[:] = [root, draft_ignored_keywords(root)]
    return _IGNORED_CACHE[1]  # type: ignore[no-any-return]


def _satisfies(condition: Any, root: Any, instance: Any) -> bool:
    """Whether ``instance`` validates against ``condition`` (a subschema of
    ``root``), by python-jsonschema; True when it cannot tell."""
    import jsonschema  # type: ignore[import-untyped,unused-ignore]

    try:
        cls = jsonschema.validators.validator_for(root, default=jsonschema.Draft202012Validator) if isinstance(root, dict) else jsonschema.Draft202012Validator
        return bool(cls(root).evolve(schema=condition).is_valid(instance))
    except Exception:  # noqa: BLE001 - unresolvable $ref, bad regex...
        return True


def _choose_branch(
    branches: Sequence[Any], root: Any, instance: Any, seen: frozenset[int]
) -> list[dict[str, Any]] | None:
    """The expanded parts of the branch that fits ``instance`` best: one that
    ``instance`` validates against (python-jsonschema) first, then type
    compatible; for objects, then one whose properties cover the keys with
    its required keys present and its const/enum properties matching; then the
    largest overlap; ties go to the first branch."""
    names = _json_type_names(instance)
    best: tuple[tuple[Any, ...], list[dict[str, Any]]] | None = None
    for index, branch in enumerate(branches):
        parts = _parts(branch, root, instance, seen)
        if not parts:
            continue
        valid = _satisfies(branch, root, instance)
        type_ok = all(_type_allows(p.get("type"), names) for p in parts if "type" in p)
        score: tuple[Any, ...]
        if isinstance(instance, dict):
            props: dict[str, list[Any]] = defaultdict(list)
            required: set[str] = set()
            closed = False
            for p in parts:
                if isinstance(p.get("properties"), dict):
                    for k, v in p["properties"].items():
                        props[k].append(v)
                if isinstance(p.get("required"), list):
                    required.update(r for r in p["required"] if isinstance(r, str))
                if p.get("additionalProperties") is False and not p.get("patternProperties"):
                    closed = True
            keys = set(instance)
            covers = keys <= set(props)
            consts_ok = all(_const_ok(v, instance[k]) for k in keys & set(props) for v in props[k])
            fits = covers and required <= keys and consts_ok
            score = (valid, type_ok, fits, consts_ok, covers or not closed, len(keys & set(props)), -index)
        else:
            consts_ok = all(_const_ok(p, instance) for p in parts)
            score = (valid, type_ok, consts_ok, -index)
        if best is None or score > best[0]:
            best = (score, parts)
    return None if best is None else best[1]


def _type_allows(declared: Any, names: set[str]) -> bool:
    if isinstance(declared, str):
        return declared in names
    if isinstance(declared, list):
        return any(isinstance(t, str) and t in names for t in declared)
    return True


def _const_ok(schema: Any, value: Any) -> bool:
    if not isinstance(schema, dict):
        return True
    if "const" in schema and not _json_equal(schema["const"], value):
        return False
    enum = schema.get("enum")
    return not isinstance(enum, list) or any(_json_equal(e, value) for e in enum)


def _json_equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _pattern_matches(pattern: Any, key: str) -> bool:
    try:
        return re.search(pattern, key) is not None
    except (re.error, TypeError):
        return False


def reorder_for_schema(instance: Any, schema: Any, root: Any = None) -> Any:
    """``instance`` with every object's keys in the order the schema lists them
    (best effort). Listed properties come first in ``properties`` order (own
    ``properties``, then $ref targets, allOf branches, the best-fitting
    anyOf/oneOf branch); keys not listed keep their relative order after them.
    Values are reordered with their subschemas (properties, patternProperties,
    additionalProperties, prefixItems/items/additionalItems). ``root`` (default:
    ``schema``) is where ``$ref`` pointers are resolved. The input is not modified."""
    return _reorder(instance, schema, schema if root is None else root, 0)


_MAX_DEPTH = 200


def _order_like(instance: Any, model: Any) -> Any:
    """``instance`` with the key order of the JSON-equal ``model`` (values kept)."""
    if isinstance(instance, dict) and isinstance(model, dict):
        return {k: _order_like(instance[k], model[k]) for k in model}
    if isinstance(instance, list) and isinstance(model, list):
        return [_order_like(a, b) for a, b in zip(instance, model)]
    return instance


def _reorder_with(instance: Any, schemas: Sequence[Any], root: Any, depth: int) -> Any:
    if not schemas:
        return _reorder(instance, None, root, depth)
    if len(schemas) == 1:
        return _reorder(instance, schemas[0], root, depth)
    return _reorder(instance, {"allOf": list(schemas)}, root, depth)


def _reorder(instance: Any, schema: Any, root: Any, depth: int) -> Any:
    if depth > _MAX_DEPTH or not isinstance(instance, (dict, list)):
        return instance
    parts = _parts(schema, root, instance)
    ignored = _ignored_keywords(root)
    for p in parts:  # a const/enum value is written as the schema gives it: take its key order
        has_const = "const" in p and "const" not in ignored
        candidates = [p["const"]] if has_const else p["enum"] if isinstance(p.get("enum"), list) else []
        for candidate in candidates:
            if _json_equal(candidate, instance):
                return _order_like(instance, candidate)
    if isinstance(instance, list):
        prefix: dict[int, list[Any]] = defaultdict(list)
        rest: list[Any] = []
        for p in parts:
            items = p.get("items")
            if isinstance(p.get("prefixItems"), list) and "prefixItems" not in ignored:
                for i, s in enumerate(p["prefixItems"]):
                    prefix[i].append(s)
                if isinstance(items, dict):
                    rest.append(items)
            elif isinstance(items, list):
                for i, s in enumerate(items):
                    prefix[i].append(s)
                if isinstance(p.get("additionalItems"), dict):
                    rest.append(p["additionalItems"])
            elif isinstance(items, dict):
                rest.append(items)
        out_list = []
        for i, value in enumerate(instance):
            subs = prefix.get(i, rest)
            out_list.append(_reorder_with(value, subs, root, depth + 1))
        return out_list
    # the compiler's order: listed properties, then required names not listed, then the
    # names dependentRequired mentions (sorted), then other keys (here in their own order)
    order: list[str] = []
    props: dict[str, list[Any]] = defaultdict(list)
    required: list[str] = []
    dependent: set[str] = set()
    patterns: list[tuple[Any, Any]] = []
    additional: list[Any] = []
    for p in parts:
        if isinstance(p.get("properties"), dict):
            for k, v in p["properties"].items():
                if k not in props:
                    order.append(k)
                props[k].append(v)
        if isinstance(p.get("required"), list):
            required.extend(r for r in p["required"] if isinstance(r, str))
        for key in ("dependentRequired", "dependencies"):
            entries = p.get(key)
            if isinstance(entries, dict) and key not in ignored:
                for name, names in entries.items():
                    if isinstance(names, list) and set(names) - {name}:
                        dependent.update({name, *(n for n in names if isinstance(n, str))})
        if isinstance(p.get("patternProperties"), dict):
            patterns.extend(p["patternProperties"].items())
        if isinstance(p.get("additionalProperties"), dict):
            additional.append(p["additionalProperties"])
    order += [r for r in dict.fromkeys(required) if r not in props]
    order += [d for d in sorted(dependent) if d not in order]
    keys = list(dict.fromkeys([k for k in order if k in instance] + list(instance)))
    out: dict[str, Any] = {}
    for k in keys:
        subs = props.get(k) or [s for pat, s in patterns if _pattern_matches(pat, k)] or additional
        out[k] = _reorder_with(instance[k], subs, root, depth + 1)
    return out


# --------------------------------------------------------------------------- checking


@dataclass
class Verdict:
    """One instance: its label, the grammar's verdict, the token-level verdict if run."""

    valid: bool
    accepted: bool
    token_accepted: bool | None = None
    description: str = ""


def classify(verdicts: Iterable[Verdict]) -> Status:
    """``passed`` / ``over-constrained`` / ``under-constrained`` / both, from the verdicts."""
    over = under = False
    for v in verdicts:
        if v.valid and not v.accepted:
            over = True
        elif not v.valid and v.accepted:
            under = True
    if over and under:
        return "over-and-under-constrained"
    if over:
        return "over-constrained"
    if under:
        return "under-constrained"
    return "passed"


def compile_error_status(error: BaseException) -> Status:
    """The status of a group whose compile raised ``error``."""
    if isinstance(error, UnsupportedSchemaError):
        return "unsupported"
    if isinstance(error, SchemaError):
        return "schema-error"
    if isinstance(error, LimitError):
        return "limit"
    if isinstance(error, SchemaTimeout):
        return "timeout"
    return "crash"


def unsupported_keyword(error: BaseException) -> str:
    """The keyword an UnsupportedSchemaError is about: the last JSON Schema
    keyword in its pointer, else the first quoted keyword in its message."""
    pointer = getattr(error, "pointer", "") or ""
    for raw in reversed(pointer.lstrip("#").split("/")):
        part = unquote(raw).replace("~1", "/").replace("~0", "~")
        if part in JSON_SCHEMA_KEYWORDS:
            return part
    message = str(error)
    for match in re.finditer(r"[\"'`]([$A-Za-z][A-Za-z0-9_-]*)[\"'`]", message):
        if match.group(1) in JSON_SCHEMA_KEYWORDS:
            return str(match.group(1))
    for word in re.findall(r"[$A-Za-z][A-Za-z0-9]*", message):
        if word in JSON_SCHEMA_KEYWORDS and word not in {"type", "format", "default", "not", "items", "id"}:
            return str(word)
    return "?"


def unsupported_reason(error: BaseException) -> str:
    """The keyword and the why of an UnsupportedSchemaError, with the particulars
    (pointer, quoted values) taken out, so that equal causes count together."""
    message = str(error)
    pointer = getattr(error, "pointer", "") or ""
    if pointer and message.endswith(" at " + pointer):
        message = message[: -len(" at " + pointer)]
    message = re.sub(r"'[^']*'", "'…'", message)
    return f"{unsupported_keyword(error)}: {message}"


class SchemaTimeout(BaseException):
    """A schema ran past the per-schema time limit (a BaseException, so that a
    compiler's ``except Exception`` cannot swallow it)."""


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`SchemaTimeout` in the block after ``seconds`` (SIGALRM; only
    in the main thread on Unix, elsewhere no limit)."""
    usable = (
        seconds is not None
        and seconds > 0
        and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield
        return

    def _raise(signum: int, frame: Any) -> None:
        raise SchemaTimeout(f"ran past {seconds} s")

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))  # type: ignore[arg-type]
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


_TOKEN_INDEX: dict[str, tuple[dict[bytes, int], int]] = {}


def _token_index(vocab: Any) -> tuple[dict[bytes, int], int]:
    key = getattr(vocab, "fingerprint", None) or str(id(vocab))
    if key not in _TOKEN_INDEX:
        index: dict[bytes, int] = {}
        for token_id, data in enumerate(vocab.token_bytes):
            if data and data not in index and token_id not in vocab.special_token_ids:
                index[data] = token_id
        _TOKEN_INDEX[key] = (index, max((len(t) for t in index), default=1))
    return _TOKEN_INDEX[key]


def tokenize(vocab: Any, data: bytes, rng: random.Random | None = None) -> list[int] | None:
    """Token ids whose bytes concatenate to ``data`` (None if there are none).
    Longest match first; with ``rng``, a random viable token half of the time,
    so token boundaries fall in varied places."""
    index, longest = _token_index(vocab)
    n = len(data)
    reachable = [False] * (n + 1)
    reachable[n] = True
    for i in range(n - 1, -1, -1):
        for j in range(i + 1, min(n, i + longest) + 1):
            if reachable[j] and data[i:j] in index:
                reachable[i] = True
                break
    if not reachable[0]:
        return None
    out: list[int] = []
    i = 0
    while i < n:
        choices = [j for j in range(min(n, i + longest), i, -1) if reachable[j] and data[i:j] in index]
        j = choices[0] if rng is None or rng.random() < 0.5 else rng.choice(choices)
        out.append(index[data[i:j]])
        i = j
    return out


def token_level_accepts(compiled: Any, data: bytes, rng: random.Random | None = None) -> bool | None:
    """Whether a matcher takes a tokenization of ``data`` and then EOS (None:
    ``data`` cannot be tokenized)."""
    tokens = tokenize(compiled.vocab, data, rng)
    if tokens is None:
        return None
    matcher = compiled.matcher()
    for token in tokens:
        if not matcher.advance(token):
            return False
    eos = sorted(compiled.vocab.eos_token_ids)
    if eos:
        return bool(matcher.advance(eos[0]))
    return bool(matcher.is_accepting())


@dataclass
class CheckOptions:
    """Options shared by the runners."""

    whitespace: Literal["compact", "flexible"] = "compact"
    strict: bool = True
    #: instances per group/schema also checked token by token (0: none)
    token_sample: int = 1
    #: skip the token-level check for instances longer than this
    token_max_bytes: int = 4096
    seed: int = SAMPLE_SEED
    #: seconds per group/schema (compile and checks); None: no limit
    time_limit: float | None = 30.0


def _stable_rng(seed: int, *parts: str) -> random.Random:
    digest = hashlib.sha256("\0".join((str(seed), *parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def check_schema(
    schema: Any,
    tests: Sequence[Mapping[str, Any]],
    vocab: Any,
    compile_fn: CompileFn,
    options: CheckOptions,
    key: str,
) -> dict[str, Any]:
    """Compile ``schema`` and check each labelled test instance; the result
    record of one group or MaskBench schema (``elapsed_s``: compile and checks)."""
    start = time.perf_counter()
    record = _check_schema(schema, tests, vocab, compile_fn, options, key)
    record["elapsed_s"] = round(time.perf_counter() - start, 4)
    return record


def _check_schema(
    schema: Any,
    tests: Sequence[Mapping[str, Any]],
    vocab: Any,
    compile_fn: CompileFn,
    options: CheckOptions,
    key: str,
) -> dict[str, Any]:
    """Compile ``schema`` and check each labelled test instance; the result
    record of one group or MaskBench schema."""
    record: dict[str, Any] = {"status": None, "compile_s": None}
    verdicts: list[Verdict] = []
    rng = _stable_rng(options.seed, key)
    token_picks = set(rng.sample(range(len(tests)), min(options.token_sample, len(tests))))
    start = time.perf_counter()
    try:
        with time_limit(options.time_limit):
            try:
                compiled = compile_fn(schema, vocab, whitespace=options.whitespace, strict=options.strict)
            except Exception as error:  # noqa: BLE001 - every failure is classified
                record["compile_s"] = time.perf_counter() - start
                record["status"] = compile_error_status(error)
                record["error"] = f"{type(error).__name__}: {error}"[:500]
                if isinstance(error, UnsupportedSchemaError):
                    record["keyword"] = unsupported_keyword(error)
                    record["pointer"] = getattr(error, "pointer", "")
                    record["reason"] = unsupported_reason(error)
                elif record["status"] == "crash":
                    record["traceback"] = traceback.format_exc(limit=-4)[-1500:]
                return record
            record["compile_s"] = time.perf_counter() - start
            for i, test in enumerate(tests):
                data = serialize(reorder_for_schema(test["data"], schema, schema))
                verdict = Verdict(bool(test["valid"]), bool(compiled.accepts_bytes(data)), None, test.get("description", ""))
                if i in token_picks and len(data) <= options.token_max_bytes:
                    verdict.token_accepted = token_level_accepts(compiled, data, rng)
                verdicts.append(verdict)
    except SchemaTimeout as error:
        record["status"] = "timeout"
        record["error"] = f"{error} after {len(verdicts)} of {len(tests)} instances"
        return record
    except Exception as error:  # noqa: BLE001 - a crash while matching is a result too
        record["status"] = "crash"
        record["error"] = f"while matching: {type(error).__name__}: {error}"[:500]
        record["traceback"] = traceback.format_exc(limit=-4)[-1500:]
        return record
    record["status"] = classify(verdicts)
    record["valid_total"] = sum(v.valid for v in verdicts)
    record["valid_accepted"] = sum(v.valid and v.accepted for v in verdicts)
    record["invalid_total"] = sum(not v.valid for v in verdicts)
    record["invalid_accepted"] = sum((not v.valid) and v.accepted for v in verdicts)
    record["wrong"] = [
        {"index": i, "valid": v.valid, "description": v.description}
        for i, v in enumerate(verdicts)
        if v.valid != v.accepted
    ]
    record["token_checked"] = sum(v.token_accepted is not None for v in verdicts)
    record["token_mismatches"] = [
        {"index": i, "bytes_accepted": v.accepted, "tokens_accepted": v.token_accepted}
        for i, v in enumerate(verdicts)
        if v.token_accepted is not None and v.token_accepted != v.accepted
    ]
    return record


# --------------------------------------------------------------------------- JSON Schema Test Suite


def suite_files(draft: str, root: Path | None = None, *, include_optional: bool = False) -> list[Path]:
    """The test files of ``draft`` (``optional/`` left out unless asked)."""
    base = (root or suite_dir()) / draft
    if not base.is_dir():
        raise FileNotFoundError(f"JSON Schema Test Suite folder {base} not found")
    pattern = "**/*.json" if include_optional else "*.json"
    return sorted(base.glob(pattern))


def with_draft(schema: Any, draft: str) -> Any:
    """``schema`` with ``$schema`` naming ``draft`` when it names none (boolean
    schemas and unknown drafts are returned as they are)."""
    if isinstance(schema, dict) and "$schema" not in schema and draft in DRAFT_URIS:
        return {"$schema": DRAFT_URIS[draft], **schema}
    return schema


def run_test_suite(
    draft: str,
    vocab: Any,
    *,
    root: Path | None = None,
    include_optional: bool = False,
    files: Iterable[str] | None = None,
    compile_fn: CompileFn | None = None,
    options: CheckOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run one draft of the Test Suite; returns the results dict (``groups``:
    key ``"<file>#<index>"`` -> record, ``per_file``, ``totals``)."""
    compile_fn = compile_fn or default_compile()
    options = options or CheckOptions()
    base = (root or suite_dir()) / draft
    wanted = None if files is None else set(files)
    groups: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    for path in suite_files(draft, root, include_optional=include_optional):
        name = path.relative_to(base).as_posix()
        if wanted is not None and name not in wanted and path.stem not in wanted:
            continue
        if progress:
            progress(name)
        for index, group in enumerate(json.loads(path.read_text(encoding="utf-8"))):
            key = f"{name}#{index}"
            schema = with_draft(group["schema"], draft)
            record = check_schema(schema, group["tests"], vocab, compile_fn, options, f"{draft}/{key}")
            record["file"] = name
            record["description"] = group.get("description", "")
            groups[key] = record
    return {
        "kind": "test-suite",
        "draft": draft,
        "options": _options_dict(options),
        "elapsed_s": round(time.perf_counter() - started, 2),
        "groups": groups,
        "per_file": _per_file(groups),
        "totals": _totals(groups.values()),
    }


def _options_dict(options: CheckOptions) -> dict[str, Any]:
    return {"whitespace": options.whitespace, "strict": options.strict, "seed": options.seed}


def _totals(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    records = list(records)
    statuses = Counter(r["status"] for r in records)
    return {
        "groups": len(records),
        "compiled": sum(statuses[s] for s in COMPILED_STATUSES),
        "passed": statuses["passed"],
        "over": sum(statuses[s] for s in OVER_STATUSES),
        "under": sum(statuses[s] for s in UNDER_STATUSES),
        "unsupported": statuses["unsupported"],
        "error": sum(statuses[s] for s in ERROR_STATUSES),
        "valid_total": sum(r.get("valid_total", 0) for r in records),
        "valid_accepted": sum(r.get("valid_accepted", 0) for r in records),
        "invalid_total": sum(r.get("invalid_total", 0) for r in records),
        "invalid_accepted": sum(r.get("invalid_accepted", 0) for r in records),
        "token_checked": sum(r.get("token_checked", 0) for r in records),
        "token_mismatches": sum(len(r.get("token_mismatches", ())) for r in records),
    }


def _per_file(groups: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    by_file: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for record in groups.values():
        by_file[record["file"]].append(record)
    keep = ("groups", "passed", "over", "under", "unsupported", "error")
    return {name: {k: v for k, v in _totals(recs).items() if k in keep} for name, recs in sorted(by_file.items())}


# --------------------------------------------------------------------------- MaskBench


def maskbench_files(root: Path | None = None, subsets: Iterable[str] | None = None) -> list[str]:
    """Every MaskBench file as ``"<subset>/<name>.json"``, sorted."""
    base = root or maskbench_dir()
    if not base.is_dir():
        raise FileNotFoundError(f"MaskBench folder {base} not found")
    names = list(subsets) if subsets is not None else [p.name for p in sorted(base.iterdir()) if p.is_dir()]
    out: list[str] = []
    for subset in names:
        folder = base / subset
        if not folder.is_dir():
            raise FileNotFoundError(f"MaskBench subset {folder} not found")
        out.extend(f"{subset}/{p.name}" for p in sorted(folder.glob("*.json")))
    return out


def maskbench_sample(
    root: Path | None = None,
    *,
    per_subset: int = SAMPLE_CANDIDATES,
    seed: int = SAMPLE_SEED,
    subsets: Iterable[str] | None = None,
) -> list[str]:
    """A seeded draw of ``per_subset`` files from each subset, in draw order
    (subsets in name order)."""
    files = maskbench_files(root, subsets)
    by_subset: dict[str, list[str]] = defaultdict(list)
    for name in files:
        by_subset[name.split("/", 1)[0]].append(name)
    out: list[str] = []
    for subset in sorted(by_subset):
        rng = _stable_rng(seed, subset)
        out.extend(rng.sample(by_subset[subset], min(per_subset, len(by_subset[subset]))))
    return out


def select_sample(
    records: Mapping[str, Mapping[str, Any]],
    order: Sequence[str],
    *,
    per_subset: int = SAMPLE_PER_SUBSET,
    max_seconds: float = SAMPLE_MAX_SECONDS,
) -> list[str]:
    """The first ``per_subset`` files of each subset, in ``order``, whose run
    (compile and checks) took at most ``max_seconds``: the CI sample."""
    counts: Counter[str] = Counter()
    out: list[str] = []
    for name in order:
        record = records.get(name)
        subset = name.split("/", 1)[0]
        if record is None or counts[subset] >= per_subset:
            continue
        if record.get("status") == "timeout" or (record.get("elapsed_s") or 0.0) > max_seconds:
            continue
        counts[subset] += 1
        out.append(name)
    return sorted(out)


def jsonschema_verdicts(schema: Any, instances: Sequence[Any]) -> list[bool | None]:
    """python-jsonschema's validity for each instance (the schema's $schema or
    Draft 2020-12, with format checking); None where it could not decide."""
    import jsonschema  # type: ignore[import-untyped,unused-ignore]

    try:
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    except Exception:  # noqa: BLE001
        return [None] * len(instances)
    out: list[bool | None] = []
    for instance in instances:
        try:
            out.append(bool(validator.is_valid(instance)))
        except Exception:  # noqa: BLE001 - unresolvable $ref, bad regex...
            out.append(None)
    return out


def check_maskbench_file(
    name: str, vocab: Any, compile_fn: CompileFn, options: CheckOptions, root: Path | None = None
) -> dict[str, Any]:
    """The record of one MaskBench file (``name`` is ``"<subset>/<file>.json"``)."""
    doc = json.loads(((root or maskbench_dir()) / name).read_text(encoding="utf-8"))
    schema, tests = doc["schema"], doc["tests"]
    record = check_schema(schema, tests, vocab, compile_fn, options, f"maskbench/{name}")
    record["subset"] = name.split("/", 1)[0]
    try:
        with time_limit(options.time_limit):
            oracle = jsonschema_verdicts(schema, [t["data"] for t in tests])
    except SchemaTimeout:
        oracle = [None] * len(tests)
    record["label_disagreements"] = [
        {"index": i, "label": bool(t["valid"]), "jsonschema": v, "description": t.get("description", "")}
        for i, (t, v) in enumerate(zip(tests, oracle))
        if v is not None and v != bool(t["valid"])
    ]
    return record


_WORKER: dict[str, Any] = {}


def _worker_init(vocab: Any, compile_name: str | None, options: CheckOptions, root: Path | None) -> None:
    _WORKER.update(vocab=vocab, options=options, root=root, compile_fn=default_compile())


def _worker_run(name: str) -> tuple[str, dict[str, Any]]:
    return name, check_maskbench_file(name, _WORKER["vocab"], _WORKER["compile_fn"], _WORKER["options"], _WORKER["root"])


def run_maskbench(
    vocab: Any,
    *,
    root: Path | None = None,
    files: Sequence[str] | None = None,
    subsets: Iterable[str] | None = None,
    limit: int | None = None,
    seed: int | None = None,
    compile_fn: CompileFn | None = None,
    options: CheckOptions | None = None,
    jobs: int = 1,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run MaskBench over ``files`` (default: every file of ``subsets``; with
    ``limit``, the first ``limit`` per subset, or a seeded sample of that many
    when ``seed`` is given). ``jobs`` > 1 runs worker processes (real compiler
    only)."""
    options = options or CheckOptions()
    if files is None:
        if limit is not None and seed is not None:
            files = maskbench_sample(root, per_subset=limit, seed=seed, subsets=subsets)
        else:
            files = maskbench_files(root, subsets)
            if limit is not None:
                counts: Counter[str] = Counter()
                kept = []
                for name in files:
                    subset = name.split("/", 1)[0]
                    if counts[subset] < limit:
                        kept.append(name)
                        counts[subset] += 1
                files = kept
    started = time.perf_counter()
    schemas: dict[str, dict[str, Any]] = {}
    if jobs > 1 and compile_fn is None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_init, initargs=(vocab, None, options, root)) as pool:
            for done, (name, record) in enumerate(pool.map(_worker_run, files, chunksize=4)):
                schemas[name] = record
                if progress and done % 100 == 0:
                    progress(f"{done}/{len(files)} {name}")
    else:
        compile_fn = compile_fn or default_compile()
        for done, name in enumerate(files):
            if progress and done % 100 == 0:
                progress(f"{done}/{len(files)} {name}")
            schemas[name] = check_maskbench_file(name, vocab, compile_fn, options, root)
    return maskbench_summary(schemas, options, time.perf_counter() - started)


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def maskbench_summary(schemas: Mapping[str, dict[str, Any]], options: CheckOptions, elapsed: float) -> dict[str, Any]:
    """The results dict of a MaskBench run from its per-schema records."""
    by_subset: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in schemas.values():
        by_subset[record["subset"]].append(record)

    def summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        totals: dict[str, Any] = _totals(records)
        totals["schemas"] = totals.pop("groups")
        times = [r["compile_s"] for r in records if r["status"] in COMPILED_STATUSES and r["compile_s"] is not None]
        totals["coverage"] = round(totals["compiled"] / totals["schemas"], 4) if totals["schemas"] else None
        p50, p99 = _percentile(times, 50), _percentile(times, 99)
        totals["compile_p50_ms"] = None if p50 is None else round(p50 * 1000, 2)
        totals["compile_p99_ms"] = None if p99 is None else round(p99 * 1000, 2)
        totals["label_disagreements"] = sum(len(r.get("label_disagreements", ())) for r in records)
        return totals

    return {
        "kind": "maskbench",
        "options": _options_dict(options),
        "elapsed_s": round(elapsed, 2),
        "schemas": dict(schemas),
        "per_subset": {s: summary(recs) for s, recs in sorted(by_subset.items())},
        "totals": summary(list(schemas.values())),
    }


# --------------------------------------------------------------------------- ratchets


def ratchet_payload(results: Mapping[str, Any]) -> dict[str, Any]:
    """What a ratchet file keeps of a results dict."""
    if results["kind"] == "test-suite":
        return {
            "format": RATCHET_FORMAT,
            "kind": "test-suite",
            "draft": results["draft"],
            "update_with": UPDATE_COMMAND,
            "totals": {k: v for k, v in results["totals"].items() if not k.startswith("token")},
            "per_file": results["per_file"],
            "groups": {k: r["status"] for k, r in sorted(results["groups"].items())},
        }
    keep = ("status", "valid_total", "valid_accepted", "invalid_total", "invalid_accepted")
    totals = {k: v for k, v in results["totals"].items() if not k.startswith(("token", "compile_"))}
    return {
        "format": RATCHET_FORMAT,
        "kind": "maskbench",
        "update_with": UPDATE_COMMAND,
        "totals": totals,
        "per_subset": {
            s: {k: v for k, v in t.items() if not k.startswith(("token", "compile_"))}
            for s, t in results["per_subset"].items()
        },
        "schemas": {k: {f: r[f] for f in keep if f in r} for k, r in sorted(results["schemas"].items())},
    }


def write_ratchet(path: Path, results: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(ratchet_payload(results), indent=1, sort_keys=False, ensure_ascii=False)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_ratchet(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") != RATCHET_FORMAT:
        raise ValueError(f"{path}: ratchet format {data.get('format')!r}, expected {RATCHET_FORMAT}; rerun {UPDATE_COMMAND}")
    return data


@dataclass
class Comparison:
    regressions: list[str] = field(default_factory=list)
    improvements: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.regressions

    def message(self, title: str) -> str:
        lines = []
        if self.regressions:
            lines.append(f"{title}: {len(self.regressions)} regression(s) against the ratchet file:")
            lines.extend(f"  - {r}" for r in self.regressions[:60])
            if len(self.regressions) > 60:
                lines.append(f"  ... and {len(self.regressions) - 60} more")
        if self.improvements:
            lines.append(f"{title}: {len(self.improvements)} improvement(s); record them with: {UPDATE_COMMAND}")
            lines.extend(f"  + {r}" for r in self.improvements[:60])
            if len(self.improvements) > 60:
                lines.append(f"  ... and {len(self.improvements) - 60} more")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def compare_status(key: str, old: str, new: str) -> tuple[str | None, str | None]:
    """(regression, improvement) messages for one group going from ``old`` to ``new``."""
    if old == new:
        return None, None
    change = f"{key}: {old} -> {new}"
    if new in UNDER_STATUSES and old not in UNDER_STATUSES:
        return change + " (now accepts invalid instances)", None
    if old == "passed":
        return change, None
    if old in COMPILED_STATUSES and old not in UNDER_STATUSES and new not in COMPILED_STATUSES:
        return change + " (no longer compiles)", None
    # what is left: gains (passing, compiling, leaving under-constrained) and
    # moves between equally bad states, which count as neither
    if new == "passed" or (old in UNDER_STATUSES and new not in UNDER_STATUSES):
        return None, change
    if old not in COMPILED_STATUSES and new in COMPILED_STATUSES:
        return None, change
    return None, None


def compare_ratchet(expected: Mapping[str, Any], results: Mapping[str, Any]) -> Comparison:
    """Regressions and improvements of ``results`` against a ratchet file's data."""
    comparison = Comparison()
    current = ratchet_payload(results)
    if expected.get("kind") != current["kind"]:
        raise ValueError(f"ratchet kind {expected.get('kind')!r} does not match results of kind {current['kind']!r}")
    if current["kind"] == "test-suite":
        old_groups, new_groups = expected["groups"], current["groups"]
        for key, new in new_groups.items():
            if key not in old_groups:
                comparison.notes.append(f"{key}: new group ({new}); update the ratchet file")
                continue
            regression, improvement = compare_status(key, old_groups[key], new)
            if regression:
                comparison.regressions.append(regression)
            if improvement:
                comparison.improvements.append(improvement)
        missing = sorted(set(old_groups) - set(new_groups))
        if missing:
            comparison.notes.append(f"{len(missing)} group(s) in the ratchet file were not run: {', '.join(missing[:10])}")
    else:
        old_schemas, new_schemas = expected["schemas"], current["schemas"]
        for key, new in new_schemas.items():
            old = old_schemas.get(key)
            if old is None:
                comparison.notes.append(f"{key}: not in the ratchet file; update it")
                continue
            regression, improvement = compare_status(key, old["status"], new["status"])
            problems, gains = [], []
            if regression:
                problems.append(regression)
            if improvement:
                gains.append(improvement)
            if new["status"] in COMPILED_STATUSES and old["status"] in COMPILED_STATUSES:
                if new["invalid_accepted"] > old["invalid_accepted"]:
                    problems.append(f"{key}: invalid instances accepted {old['invalid_accepted']} -> {new['invalid_accepted']}")
                elif new["invalid_accepted"] < old["invalid_accepted"]:
                    gains.append(f"{key}: invalid instances accepted {old['invalid_accepted']} -> {new['invalid_accepted']}")
                if new["valid_accepted"] < old["valid_accepted"]:
                    problems.append(f"{key}: valid instances accepted {old['valid_accepted']} -> {new['valid_accepted']}")
                elif new["valid_accepted"] > old["valid_accepted"]:
                    gains.append(f"{key}: valid instances accepted {old['valid_accepted']} -> {new['valid_accepted']}")
            comparison.regressions.extend(problems)
            comparison.improvements.extend(gains)
        missing = sorted(set(old_schemas) - set(new_schemas))
        if missing:
            comparison.notes.append(f"{len(missing)} schema(s) in the ratchet file were not run: {', '.join(missing[:10])}")
    old_totals, new_totals = expected.get("totals", {}), current["totals"]
    # totals are notes: the per-group checks above decide, and a group leaving
    # under-constrained for an error lowers 'compiled' as an improvement
    for name, better in (("passed", 1), ("compiled", 1), ("under", -1), ("invalid_accepted", -1), ("valid_accepted", 1)):
        if name in old_totals and name in new_totals and old_totals[name] != new_totals[name]:
            worse = (new_totals[name] - old_totals[name]) * better < 0
            comparison.notes.append(f"total {name}: {old_totals[name]} -> {new_totals[name]}{' (worse)' if worse else ''}")
    return comparison


# --------------------------------------------------------------------------- reports


def top_unsupported(results: Iterable[Mapping[str, Any]], n: int = 10) -> list[tuple[str, int]]:
    """The ``n`` keywords most often behind UnsupportedSchemaError."""
    counts: Counter[str] = Counter()
    for result in results:
        records = result["groups"] if result["kind"] == "test-suite" else result["schemas"]
        counts.update(r.get("keyword", "?") for r in records.values() if r["status"] == "unsupported")
    return counts.most_common(n)


def format_report(results: Mapping[str, Any], *, cases: int = 25) -> str:
    """A plain-text report of one results dict."""
    t = results["totals"]
    lines: list[str] = []
    if results["kind"] == "test-suite":
        lines.append(
            f"== JSON Schema Test Suite {results['draft']} ({results['elapsed_s']} s): {t['groups']} groups: "
            f"passed {t['passed']}, over {t['over']}, under {t['under']}, unsupported {t['unsupported']}, "
            f"error {t['error']}; instances: valid accepted {t['valid_accepted']}/{t['valid_total']}, "
            f"invalid accepted {t['invalid_accepted']}/{t['invalid_total']}; token-level mismatches "
            f"{t['token_mismatches']}/{t['token_checked']}"
        )
        lines.append(f"{'file':32} {'groups':>6} {'pass':>5} {'over':>5} {'under':>5} {'unsup':>5} {'err':>5}")
        for name, c in results["per_file"].items():
            lines.append(
                f"{name:32} {c['groups']:6} {c['passed']:5} {c['over']:5} {c['under']:5} {c['unsupported']:5} {c['error']:5}"
            )
        records = results["groups"]
    else:
        lines.append(
            f"== MaskBench ({results['elapsed_s']} s): {t['schemas']} schemas, compiled {t['compiled']} "
            f"({t['coverage']}), passed {t['passed']}, over {t['over']}, under {t['under']}, unsupported "
            f"{t['unsupported']}, error {t['error']}; valid accepted {t['valid_accepted']}/{t['valid_total']}, "
            f"invalid accepted {t['invalid_accepted']}/{t['invalid_total']}; compile p50 {t['compile_p50_ms']} ms, "
            f"p99 {t['compile_p99_ms']} ms; label/jsonschema disagreements {t['label_disagreements']}; "
            f"token-level mismatches {t['token_mismatches']}/{t['token_checked']}"
        )
        lines.append(
            f"{'subset':16} {'schemas':>7} {'compiled':>8} {'coverage':>8} {'valid acc':>11} {'invalid acc':>11} "
            f"{'p50 ms':>8} {'p99 ms':>8}"
        )
        for name, c in results["per_subset"].items():
            lines.append(
                f"{name:16} {c['schemas']:7} {c['compiled']:8} {c['coverage']!s:>8} "
                f"{str(c['valid_accepted']) + '/' + str(c['valid_total']):>11} "
                f"{str(c['invalid_accepted']) + '/' + str(c['invalid_total']):>11} "
                f"{c['compile_p50_ms']!s:>8} {c['compile_p99_ms']!s:>8}"
            )
        records = results["schemas"]
    unsupported = top_unsupported([results], 15)
    if unsupported:
        lines.append("unsupported keywords: " + ", ".join(f"{k} {n}" for k, n in unsupported))
    errors = Counter(r["status"] for r in records.values() if r["status"] in ERROR_STATUSES)
    if errors:
        lines.append("errors: " + ", ".join(f"{k} {n}" for k, n in errors.most_common()))
    for label, statuses in (("under-constrained", UNDER_STATUSES), ("over-constrained", OVER_STATUSES)):
        hits = [(k, r) for k, r in records.items() if r["status"] in statuses]
        if hits:
            lines.append(f"{label} ({len(hits)}):")
            for key, r in hits[:cases]:
                wrong = "; ".join(
                    f"#{w['index']} {'valid' if w['valid'] else 'invalid'} {w['description']!r}" for w in r["wrong"][:3]
                )
                lines.append(f"  {key} {r.get('description', '')!r}: {wrong}")
            if len(hits) > cases:
                lines.append(f"  ... {len(hits) - cases} more")
    crashes = [(k, r) for k, r in records.items() if r["status"] in ("crash", "timeout", "limit", "schema-error")]
    for key, r in crashes[:cases]:
        lines.append(f"  {r['status']}: {key}: {r.get('error', '')[:200]}")
    mismatches = [(k, r) for k, r in records.items() if r.get("token_mismatches")]
    for key, r in mismatches[:cases]:
        lines.append(f"  token-level mismatch: {key}: {r['token_mismatches']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line


def load_vocab(name: str = "llama-bpe", shared: Path | None = None) -> Any:
    """The gramspec Vocabulary of ``shared/vocab/ggml-vocab-<name>.gguf``."""
    from transformers import AutoTokenizer

    from gramspec.vocab import Vocabulary

    folder = (shared or shared_path()) / "vocab"
    file = f"ggml-vocab-{name}.gguf"
    if not (folder / file).is_file():
        raise FileNotFoundError(f"{folder / file} not found (set GRAMSPEC_SHARED to the shared/ folder)")
    return Vocabulary.from_tokenizer(AutoTokenizer.from_pretrained(str(folder), gguf_file=file))


def ratchet_path(name: str, directory: Path | None = None) -> Path:
    """``test_suite_<draft>.json`` / ``maskbench_sample.json`` under ``directory``."""
    return (directory or RATCHET_DIR) / (f"test_suite_{name}.json" if name in DRAFTS else f"{name}.json")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gramspec.evaluation.conformance",
        description="Run the JSON Schema Test Suite and MaskBench against compile_json_schema; report; compare with or rewrite the ratchet files.",
    )
    parser.add_argument("--update-ratchets", action="store_true", help="rewrite tests/ratchets/*.json from this run")
    parser.add_argument("--full", action="store_true", help="run all of MaskBench (the ratchet keeps the sample)")
    parser.add_argument("--drafts", nargs="*", default=list(DRAFTS), help="Test Suite drafts (default: %(default)s)")
    parser.add_argument("--no-maskbench", action="store_true")
    parser.add_argument(
        "--resample",
        action="store_true",
        help="draw the MaskBench sample afresh (seeded; slow schemas left out) instead of keeping the ratchet's files",
    )
    parser.add_argument("--subsets", nargs="*", default=None, help="MaskBench subsets (with --full or --limit)")
    parser.add_argument("--limit", type=int, default=None, help="MaskBench files per subset instead of the sample")
    parser.add_argument("--seed", type=int, default=None, help="sample --limit files per subset with this seed")
    parser.add_argument("--time-limit", type=float, default=30.0, help="seconds per schema (default %(default)s)")
    parser.add_argument("--token-sample", type=int, default=1, help="instances per schema checked token by token")
    parser.add_argument("--vocab", default="llama-bpe", help="shared/vocab tokenizer (default %(default)s)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes for MaskBench")
    parser.add_argument("--json", type=Path, default=None, help="write the full results here")
    parser.add_argument("--ratchet-dir", type=Path, default=RATCHET_DIR)
    parser.add_argument("--optional", action="store_true", help="include the Test Suite's optional/ folder")
    parser.add_argument("--cases", type=int, default=25, help="over/under-constrained cases listed per run")
    args = parser.parse_args(argv)
    if args.update_ratchets and (args.limit is not None or args.subsets or args.optional):
        parser.error("--update-ratchets writes the standard runs; leave out --limit, --subsets and --optional")

    def progress(text: str) -> None:
        print(f"  .. {text}", file=sys.stderr, flush=True)

    vocab = load_vocab(args.vocab)
    options = CheckOptions(token_sample=args.token_sample, time_limit=args.time_limit)
    runs: dict[str, dict[str, Any]] = {}
    for draft in args.drafts:
        runs[draft] = run_test_suite(draft, vocab, include_optional=args.optional, options=options, progress=progress)
        print(format_report(runs[draft], cases=args.cases), flush=True)
    if not args.no_maskbench:
        sample_ratchet = ratchet_path("maskbench_sample", args.ratchet_dir)
        if args.full or args.limit is not None:
            full = run_maskbench(
                vocab, subsets=args.subsets, limit=args.limit, seed=args.seed, options=options, jobs=args.jobs, progress=progress
            )
            print(format_report(full, cases=args.cases), flush=True)
            runs["maskbench_full"] = full
        if args.resample or not sample_ratchet.is_file():
            # draw candidates, keep those quick enough for CI
            candidates = maskbench_sample()
            done = runs["maskbench_full"]["schemas"] if "maskbench_full" in runs else {}
            todo = [name for name in candidates if name not in done]
            extra = run_maskbench(vocab, files=todo, options=options, jobs=args.jobs, progress=progress)["schemas"] if todo else {}
            records = {**done, **extra}
            files = select_sample(records, candidates)
            runs["maskbench_sample"] = maskbench_summary({k: records[k] for k in files}, options, 0.0)
        else:
            files = sorted(read_ratchet(sample_ratchet)["schemas"])
            done = runs["maskbench_full"]["schemas"] if "maskbench_full" in runs else {}
            if all(name in done for name in files):
                runs["maskbench_sample"] = maskbench_summary({k: done[k] for k in files}, options, 0.0)
            else:
                runs["maskbench_sample"] = run_maskbench(vocab, files=files, options=options, jobs=args.jobs, progress=progress)
        print(format_report(runs["maskbench_sample"], cases=args.cases), flush=True)
    keywords = top_unsupported(runs.values(), 10)
    if keywords:
        print("== most frequent unsupported keywords (all runs): " + ", ".join(f"{k} {n}" for k, n in keywords))
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1, default=str) + "\n", encoding="utf-8")
    status = 0
    for name in (*args.drafts, "maskbench_sample"):
        if name not in runs or (name in DRAFTS and args.optional):
            continue
        path = ratchet_path(name, args.ratchet_dir)
        if args.update_ratchets:
            write_ratchet(path, runs[name])
            print(f"wrote {path}")
        elif path.is_file():
            comparison = compare_ratchet(read_ratchet(path), runs[name])
            text = comparison.message(path.name)
            if text:
                print(text)
            if not comparison.ok:
                status = 1
        else:
            print(f"{path} does not exist; create it with {UPDATE_COMMAND}")
    return status


if __name__ == "__main__":
    warnings.simplefilter("default")
    sys.exit(main())
