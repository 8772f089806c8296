"""What ``gramspec bench ...`` runs (the parsers live in :mod:`gramspec.cli`).

Results go under ``--out`` (one folder per run): ``results.jsonl`` (or
``results-shard<i>of<n>.jsonl`` for a shard), ``summary.json``, ``report.md``
and PNG plots. ``--workers N`` starts N processes on this machine, each running
one shard, and merges them; shards run on other machines are merged by copying
their results files into one folder and running ``gramspec bench report``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gramspec.errors import GramspecError
from gramspec.evaluation import conformance, corpus, jsonschemabench, maskbench, report
from gramspec.evaluation.corpus import Shard


def _results_path(out: Path, shard: Shard | None) -> Path:
    return out / ("results.jsonl" if shard is None else f"results-shard{shard.index}of{shard.count}.jsonl")


def _results_files(out: Path) -> list[Path]:
    return sorted(out.glob("results*.jsonl"))


def _prepare_results(path: Path, *, resume: bool, overwrite: bool) -> None:
    if path.exists() and not resume:
        if not overwrite:
            raise GramspecError(f"{path} exists: pass --resume to continue that run or --overwrite to start afresh")
        path.unlink()


def _items(args: argparse.Namespace, shard: Shard | None) -> list[corpus.BenchSchema]:
    data = Path(args.data) if args.data else conformance.maskbench_dir()
    items = corpus.load_corpus(data, subsets=args.subset)
    return corpus.select(items, subsets=args.subset, limit=args.limit, seed=args.seed, shard=shard)


def jsonschemabench_command(args: argparse.Namespace, argv: Sequence[str]) -> int:
    shard = Shard.parse(args.shard) if args.shard else None
    out = Path(args.out)
    if args.workers > 1:
        if shard is not None:
            raise GramspecError("--workers runs the shards itself: leave out --shard")
        return _run_workers(args, argv, out)
    options = jsonschemabench.BenchOptions(args.max_new_tokens, args.compile_timeout, args.generation_timeout,
                                           args.temperature, args.seed or 0)
    items = _items(args, shard)
    path = _results_path(out, shard)
    _prepare_results(path, resume=args.resume, overwrite=args.overwrite)
    import torch
    from transformers.utils import logging as hf_logging

    from gramspec.evaluation.engines import (
        GRAMSPEC_ENGINES,
        EngineUnavailable,
        Target,
        make_engine,
    )
    from gramspec.models import load_model

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, gguf_file=args.gguf_file)
    target = Target.of(model, tokenizer)
    engines = []
    for name in args.engines:
        drafters = args.drafter if name in GRAMSPEC_ENGINES else [None]
        for drafter in drafters:
            try:
                engines.append(make_engine(name, target, whitespace=args.whitespace, drafter=drafter,
                                           num_draft_tokens=args.num_draft_tokens, aligned=args.aligned))
            except EngineUnavailable as exc:
                print(f"gramspec bench: skipping {name}: {exc}", file=sys.stderr)
    if not engines:
        raise GramspecError("no engine to run")
    print(f"gramspec bench jsonschemabench: {len(items)} schemas x {len(engines)} engines "
          f"({', '.join(e.name for e in engines)}) -> {path}", file=sys.stderr)
    jsonschemabench.run(engines, items, target, options, jsonschemabench.ResultsFile(path), resume=args.resume,
                        progress=not args.no_progress)
    if args.no_report:
        return 0
    return _report_jsonschemabench(out, _header(args, f"{len(items)} schemas"), plots=not args.no_plots)


def _header(args: argparse.Namespace, what: str) -> str:
    settings = {k: getattr(args, k) for k in ("model", "subset", "limit", "seed", "max_new_tokens", "compile_timeout",
                                               "generation_timeout", "temperature", "whitespace", "drafter", "aligned")}
    return (f"{time.strftime('%Y-%m-%d %H:%M')} on {platform.machine()} ({os.cpu_count()} cores), {what}. "
            f"Settings: `{json.dumps(settings)}`")


def _report_jsonschemabench(out: Path, header: str, *, plots: bool) -> int:
    files = _results_files(out)
    if not files:
        raise GramspecError(f"no results*.jsonl files in {out}")
    records = list(jsonschemabench.read_records(files))
    print(report.jsonschemabench_text(records))
    for path in report.write_jsonschemabench_report(out, records, header=header, plots=plots):
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _run_workers(args: argparse.Namespace, argv: Sequence[str], out: Path) -> int:
    """N copies of this command, one shard each, then one report of them all."""
    n = args.workers
    base = _without_option(list(argv), "--workers")
    threads = max(1, (os.cpu_count() or 1) // n)
    procs = []
    for i in range(n):
        command = [sys.executable, "-m", "gramspec", *base, "--shard", f"{i}/{n}", "--no-report", "--no-progress",
                   "--threads", str(threads)]
        procs.append(subprocess.Popen(command))
    codes = [p.wait() for p in procs]
    if any(codes):
        print(f"gramspec bench: worker exit codes {codes}; the report covers what they wrote", file=sys.stderr)
    if args.no_report:
        return max(codes)
    status = _report_jsonschemabench(out, _header(args, f"{n} workers"), plots=not args.no_plots)
    return max(max(codes), status)


def _without_option(argv: list[str], name: str) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            out.append(arg)
    return out


def report_command(args: argparse.Namespace, argv: Sequence[str]) -> int:
    return _report_jsonschemabench(Path(args.out), f"Merged from {len(_results_files(Path(args.out)))} results files.",
                                   plots=not args.no_plots)


def maskbench_command(args: argparse.Namespace, argv: Sequence[str]) -> int:
    shard = Shard.parse(args.shard) if args.shard else None
    items = _items(args, shard)
    tokenizer, vocab = _shared_tokenizer(args.vocab)
    options = conformance.CheckOptions(time_limit=args.time_limit)
    records, skipped = maskbench.run(items, vocab, tokenizer, args.engines, options=options,
                                     progress=not args.no_progress)
    for name, why in skipped.items():
        print(f"gramspec bench: skipping {name}: {why}", file=sys.stderr)
    summary = maskbench.summary(records)
    print(report.maskbench_text(summary))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "maskbench.json").write_text(json.dumps({"summary": summary, "skipped": skipped,
                                                     "records": [r.to_json() for r in records]}) + "\n")
    (out / "maskbench.md").write_text("# MaskBench\n\n" + report.maskbench_text(summary, markdown=True) + "\n")
    written = [out / "maskbench.json", out / "maskbench.md"]
    if not args.no_plots:
        times = {e: [t for r in records if r.engine == e for t in r.mask_us] for e in summary}
        plot = report.plot_mask_cdf(times, out / "mask_cdf.png")
        if plot is not None:
            written.append(plot)
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return 1 if any(s["invalid_accepted"] for e, s in summary.items() if e == "gramspec") else 0


def _shared_tokenizer(name: str) -> tuple[Any, Any]:
    """The HF tokenizer of ``shared/vocab/ggml-vocab-<name>.gguf`` and its gramspec Vocabulary."""
    from transformers import AutoTokenizer

    from gramspec.vocab import Vocabulary

    folder = conformance.shared_path() / "vocab"
    file = f"ggml-vocab-{name}.gguf"
    if not (folder / file).is_file():
        raise GramspecError(f"{folder / file} not found (set GRAMSPEC_SHARED to the shared/ folder)")
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=file)
    return tokenizer, Vocabulary.from_tokenizer(tokenizer)


def testsuite_command(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """gramspec through the conformance checker (vs the ratchets); peers through their matchers."""
    options = conformance.CheckOptions(time_limit=args.time_limit)
    peers = [e for e in args.engines if e != "gramspec"]
    tokenizer, vocab = _shared_tokenizer(args.vocab) if peers else (None, conformance.load_vocab(args.vocab))
    walkers, skipped = maskbench.make_walkers(peers, tokenizer, vocab)
    for name, why in skipped.items():
        print(f"gramspec bench: skipping {name}: {why}", file=sys.stderr)
    status = 0
    out = Path(args.out)
    for draft in args.draft:
        totals: dict[str, dict[str, int]] = {}
        if "gramspec" in args.engines:
            results = conformance.run_test_suite(draft, vocab, options=options)
            print(conformance.format_report(results, cases=args.cases), flush=True)
            totals["gramspec"] = {k: results["totals"][k] for k in TESTSUITE_COLUMNS}
            path = conformance.ratchet_path(draft)
            if path.is_file():
                comparison = conformance.compare_ratchet(conformance.read_ratchet(path), results)
                print(comparison.message(path.name) or f"same as {path.name}")
                status |= not comparison.ok
        if walkers:
            items = corpus.test_suite_items(draft)
            for walker in walkers:
                statuses = [maskbench.group_status(maskbench.run_peer(walker, item, vocab, args.time_limit))
                            for item in items]
                totals[walker.name] = _suite_totals(statuses)
        rows = [[engine, *(t[k] for k in TESTSUITE_COLUMNS)] for engine, t in totals.items()]
        print(f"== {draft}, groups per engine")
        print(report.table(("engine", *TESTSUITE_COLUMNS), rows))
        out.mkdir(parents=True, exist_ok=True)
        (out / f"testsuite_{draft}.json").write_text(json.dumps(totals, indent=1) + "\n", encoding="utf-8")
    return status


TESTSUITE_COLUMNS = ("groups", "passed", "over", "under", "unsupported", "error")


def _suite_totals(statuses: Sequence[str]) -> dict[str, int]:
    return {
        "groups": len(statuses),
        "passed": statuses.count("passed"),
        "over": sum(s in conformance.OVER_STATUSES for s in statuses),
        "under": sum(s in conformance.UNDER_STATUSES for s in statuses),
        "unsupported": 0,  # peers do not tell unsupported from other compile errors
        "error": sum(s in ("error", "timeout") for s in statuses),
    }

