#!/usr/bin/env python
"""Speculative decoding speed on SmolLM2-135M-Instruct (CPU, greedy): each drafter vs plain decoding.

Workloads, one run:

* ``json``: schema-constrained JSON over MaskBench schemas (subsets in turn),
  prompted with the schema in a system message; every configuration must give
  the same tokens as plain constrained greedy decoding (checked and reported).
* ``free``: Spec-Bench questions, unconstrained, for the model-free drafters.

Each workload first runs once untimed (grammar masks are computed lazily and
cached, so without the warm-up the first configuration would pay for them).
For each configuration (``drafter:draft_length``): tokens/s, speedup over plain
decoding of the same workload (total time ratio), mean accepted length (tokens
per target forward), acceptance rate, and the time spent drafting and
verifying. ``unconstrained`` is plain decoding of the JSON prompts without the
schema, the rate the issue's "faster than unconstrained plain decoding" goal
compares with.

Run ``python benchmarks/bench_specdec.py --help``; docs/benchmarks.md explains the table.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import argparse
import functools
import json
import time
from typing import Any

import torch
from bench_generate import table
from bench_masks import machine_info, note, shared_path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "bench_specdec.json"
SUBSETS = ["Github_easy", "Glaiveai2K", "Snowplow", "Github_medium", "JME", "Synthesized"]
JSON_CONFIGS = ["grammar:8", "ngram:6", "grammar+ngram:8", "grammar+ngram:16", "grammar+ngram:adaptive", "recycling:4",
                "trigram:4", "grammar+trigram:8", "grammar+ngram+trigram:8"]
FREE_CONFIGS = ["ngram:6", "ngram:adaptive", "recycling:4", "trigram:4"]
SYSTEM = "You answer with one JSON value that follows this JSON Schema:\n{schema}"
USER = "Give a realistic example instance."


def pick_schemas(root: Path, count: int) -> list[tuple[str, Any]]:
    from gramspec.errors import GramspecError
    from gramspec.grammars.json_schema import compile_json_schema

    pools = [sorted((root / s).glob("*.json")) for s in SUBSETS if (root / s).is_dir()]
    picked: list[tuple[str, Any]] = []
    for i in range(max((len(p) for p in pools), default=0)):
        for pool in pools:
            if len(picked) >= count:
                return picked
            if i < len(pool):
                schema = json.loads(pool[i].read_text(encoding="utf-8"))["schema"]
                try:  # only schemas gramspec supports (the vocabulary does not matter for that)
                    compile_json_schema(schema, _byte_vocab(), max_seconds=10)
                except (GramspecError, ValueError, RecursionError):
                    continue
                picked.append((f"{pool[i].parent.name}/{pool[i].name}", schema))
    return picked


@functools.cache
def _byte_vocab() -> Any:
    from gramspec import Vocabulary

    return Vocabulary.from_token_bytes([bytes([b]) for b in range(256)] + [b""], eos_token_ids=[256])


def parse_config(text: str) -> tuple[str, int | str]:
    name, _, k = text.partition(":")
    return name, ("adaptive" if k == "adaptive" else int(k or 4))


def run_config(model: Any, tok: Any, jobs: list[dict[str, Any]], drafter: str | None, k: int | str) -> dict[str, Any]:
    import gramspec

    runs = []
    for job in jobs:
        result = gramspec.generate(model, tok, job["messages"], schema=job.get("schema"),
                                   max_new_tokens=job["max_new_tokens"], drafter=drafter, num_draft_tokens=k)
        runs.append(result)
    tokens = sum(len(r.token_ids) for r in runs)
    seconds = sum(r.seconds for r in runs)
    forwards = sum(r.stats["target_forwards"] for r in runs)
    drafted = sum(r.stats["drafted"] for r in runs)
    accepted = sum(r.stats["accepted"] for r in runs)
    return {
        "token_ids": [r.token_ids for r in runs],
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds if seconds else None,
        "target_forwards": forwards,
        "mean_accepted_length": tokens / forwards if forwards else None,
        "acceptance_rate": accepted / drafted if drafted else None,
        "draft_s": sum(r.stats["draft_seconds"] for r in runs),
        "verify_s": sum(r.stats["verify_seconds"] for r in runs),
        "valid": sum(r.valid and not r.truncated for r in runs),
        "truncated": sum(r.truncated for r in runs),
        "generations": len(runs),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schemas", type=int, default=12, help="MaskBench schemas in the JSON workload (default 12)")
    parser.add_argument("--questions", type=int, default=6, help="Spec-Bench questions in the free workload (default 6; 0 skips it)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--config", action="append", help=f"drafter:k for the JSON workload (repeatable; default {' '.join(JSON_CONFIGS)})")
    parser.add_argument("--free-config", action="append", help=f"drafter:k for the free workload (default {' '.join(FREE_CONFIGS)})")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--shared", help="the shared/ data folder (default ../shared or $GRAMSPEC_SHARED)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="3 schemas, 2 questions, 64 tokens")
    args = parser.parse_args(argv)
    if args.quick:
        args.schemas, args.questions, args.max_new_tokens = 3, 2, 64
    torch.set_num_threads(args.threads)

    import gramspec

    shared = shared_path(args.shared)
    model, tok = gramspec.load_default()
    schemas = pick_schemas(shared / "maskbench-dev", args.schemas)
    json_jobs = [
        {"name": name, "schema": schema, "max_new_tokens": args.max_new_tokens,
         "messages": [{"role": "system", "content": SYSTEM.format(schema=json.dumps(schema))},
                      {"role": "user", "content": USER}]}
        for name, schema in schemas
    ]
    free_jobs: list[dict[str, Any]] = []
    questions_file = shared / "spec-bench" / "question.jsonl"
    if args.questions and questions_file.exists():
        lines = questions_file.read_text(encoding="utf-8").splitlines()
        free_jobs = [{"name": f"q{json.loads(l)['question_id']}", "max_new_tokens": args.max_new_tokens,
                      "messages": [{"role": "user", "content": json.loads(l)["turns"][0]}]}
                     for l in lines[: args.questions]]

    report: dict[str, Any] = {
        "machine": machine_info(),
        "parameters": {"threads": args.threads, "max_new_tokens": args.max_new_tokens, "schemas": [j["name"] for j in json_jobs],
                       "questions": [j["name"] for j in free_jobs]},
        "json": {},
        "free": {},
    }
    started = time.perf_counter()
    for workload, jobs, configs in (("json", json_jobs, args.config or JSON_CONFIGS), ("free", free_jobs, args.free_config or FREE_CONFIGS)):
        if not jobs:
            continue
        note(f"{workload}: warm-up (grammar masks are computed lazily and cached; every configuration reuses them)")
        run_config(model, tok, jobs, None, 0)
        note(f"{workload}: plain decoding")
        results: dict[str, Any] = {"plain": run_config(model, tok, jobs, None, 0)}
        if workload == "json":
            note("json: unconstrained plain decoding of the same prompts")
            results["unconstrained"] = run_config(model, tok, [{**j, "schema": None} for j in jobs], None, 0)
        for config in configs:
            name, k = parse_config(config)
            note(f"{workload}: {name} k={k}")
            results[config] = run_config(model, tok, jobs, name, k)
        plain = results["plain"]
        for r in results.values():
            r["speedup"] = plain["seconds"] / r["seconds"] if r["seconds"] else None
            r["same_tokens_as_plain"] = f"{sum(a == b for a, b in zip(r['token_ids'], plain['token_ids']))}/{len(jobs)}"
        for r in results.values():
            del r["token_ids"]
        report[workload] = results
    report["seconds"] = time.perf_counter() - started

    print(render(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    note(f"wrote {args.out}")
    return 0


def render(report: dict[str, Any]) -> str:
    p = report["parameters"]
    lines = [
        f"bench_specdec: SmolLM2-135M-Instruct, CPU, torch threads {p['threads']}, greedy, max_new_tokens {p['max_new_tokens']}",
        f"machine: {report['machine'].get('cpu')}, load average at start {report['machine'].get('load_average_at_start')}",
    ]
    headers = ["config", "gens", "tokens", "tok/s", "speedup", "mean acc len", "acceptance", "fwd", "draft s", "verify s", "same", "valid"]
    for workload, title in (("json", f"JSON ({len(p['schemas'])} MaskBench schemas)"), ("free", f"free text ({len(p['questions'])} Spec-Bench questions)")):
        results = report.get(workload) or {}
        if not results:
            continue
        rows = [[name, r["generations"], r["tokens"], r["tokens_per_s"], r["speedup"], r["mean_accepted_length"],
                 r["acceptance_rate"], r["target_forwards"], r["draft_s"], r["verify_s"], r["same_tokens_as_plain"],
                 r["valid"] if workload == "json" and name != "unconstrained" else "-"] for name, r in results.items()]
        lines += ["", title, table(headers, rows)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
