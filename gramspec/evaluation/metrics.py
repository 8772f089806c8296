"""JSONSchemaBench metrics (arXiv:2501.10868, section 3), from per-schema records.

One record per (engine, schema): how compiling went, what was generated and
when. Per engine and subset, over the ``n`` schemas run:

* **declared coverage**: schemas the engine compiled / ``n``;
* **empirical coverage**: schemas whose output is valid / ``n``. Valid means
  the generation ended by itself (EOS; an output cut by ``max_new_tokens`` or
  the time limit is truncated, never valid) and the text parses as JSON that
  validates against the schema (its ``$schema`` or Draft 2020-12, with format
  checking);
* **compliance**: empirical / declared (None when nothing compiled);
* **GCT** (grammar compilation time, s), over compiled schemas;
* **TTFT** (time to first token, s): compile time + prompt forward + first
  token, over generations with at least one token;
* **TPOT** (time per output token, ms): (generation time - time to the
  first token) / (tokens - 1), over generations with at least two tokens
  (EOS counts: it is a generated token).

Time metrics are bootstrap medians: the mean, over resamples with
replacement, of the resample's median, with a percentile interval.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

#: ok, or why compiling failed (a peer's failure is "error": peers do not type their errors).
CompileStatus = Literal["ok", "unsupported", "schema-error", "limit", "timeout", "error"]
#: eos/length/time (see gramspec.specdec.loop.FinishReason); error: generation raised;
#: prompt-too-long: prompt + max_new_tokens exceed the model's context; None: not run.
Finish = Literal["eos", "length", "time", "error", "prompt-too-long"]


@dataclass
class SchemaRecord:
    """The result of one engine on one schema (one line of a results file)."""

    engine: str
    id: str
    subset: str
    compile: CompileStatus
    compile_s: float | None = None
    compile_error: str | None = None
    finish: Finish | None = None
    output: str | None = None
    output_tokens: int = 0
    #: prompt forward + first token, from the end of compiling (TTFT adds compile_s)
    first_token_s: float | None = None
    generation_s: float | None = None
    #: the output parses and validates (False for a truncated output)
    valid: bool = False
    error: str | None = None
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def compiled(self) -> bool:
        return self.compile == "ok"

    @property
    def ttft_s(self) -> float | None:
        if not self.compiled or self.first_token_s is None or self.output_tokens < 1:
            return None
        return (self.compile_s or 0.0) + self.first_token_s

    @property
    def tpot_ms(self) -> float | None:
        if self.first_token_s is None or self.generation_s is None or self.output_tokens < 2:
            return None
        return 1000 * (self.generation_s - self.first_token_s) / (self.output_tokens - 1)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SchemaRecord:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Estimate:
    """A bootstrap median with its interval."""

    median: float
    low: float
    high: float
    n: int


def bootstrap_median(
    values: Sequence[float], *, resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> Estimate | None:
    """Bootstrap estimate of the median of ``values`` (None when empty)."""
    if not values:
        return None
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), not {confidence}")
    rng = random.Random(seed)
    n = len(values)
    medians = sorted(statistics.median(rng.choices(values, k=n)) for _ in range(resamples))
    tail = (1 - confidence) / 2
    low = medians[max(0, math.floor(tail * resamples))]
    high = medians[min(resamples - 1, math.ceil((1 - tail) * resamples) - 1)]
    return Estimate(statistics.fmean(medians), low, high, n)


@dataclass(frozen=True)
class Metrics:
    """The metrics of one engine on one subset (or on all of them)."""

    schemas: int
    compiled: int
    valid: int
    truncated: int
    declared_coverage: float
    empirical_coverage: float
    compliance: float | None
    gct_s: Estimate | None
    ttft_s: Estimate | None
    tpot_ms: Estimate | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def metrics(records: Iterable[SchemaRecord], *, resamples: int = 1000, seed: int = 0) -> Metrics:
    """The metrics of ``records`` (one engine; see the module docstring)."""
    records = list(records)
    n = len(records)
    if n == 0:
        raise ValueError("no records")
    compiled = [r for r in records if r.compiled]
    valid = sum(r.valid and r.finish == "eos" for r in records)
    truncated = sum(r.finish in ("length", "time") for r in compiled)
    declared = len(compiled) / n
    empirical = valid / n
    gct = [r.compile_s for r in compiled if r.compile_s is not None]
    ttft = [t for r in records if (t := r.ttft_s) is not None]
    tpot = [t for r in records if (t := r.tpot_ms) is not None]
    return Metrics(
        schemas=n,
        compiled=len(compiled),
        valid=valid,
        truncated=truncated,
        declared_coverage=declared,
        empirical_coverage=empirical,
        compliance=(empirical / declared) if compiled else None,
        gct_s=bootstrap_median(gct, resamples=resamples, seed=seed),
        ttft_s=bootstrap_median(ttft, resamples=resamples, seed=seed),
        tpot_ms=bootstrap_median(tpot, resamples=resamples, seed=seed),
    )


ALL_SUBSETS = "all"


def summarize(records: Iterable[SchemaRecord], **options: Any) -> dict[str, dict[str, Metrics]]:
    """``{engine: {subset: Metrics}}``, with an ``"all"`` row per engine."""
    by_engine: dict[str, dict[str, list[SchemaRecord]]] = {}
    for record in records:
        subsets = by_engine.setdefault(record.engine, {})
        subsets.setdefault(record.subset, []).append(record)
        subsets.setdefault(ALL_SUBSETS, []).append(record)
    return {
        engine: {subset: metrics(group, **options) for subset, group in sorted(subsets.items(), key=_all_last)}
        for engine, subsets in by_engine.items()
    }


def _all_last(item: tuple[str, Any]) -> tuple[bool, str]:
    return item[0] == ALL_SUBSETS, item[0]
