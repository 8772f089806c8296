"""Tables, markdown reports and plots of benchmark results.

Plots need matplotlib (``pip install 'gramspec[bench]'``); without it the
report says so and the tables are written all the same.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gramspec.evaluation.metrics import (
    ALL_SUBSETS,
    Estimate,
    Metrics,
    SchemaRecord,
    summarize,
)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, markdown: bool = False) -> str:
    """A fixed-width text table, or a markdown one."""
    cells = [[_cell(v) for v in row] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    fmt = lambda row: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
    return "\n".join([fmt(list(headers)), fmt(["-" * w for w in widths]), *(fmt(r) for r in cells)])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _median(estimate: Estimate | None, scale: float = 1.0) -> float | None:
    return None if estimate is None else estimate.median * scale


JSB_HEADERS = ("engine", "subset", "schemas", "declared", "empirical", "compliance", "truncated",
               "GCT ms", "TTFT ms", "TPOT ms")


def jsb_rows(summary: Mapping[str, Mapping[str, Metrics]]) -> list[list[Any]]:
    rows = []
    for engine, subsets in summary.items():
        for subset, m in subsets.items():
            rows.append([engine, subset, m.schemas, round(m.declared_coverage, 3), round(m.empirical_coverage, 3),
                         None if m.compliance is None else round(m.compliance, 3), m.truncated,
                         _median(m.gct_s, 1000), _median(m.ttft_s, 1000), _median(m.tpot_ms)])
    return rows


def ratio_rows(summary: Mapping[str, Mapping[str, Metrics]], reference: str = "gramspec") -> list[list[Any]]:
    """Per other engine, over all subsets: its metric / the reference's (time: above 1 means slower than it)."""
    if reference not in summary:
        return []
    ref = summary[reference][ALL_SUBSETS]
    rows = []
    for engine, subsets in summary.items():
        if engine == reference:
            continue
        m = subsets[ALL_SUBSETS]
        rows.append([engine, _ratio(m.declared_coverage, ref.declared_coverage),
                     _ratio(m.empirical_coverage, ref.empirical_coverage),
                     _ratio(_median(m.gct_s), _median(ref.gct_s)), _ratio(_median(m.ttft_s), _median(ref.ttft_s)),
                     _ratio(_median(m.tpot_ms), _median(ref.tpot_ms))])
    return rows


RATIO_HEADERS = ("engine / gramspec", "declared", "empirical", "GCT", "TTFT", "TPOT")


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def jsonschemabench_text(records: Sequence[SchemaRecord], *, markdown: bool = False) -> str:
    summary = summarize(records)
    parts = [table(JSB_HEADERS, jsb_rows(summary), markdown=markdown)]
    ratios = ratio_rows(summary)
    if ratios:
        parts.append(table(RATIO_HEADERS, ratios, markdown=markdown))
    failures = _failures(records)
    if failures:
        parts.append(table(("engine", "compile failures", "generation ended", "invalid outputs"), failures,
                           markdown=markdown))
    return "\n\n".join(parts)


def _failures(records: Sequence[SchemaRecord]) -> list[list[Any]]:
    from collections import Counter

    rows = []
    for engine in dict.fromkeys(r.engine for r in records):
        mine = [r for r in records if r.engine == engine]
        compile_fail = Counter(r.compile for r in mine if not r.compiled)
        finishes = Counter(r.finish for r in mine if r.compiled and r.finish is not None)
        invalid = sum(r.finish == "eos" and not r.valid for r in mine)
        rows.append([engine, _counts(compile_fail), _counts(finishes), invalid])
    return rows


def _counts(counter: Mapping[Any, int]) -> str:
    return ", ".join(f"{k} {n}" for k, n in sorted(counter.items(), key=lambda kv: -kv[1])) or "none"


