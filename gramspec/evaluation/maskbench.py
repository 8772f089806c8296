"""MaskBench runs: for each schema with labelled instances, compile it, then walk
every instance token by token through the engine's matcher, timing each mask.

Reported per engine (the MaskBench table's columns): schemas compiled, valid
instances accepted, invalid instances wrongly accepted, mask time p50/p99 (µs,
over the tokens of valid instances) and compile time p50/p99 (ms).

Instances are put in the schema's property order and serialized compactly
(:func:`conformance.serialize`), then tokenized over the vocabulary's bytes
(:func:`conformance.tokenize`); an instance is accepted when every token is in
the mask before it and EOS is in the mask at the end. For gramspec the counts
are those of :func:`conformance.check_maskbench_file` (the byte-level verdicts
the ratchet files hold); the token walk is timed on the same compiled grammar
right after, and any instance where it disagrees is counted as a mismatch.
Peers (xgrammar, llguidance, outlines-core) are walked the same way with their own matchers,
compact whitespace, same tokenizer and EOS.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from gramspec.evaluation import conformance
from gramspec.evaluation.corpus import BenchSchema
from gramspec.evaluation.engines import (
    EngineUnavailable,
    LLGuidanceSetup,
    OutlinesSetup,
    XGrammarSetup,
)
from gramspec.evaluation.progress import Progress


@dataclass
class MaskRecord:
    """One engine on one MaskBench schema."""

    engine: str
    id: str
    subset: str
    status: str  # conformance's statuses for gramspec; "compiled" / "error" / "timeout" for peers
    compile_s: float | None = None
    error: str | None = None
    valid_total: int = 0
    valid_accepted: int = 0
    invalid_total: int = 0
    invalid_accepted: int = 0
    token_mismatches: int = 0  # gramspec: instances where the token walk disagrees with the byte-level verdict
    mask_us: list[float] = field(default_factory=list)

    @property
    def compiled(self) -> bool:
        return self.status in conformance.COMPILED_STATUSES or self.status == "compiled"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Walker:
    """A peer's matcher, behind one interface: fresh state, mask, advance."""

    name = ""

    def compile(self, schema: Any) -> Any:
        raise NotImplementedError

    def start(self, compiled: Any) -> Any:
        raise NotImplementedError

    def fill(self, state: Any, bitmask: np.ndarray) -> None:
        raise NotImplementedError

    def advance(self, state: Any, token: int) -> bool:
        raise NotImplementedError


class GramspecWalker(Walker):
    name = "gramspec"

    def start(self, compiled: Any) -> Any:
        return compiled.matcher()

    def fill(self, state: Any, bitmask: np.ndarray) -> None:
        state.fill_mask(bitmask)

    def advance(self, state: Any, token: int) -> bool:
        return bool(state.advance(token))


class XGrammarWalker(Walker):
    name = "xgrammar"

    def __init__(self, tokenizer: Any, vocab: Any) -> None:
        self.peer = XGrammarSetup(tokenizer, vocab.size, vocab.eos_token_ids, "compact")

    def compile(self, schema: Any) -> Any:
        return self.peer.compile(schema)

    def start(self, compiled: Any) -> Any:
        return self.peer.xgr.GrammarMatcher(compiled)

    def fill(self, state: Any, bitmask: np.ndarray) -> None:
        import torch

        state.fill_next_token_bitmask(torch.from_numpy(bitmask))

    def advance(self, state: Any, token: int) -> bool:
        return bool(state.accept_token(token))


class LLGuidanceWalker(Walker):
    name = "llguidance"

    def __init__(self, tokenizer: Any, vocab: Any) -> None:
        self.peer = LLGuidanceSetup(tokenizer, vocab.size, vocab.eos_token_ids, "compact")

    def compile(self, schema: Any) -> Any:
        return self.peer.compile(schema)

    def start(self, compiled: Any) -> Any:
        return self.peer.ll.LLMatcher(self.peer.tokenizer, compiled, log_level=0)

    def fill(self, state: Any, bitmask: np.ndarray) -> None:
        state.unsafe_compute_mask_ptr(bitmask.ctypes.data, bitmask.nbytes)

    def advance(self, state: Any, token: int) -> bool:
        return bool(state.consume_token(token))


