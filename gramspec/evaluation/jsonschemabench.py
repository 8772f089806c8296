"""JSONSchemaBench runs (arXiv:2501.10868): generate one JSON document per schema.

For each schema and engine: compile the schema (timed, bounded by
``compile_timeout``), then generate greedily from the harness prompt (a system
message, two example schema/instance exchanges, then the schema) with at most
``max_new_tokens`` tokens and ``generation_timeout`` seconds, and check the
output with python-jsonschema. Each result is one line of a JSON Lines file,
written as soon as it is known, so a run can be resumed and shards merged
(:class:`ResultsFile`); :mod:`gramspec.evaluation.metrics` turns the lines into
the paper's metrics.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gramspec.evaluation.conformance import SchemaTimeout, time_limit
from gramspec.evaluation.corpus import BenchSchema
from gramspec.evaluation.engines import Engine, Sampling, Target
from gramspec.evaluation.metrics import SchemaRecord
from gramspec.evaluation.progress import Progress

SYSTEM_PROMPT = (
    "You are a careful assistant that answers with JSON only. The user gives a JSON Schema; "
    "reply with one JSON document that is valid against it, with realistic values, and nothing else: "
    "no explanation, no code fences."
)
#: The two example exchanges that precede the schema (few-shot, as the paper's harness does).
EXAMPLES: tuple[tuple[dict[str, Any], Any], ...] = (
    (
        {
            "type": "object",
            "properties": {
                "title": {"type": "string"},
                "year": {"type": "integer", "minimum": 1800},
                "genres": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["title", "year"],
        },
        {"title": "The Long Voyage", "year": 1994, "genres": ["drama", "adventure"]},
    ),
    (
        {
            "type": "object",
            "properties": {
                "sensor": {"type": "string", "enum": ["temperature", "humidity"]},
                "value": {"type": "number"},
                "ok": {"type": "boolean"},
            },
            "required": ["sensor", "value", "ok"],
            "additionalProperties": False,
        },
        {"sensor": "humidity", "value": 41.5, "ok": True},
    ),
)


def harness_messages(schema: Any) -> list[dict[str, str]]:
    """The chat messages of the harness prompt for ``schema``."""

    def ask(s: Any) -> str:
        text = s if isinstance(s, str) else json.dumps(s, ensure_ascii=False)
        return f"JSON Schema:\n{text}"

    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    for example_schema, instance in EXAMPLES:
        messages.append({"role": "user", "content": ask(example_schema)})
        messages.append({"role": "assistant", "content": json.dumps(instance)})
    messages.append({"role": "user", "content": ask(schema)})
    return messages


def prompt_ids(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """The token ids of ``messages`` through the tokenizer's chat template."""
    from gramspec.generation import _prompt_ids

    return _prompt_ids(tokenizer, messages, True)


@dataclass(frozen=True)
class BenchOptions:
    max_new_tokens: int = 256
    compile_timeout: float = 40.0
    generation_timeout: float = 60.0
    temperature: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, not {self.max_new_tokens}")
        for name in ("compile_timeout", "generation_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be a positive number of seconds, not {getattr(self, name)}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, not {self.temperature}")