def write_jsonschemabench_report(out_dir: Path, records: Sequence[SchemaRecord], *, header: str = "",
                                 plots: bool = True) -> list[Path]:
    """``summary.json``, ``report.md`` and the plots under ``out_dir``; the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(records)
    written = [out_dir / "summary.json", out_dir / "report.md"]
    written[0].write_text(json.dumps({e: {s: m.to_json() for s, m in subs.items()} for e, subs in summary.items()},
                                     indent=1) + "\n", encoding="utf-8")
    notes = []
    if plots:
        made = plot_coverage(summary, out_dir / "coverage.png")
        if made is None:
            notes.append("No plots: matplotlib is not installed (`pip install 'gramspec[bench]'`).")
        else:
            written.append(made)
            speed = plot_speedup(summary, out_dir / "speedup.png")
            if speed is not None:
                written.append(speed)
    images = "".join(f"\n![{p.stem}]({p.name})\n" for p in written[2:])
    text = (f"# JSONSchemaBench results\n\n{header}\n\n{jsonschemabench_text(records, markdown=True)}\n"
            f"{images}\n{' '.join(notes)}\n\n{METRIC_NOTES}\n")
    written[1].write_text(text, encoding="utf-8")
    return written


METRIC_NOTES = """Declared coverage: schemas compiled / schemas. Empirical coverage: outputs that end with EOS,
parse and validate (python-jsonschema, the schema's draft or 2020-12, with format checks) / schemas.
Compliance: empirical / declared. GCT, TTFT (compile + prompt + first token) and TPOT are bootstrap medians
(summary.json has the 95% intervals). Ratios are engine / gramspec over all subsets."""


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_coverage(summary: Mapping[str, Mapping[str, Metrics]], path: Path) -> Path | None:
    """Declared and empirical coverage per subset, one bar pair per engine."""
    plt = _pyplot()
    if plt is None:
        return None
    engines = list(summary)
    subsets = list(dict.fromkeys(s for subs in summary.values() for s in subs))
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.2 * len(subsets) * len(engines) / 2 + 3), 4), sharey=True)
    width = 0.8 / max(1, len(engines))
    for ax, attribute, title in ((axes[0], "declared_coverage", "declared coverage"),
                                 (axes[1], "empirical_coverage", "empirical coverage")):
        for i, engine in enumerate(engines):
            values = [getattr(summary[engine][s], attribute) if s in summary[engine] else 0 for s in subsets]
            ax.bar([x + i * width for x in range(len(subsets))], values, width, label=engine)
        ax.set_xticks([x + width * (len(engines) - 1) / 2 for x in range(len(subsets))], subsets, rotation=30,
                      ha="right")
        ax.set_ylim(0, 1.05)
        ax.set_title(title)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(5, len(engines)), fontsize="small", frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.88))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_speedup(summary: Mapping[str, Mapping[str, Metrics]], path: Path) -> Path | None:
    """TPOT speedup of each gramspec drafter configuration over plain gramspec (None when there is none)."""
    plt = _pyplot()
    base = summary.get("gramspec", {}).get(ALL_SUBSETS)
    configs = [e for e in summary if e.startswith("gramspec[")]
    if plt is None or base is None or base.tpot_ms is None or not configs:
        return None
    values = [base.tpot_ms.median / m.tpot_ms.median if (m := summary[e][ALL_SUBSETS]).tpot_ms else 0 for e in configs]
    fig, ax = plt.subplots(figsize=(1.5 * len(configs) + 2, 3.5))
    ax.bar(configs, values)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_ylabel("TPOT speedup over plain decoding")
    ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


MASK_HEADERS = ("engine", "schemas", "compiled", "coverage", "valid accepted", "invalid accepted",
                "mask p50 µs", "mask p99 µs", "compile p50 ms", "compile p99 ms")


def maskbench_text(summary: Mapping[str, Mapping[str, Any]], *, markdown: bool = False) -> str:
    rows = [[e, s["schemas"], s["compiled"], s["coverage"], f"{s['valid_accepted']}/{s['valid_total']}",
             f"{s['invalid_accepted']}/{s['invalid_total']}", s["mask_p50_us"], s["mask_p99_us"],
             s["compile_p50_ms"], s["compile_p99_ms"]] for e, s in summary.items()]
    return table(MASK_HEADERS, rows, markdown=markdown)


def plot_mask_cdf(times: Mapping[str, Sequence[float]], path: Path) -> Path | None:
    """The distribution of mask times per engine (log x)."""
    plt = _pyplot()
    if plt is None or not any(times.values()):
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for engine, values in times.items():
        if values:
            ordered = sorted(values)
            ax.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], label=engine)
    ax.set_xscale("log")
    ax.set_xlabel("mask time (µs)")
    ax.set_ylabel("fraction of tokens")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def warn(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