class OutlinesWalker(Walker):
    name = "outlines"

    def __init__(self, tokenizer: Any, vocab: Any) -> None:
        self.peer = OutlinesSetup(lambda: vocab, vocab.eos_token_ids, "compact")

    def compile(self, schema: Any) -> Any:
        return self.peer.compile(schema)

    def start(self, compiled: Any) -> Any:
        return self.peer.oc.Guide(compiled)

    def fill(self, state: Any, bitmask: np.ndarray) -> None:
        bitmask[:] = 0
        state.write_mask_into(bitmask.ctypes.data, bitmask.size, bitmask.itemsize)

    def advance(self, state: Any, token: int) -> bool:
        state.advance(token)
        return True


def walk(walker: Walker, compiled: Any, tokens: Sequence[int], eos: int, words: int,
         times: list[float] | None) -> bool:
    """Whether ``tokens`` and then EOS pass the masks; each mask's µs appended to ``times``."""
    state = walker.start(compiled)
    bitmask = np.zeros(words, dtype=np.int32)
    for token in [*tokens, eos]:
        start = time.perf_counter_ns()
        walker.fill(state, bitmask)
        if times is not None:
            times.append((time.perf_counter_ns() - start) / 1000)
        if not (int(bitmask[token >> 5]) >> (token & 31)) & 1:
            return False
        if token != eos and not walker.advance(state, token):
            return False
    return True


def _instances(item: BenchSchema) -> list[tuple[bool, bytes]]:
    return [
        (bool(t["valid"]), conformance.serialize(conformance.reorder_for_schema(t["data"], item.schema, item.schema)))
        for t in item.tests
    ]


def run_gramspec(item: BenchSchema, vocab: Any, options: conformance.CheckOptions) -> MaskRecord:
    """Conformance's record of ``item`` plus the timed token walk of its instances."""
    from gramspec.grammars.json_schema import compile_json_schema

    compiled: list[Any] = []

    def compile_fn(*args: Any, **kwargs: Any) -> Any:
        compiled.append(compile_json_schema(*args, **kwargs))
        return compiled[-1]

    checked = conformance.check_schema(item.schema, item.tests, vocab, compile_fn, options, f"maskbench/{item.id}")
    record = MaskRecord("gramspec", item.id, item.subset, checked["status"], checked.get("compile_s"), checked.get("error"))
    for key in ("valid_total", "valid_accepted", "invalid_total", "invalid_accepted"):
        setattr(record, key, checked.get(key, 0))
    if not record.compiled or not compiled:
        return record
    walker, eos, words = GramspecWalker(), min(vocab.eos_token_ids), (vocab.size + 31) // 32
    wrong = {w["index"] for w in checked.get("wrong", ())}
    try:
        with conformance.time_limit(options.time_limit):
            for index, (valid, data) in enumerate(_instances(item)):
                tokens = conformance.tokenize(vocab, data)
                if tokens is None:
                    continue
                accepted = walk(walker, compiled[-1], tokens, eos, words, record.mask_us if valid else None)
                record.token_mismatches += accepted != (valid != (index in wrong))
    except conformance.SchemaTimeout as error:
        record.error = f"token walk: {error}"
    return record


def run_peer(walker: Walker, item: BenchSchema, vocab: Any, time_limit: float | None) -> MaskRecord:
    record = MaskRecord(walker.name, item.id, item.subset, "compiled")
    start = time.perf_counter()
    try:
        with conformance.time_limit(time_limit):
            compiled = walker.compile(item.schema)
            record.compile_s = time.perf_counter() - start
            eos, words = min(vocab.eos_token_ids), (vocab.size + 31) // 32
            for valid, data in _instances(item):
                tokens = conformance.tokenize(vocab, data)
                if tokens is None:
                    continue
                accepted = walk(walker, compiled, tokens, eos, words, record.mask_us if valid else None)
                record.valid_total += valid
                record.invalid_total += not valid
                record.valid_accepted += valid and accepted
                record.invalid_accepted += (not valid) and accepted
    except conformance.SchemaTimeout as error:
        record.status, record.error = "timeout", str(error)
    except Exception as error:  # noqa: BLE001 - a peer's failure is a result
        record.status, record.error = "error", f"{type(error).__name__}: {error}"[:300]
    if record.compile_s is None:
        record.compile_s = time.perf_counter() - start
    return record