def run_schema(engine: Engine, item: BenchSchema, target: Target, options: BenchOptions) -> SchemaRecord:
    """Compile and generate for one schema; every failure becomes part of the record."""
    from gramspec.generation import validate

    record = SchemaRecord(engine=engine.name, id=item.id, subset=item.subset, compile="ok")
    start = time.perf_counter()
    try:
        # the engine's own bound first; the alarm is the backstop (it cannot stop native code)
        with time_limit(options.compile_timeout * 1.25 + 1):
            compiled = engine.compile(item.schema, timeout=options.compile_timeout)
        record.compile_s = time.perf_counter() - start
        if record.compile_s > options.compile_timeout:
            raise SchemaTimeout(f"compiling took {record.compile_s:.1f} s, over the {options.compile_timeout} s limit")
    except SchemaTimeout as error:
        record.compile, record.compile_s, record.compile_error = "timeout", time.perf_counter() - start, str(error)
        return record
    except Exception as error:  # noqa: BLE001 - a failure to compile is a result
        record.compile, record.compile_s = engine.compile_status(error), time.perf_counter() - start
        record.compile_error = f"{type(error).__name__}: {error}"[:500]
        return record

    messages = harness_messages(item.schema)
    ids = prompt_ids(target.tokenizer, messages)
    if target.context_length is not None and len(ids) + options.max_new_tokens > target.context_length:
        record.finish = "prompt-too-long"
        record.error = f"{len(ids)} prompt tokens + {options.max_new_tokens} new exceed the context of {target.context_length}"
        return record
    sampling = Sampling(options.max_new_tokens, options.generation_timeout, options.temperature, options.seed)
    try:
        out = engine.generate(compiled, item.schema, messages, ids, sampling)
    except Exception as error:  # noqa: BLE001 - a peer that fails mid-generation is a result too
        record.finish = "error"
        record.error = f"{type(error).__name__}: {error}"[:500] + "\n" + traceback.format_exc(limit=-3)[-800:]
        return record
    record.finish, record.output, record.output_tokens = out.finish, out.text, len(out.tokens)
    record.first_token_s, record.generation_s, record.stats = out.first_token_s, out.seconds, out.stats
    if out.finish != "eos":
        record.error = f"truncated ({out.finish})"
        return record
    text = out.text if engine.constrained else _strip_fences(out.text)
    record.valid, _, record.error = validate("schema", item.schema, text)
    return record


def _strip_fences(text: str) -> str:
    """An unconstrained reply without Markdown code fences around the JSON."""
    body = text.strip()
    if body.startswith("```"):
        body = body.split("\n", 1)[1] if "\n" in body else ""
        body = body.rsplit("```", 1)[0]
    return body.strip()


class ResultsFile:
    """Results as JSON Lines, one record per line, appended and flushed as they come."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def records(self) -> list[SchemaRecord]:
        return list(read_records([self.path])) if self.path.exists() else []

    def done(self) -> set[tuple[str, str]]:
        return {(r.engine, r.id) for r in self.records()}

    def append(self, record: SchemaRecord) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record.to_json(), ensure_ascii=False, default=str) + "\n"
        with self.path.open("ab+") as handle:
            if handle.tell() > 0:
                handle.seek(-1, 2)
                if handle.read(1) != b"\n":  # a line torn by a killed run: keep it apart
                    line = "\n" + line
            handle.write(line.encode("utf-8"))


def read_records(paths: Iterable[Path]) -> Iterator[SchemaRecord]:
    """The records of several results files (shards); a later line for the same
    (engine, schema) replaces an earlier one; a torn last line is skipped."""
    seen: dict[tuple[str, str], SchemaRecord] = {}
    for path in paths:
        with Path(path).open(encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = SchemaRecord.from_json(json.loads(line))
                except (ValueError, TypeError):
                    continue  # a line cut by a killed run
                seen[(record.engine, record.id)] = record
    return iter(seen.values())


def run(
    engines: Sequence[Engine],
    items: Sequence[BenchSchema],
    target: Target,
    options: BenchOptions,
    results: ResultsFile,
    *,
    resume: bool = False,
    progress: bool = True,
) -> list[SchemaRecord]:
    """Every engine on every schema, appended to ``results``.

    Engines take turns per schema, in an order rotated from one schema to the
    next, so that none is always the first to meet a new prompt (a forward over
    a new length is slower the first time)."""
    done = results.done() if resume else set()
    todo = [
        (engine, item)
        for i, item in enumerate(items)
        for engine in [*engines[i % len(engines):], *engines[: i % len(engines)]]
        if (engine.name, item.id) not in done
    ]
    records: list[SchemaRecord] = []
    with Progress(len(todo), "jsonschemabench", enabled=progress) as bar:
        for engine, item in todo:
            record = run_schema(engine, item, target, options)
            results.append(record)
            records.append(record)
            bar.advance(f"{engine.name} {item.id}")
    return records
