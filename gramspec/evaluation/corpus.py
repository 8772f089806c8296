"""Schema corpora for the benchmark runners: reading, selecting, sharding.

Two layouts are read:

* the MaskBench layout (``shared/maskbench-dev``): ``<root>/<subset>/<name>.json``,
  each file a JSON object with ``schema`` (and ``tests``: labelled instances);
* the JSONSchemaBench dataset files: JSON Lines or Parquet with a
  ``json_schema`` column (the schema as JSON text) and optionally ``unique_id``
  and ``subset``; a file's subset is its ``subset`` column, else its folder's
  name (below the root given), else the file's stem.

A selection is deterministic: subsets in the order asked (default: name
order), each subset's schemas sorted by id or shuffled with ``seed``, the first
``limit`` of each, then shard ``i`` of ``n`` takes every ``n``-th from the
``i``-th on, so ``n`` shards cover the selection exactly once.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gramspec.errors import GramspecError


@dataclass(frozen=True)
class BenchSchema:
    """One schema of a corpus."""

    id: str  # "<subset>/<file name>" (MaskBench layout) or "<subset>/<unique_id>", unique in the corpus
    subset: str
    #: The schema: parsed JSON, or the raw text when it does not parse (compiling reports it).
    schema: Any
    #: Labelled instances (``{"data": ..., "valid": bool}``), MaskBench layout only.
    tests: tuple[Mapping[str, Any], ...] = field(default=(), compare=False)


class CorpusError(GramspecError, ValueError):
    """A corpus that cannot be read: missing folder, unknown subset, bad file."""


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"i/n"`` with ``0 <= i < n`` (shards count from 0)."""
        try:
            i, n = (int(part) for part in text.split("/"))
        except ValueError:
            raise ValueError(f"a shard is written i/n (e.g. 0/4), not {text!r}") from None
        if not 0 <= i < n:
            raise ValueError(f"shard {text!r}: need 0 <= i < n (shards count from 0)")
        return cls(i, n)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def load_corpus(source: Path, *, subsets: Sequence[str] | None = None) -> list[BenchSchema]:
    """Every schema under ``source`` (a folder or a .jsonl/.parquet file), in the given subsets."""
    source = Path(source)
    if not source.exists():
        raise CorpusError(f"{source} does not exist")
    if source.is_file():
        items = list(_table_rows(source, source.parent))
    else:
        tables = sorted(p for p in source.rglob("*") if p.suffix in (".jsonl", ".parquet"))
        if tables:
            items = [item for path in tables for item in _table_rows(path, source)]
        else:
            items = list(_maskbench_layout(source))
    if not items:
        raise CorpusError(f"no schemas found under {source} (expected <subset>/*.json files, or .jsonl/.parquet tables)")
    found = sorted({item.subset for item in items})
    if subsets:
        unknown = [s for s in subsets if s not in found]
        if unknown:
            raise CorpusError(f"unknown subset(s) {', '.join(unknown)} in {source}; available: {', '.join(found)}")
        items = [item for item in items if item.subset in set(subsets)]
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise CorpusError(f"schema id {duplicate!r} occurs twice in {source}")
    return items


def select(
    items: Sequence[BenchSchema],
    *,
    subsets: Sequence[str] | None = None,
    limit: int | None = None,
    seed: int | None = None,
    shard: Shard | None = None,
) -> list[BenchSchema]:
    """The deterministic selection the module docstring describes."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    by_subset: dict[str, list[BenchSchema]] = {}
    for item in items:
        by_subset.setdefault(item.subset, []).append(item)
    order = list(subsets) if subsets else sorted(by_subset)
    chosen: list[BenchSchema] = []
    for subset in order:
        group = sorted(by_subset.get(subset, []), key=lambda item: item.id)
        if seed is not None:
            random.Random(f"{seed}/{subset}").shuffle(group)
        chosen.extend(group[:limit] if limit is not None else group)
    if shard is not None:
        chosen = chosen[shard.index :: shard.count]
    return chosen


def test_suite_items(draft: str, root: Path | None = None) -> list[BenchSchema]:
    """The groups of one JSON Schema Test Suite draft as schemas with labelled
    instances: id ``"<file>#<index>"``, subset the keyword file's stem, ``$schema``
    naming the draft when the group names none."""
    from gramspec.evaluation import conformance

    base = (root or conformance.suite_dir()) / draft
    items = []
    for path in conformance.suite_files(draft, root):
        name = path.relative_to(base).as_posix()
        for index, group in enumerate(json.loads(path.read_text(encoding="utf-8"))):
            schema = conformance.with_draft(group["schema"], draft)
            items.append(BenchSchema(f"{name}#{index}", path.stem, schema, tuple(group["tests"])))
    return items


def _maskbench_layout(root: Path) -> Iterator[BenchSchema]:
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(folder.glob("*.json")):
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise CorpusError(f"{path}: not a JSON file ({exc})") from exc
            if not isinstance(doc, dict) or "schema" not in doc:
                raise CorpusError(f"{path}: expected an object with a 'schema' member")
            yield BenchSchema(f"{folder.name}/{path.name}", folder.name, doc["schema"], tuple(doc.get("tests", ())))


def _table_rows(path: Path, root: Path) -> Iterator[BenchSchema]:
    default_subset = path.parent.name if path.parent != root else path.stem
    for number, row in enumerate(_read_table(path)):
        if "json_schema" not in row:
            raise CorpusError(f"{path}: row {number} has no 'json_schema' column")
        raw = row["json_schema"]
        schema: Any = raw
        if isinstance(raw, str):
            try:
                schema = json.loads(raw)
            except ValueError:
                schema = raw  # kept as text: compiling reports the error
        subset = str(row.get("subset") or default_subset)
        name = str(row.get("unique_id") or row.get("id") or f"{path.stem}-{number}")
        yield BenchSchema(f"{subset}/{name}", subset, schema)


def _read_table(path: Path) -> Iterable[Mapping[str, Any]]:
    if path.suffix == ".jsonl":
        rows = []
        with path.open(encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except ValueError as exc:
                        raise CorpusError(f"{path}:{line_number}: not JSON ({exc})") from exc
        return rows
    try:
        import pyarrow.parquet as pq  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise ImportError(f"reading {path.name} needs pyarrow: pip install 'gramspec[bench]'") from exc
    return pq.read_table(path).to_pylist()  # type: ignore[no-any-return]