def make_walkers(names: Sequence[str], tokenizer: Any, vocab: Any) -> tuple[list[Walker], dict[str, str]]:
    """The peers' walkers that can be built, and why the others were skipped."""
    classes: dict[str, Callable[[Any, Any], Walker]] = {"xgrammar": XGrammarWalker, "llguidance": LLGuidanceWalker,
                                        "outlines": OutlinesWalker}
    walkers: list[Walker] = []
    skipped: dict[str, str] = {}
    for name in names:
        if name == "gramspec":
            continue
        if name not in classes:
            raise ValueError(f"unknown MaskBench engine {name!r}; choose from gramspec, {', '.join(classes)}")
        try:
            walkers.append(classes[name](tokenizer, vocab))
        except EngineUnavailable as exc:
            skipped[name] = str(exc)
    return walkers, skipped


def run(items: Sequence[BenchSchema], vocab: Any, tokenizer: Any, engines: Sequence[str], *,
        options: conformance.CheckOptions | None = None, progress: bool = True) -> tuple[list[MaskRecord], dict[str, str]]:
    """Every engine on every schema with labelled instances."""
    options = options or conformance.CheckOptions()
    walkers, skipped = make_walkers(engines, tokenizer, vocab)
    records: list[MaskRecord] = []
    labelled = [item for item in items if item.tests]
    with Progress(len(labelled), "maskbench", enabled=progress) as bar:
        for item in labelled:
            if "gramspec" in engines:
                records.append(run_gramspec(item, vocab, options))
            for walker in walkers:
                records.append(run_peer(walker, item, vocab, options.time_limit))
            bar.advance(item.id)
    return records, skipped


def group_status(record: MaskRecord) -> str:
    """A peer's record as a Test Suite verdict (conformance's statuses)."""
    if record.status != "compiled":
        return record.status
    over = record.valid_accepted < record.valid_total
    under = record.invalid_accepted > 0
    return {(False, False): "passed", (True, False): "over-constrained", (False, True): "under-constrained",
            (True, True): "over-and-under-constrained"}[(over, under)]


def summary(records: Sequence[MaskRecord]) -> dict[str, dict[str, Any]]:
    """Per engine: the MaskBench table's numbers."""
    out: dict[str, dict[str, Any]] = {}
    for engine in dict.fromkeys(r.engine for r in records):
        mine = [r for r in records if r.engine == engine]
        compiled = [r for r in mine if r.compiled]
        masks = [t for r in compiled for t in r.mask_us]
        compile_ms = [1000 * r.compile_s for r in compiled if r.compile_s is not None]
        out[engine] = {
            "schemas": len(mine),
            "compiled": len(compiled),
            "coverage": round(len(compiled) / len(mine), 4) if mine else None,
            "valid_accepted": sum(r.valid_accepted for r in compiled),
            "valid_total": sum(r.valid_total for r in compiled),
            "invalid_accepted": sum(r.invalid_accepted for r in compiled),
            "invalid_total": sum(r.invalid_total for r in compiled),
            "token_mismatches": sum(r.token_mismatches for r in mine),
            "mask_tokens": len(masks),
            "mask_p50_us": _round(conformance._percentile(masks, 50)),
            "mask_p99_us": _round(conformance._percentile(masks, 99)),
            "compile_p50_ms": _round(conformance._percentile(compile_ms, 50)),
            "compile_p99_ms": _round(conformance._percentile(compile_ms, 99)),
        }
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
