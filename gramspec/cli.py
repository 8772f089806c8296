"""Command line: ``gramspec generate "prompt"`` (constrained, optionally speculative).

The generated text goes to stdout; timings and progress go to stderr. Heavy
imports (torch, transformers) happen inside the commands so that ``--help``
and ``--version`` answer at once.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

import gramspec
from gramspec.errors import GramspecError


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _draft_length(text: str) -> int | str:
    if text == "adaptive":
        return text
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 or 'adaptive', got {value}")
    return value


def _drafter_spec(text: str) -> str:
    from gramspec.specdec import (
        available_drafters,  # imports torch: only when the option is given
    )

    unknown = [part for part in text.split("+") if part.strip() not in available_drafters()]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown drafter {unknown[0]!r}; available: {', '.join(available_drafters())}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gramspec",
        description="Constrained decoding for Hugging Face transformers models.",
    )
    parser.add_argument("--version", action="version", version=f"gramspec {gramspec.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_generate(commands)
    _add_bench(commands)
    return parser


def _add_generate(commands: Any) -> None:
    p = commands.add_parser(
        "generate",
        help="generate text from a prompt",
        description="Generate a reply to PROMPT with the chat template applied, optionally "
        "constrained by a JSON Schema, a Lark grammar or a regex. The reply goes to stdout; "
        "timings and whether it validates (or was truncated) go to stderr.",
    )
    p.add_argument("prompt", help="the user message; '-' reads it from stdin")
    model = p.add_argument_group("model")
    model.add_argument(
        "--model",
        default="smollm2",
        help="embedded model name, .gguf file, model folder or locally cached hub id (default: smollm2)",
    )
    model.add_argument("--gguf-file", help="GGUF file name inside the --model folder or hub repository")
    model.add_argument("--system", help="system message (default: the chat template's)")
    model.add_argument("--no-chat-template", action="store_true", help="feed PROMPT to the model as is")
    sampling = p.add_argument_group("sampling")
    sampling.add_argument("--max-new-tokens", type=_positive_int, default=256, help="default: 256")
    sampling.add_argument(
        "--temperature", type=_non_negative_float, default=0.0, help="0 means greedy decoding (default: 0)"
    )
    sampling.add_argument("--seed", type=int, default=0, help="random seed for sampling (default: 0)")
    sampling.add_argument("--top-p", type=float, default=None, help="nucleus sampling (with --temperature)")
    spec = p.add_argument_group("speculative decoding (lossless: the same output law, greedy gives the same text)")
    spec.add_argument(
        "--drafter",
        type=_drafter_spec,
        help="drafter name(s) joined by '+': grammar, ngram, recycling, trigram, layerskip, model (with --draft-model); "
        "e.g. grammar+ngram",
    )
    spec.add_argument(
        "--num-draft-tokens",
        type=_draft_length,
        default=4,
        help="most tokens drafted per step, or 'adaptive' (default: 4)",
    )
    spec.add_argument("--draft-model", help="draft model for --drafter model (same tokenizer as --model)")
    constraint = p.add_argument_group("constraint (at most one)").add_mutually_exclusive_group()
    constraint.add_argument("--schema", metavar="FILE", help="JSON Schema file: the reply is JSON that validates")
    constraint.add_argument("--grammar", metavar="FILE", help="Lark grammar file")
    constraint.add_argument("--regex", metavar="PATTERN", help="regex the whole reply must match")
    p.add_argument("--unlisted-keys", choices=("schema", "forbid"), default="schema",
                   help="with --schema: 'forbid' writes no object keys beyond the listed properties where the "
                        "schema says nothing of other keys (a restriction, as xgrammar's strict mode; "
                        "default: schema, exactly as JSON Schema)")
    p.set_defaults(run=_generate)


def _shard(text: str) -> str:
    from gramspec.evaluation.corpus import Shard

    try:
        Shard.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _drafters(text: str) -> list[str | None]:
    return [None if part == "none" else _drafter_spec(part) for part in _csv(text)]


def _add_bench(commands: Any) -> None:
    bench = commands.add_parser(
        "bench",
        help="benchmarks: JSONSchemaBench, MaskBench, JSON Schema Test Suite",
        description="Evaluation runs (docs/evaluation.md). Results, a markdown report and plots go under --out.",
    )
    kinds = bench.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)

    def corpus_options(p: argparse.ArgumentParser, out: str) -> None:
        p.add_argument("--data", help="schemas: a folder in the MaskBench layout (<subset>/*.json) or JSONSchemaBench "
                       ".jsonl/.parquet files with a json_schema column (default: ../shared/maskbench-dev)")
        p.add_argument("--subset", type=_csv, help="comma-separated subsets (default: all)")
        p.add_argument("--limit", type=_positive_int, help="schemas per subset (default: all)")
        p.add_argument("--seed", type=int, help="shuffle each subset with this seed before --limit (default: sorted)")
        p.add_argument("--shard", type=_shard, help="run shard i of n (i/n, from 0/n) of the selection")
        p.add_argument("--out", default=out, help=f"results folder (default: {out})")
        p.add_argument("--no-progress", action="store_true", help="no progress bar / lines on stderr")
        p.add_argument("--no-plots", action="store_true", help="no PNG plots")

    jsb = kinds.add_parser(
        "jsonschemabench",
        help="generate one JSON document per schema; coverage, compliance, GCT, TTFT, TPOT",
        description="JSONSchemaBench (arXiv:2501.10868): for each schema the harness prompt, greedy decoding, "
        "compile and generation time limits; metrics per subset and engine, side by side with peers.",
    )
    corpus_options(jsb, "bench-results/jsonschemabench")
    jsb.add_argument("--engines", type=_csv, default=["gramspec"],
                     help="comma-separated: gramspec, gramspec-forbid (unlisted object keys forbidden, "
                          "docs/json_schema.md), unconstrained, xgrammar, llguidance, outlines (default: gramspec)")
    jsb.add_argument("--model", default="smollm2", help="model (as for generate; default: smollm2)")
    jsb.add_argument("--gguf-file", help="GGUF file name inside the --model folder")
    jsb.add_argument("--max-new-tokens", type=_positive_int, default=256, help="default: 256")
    jsb.add_argument("--compile-timeout", type=float, default=40.0, help="seconds (default: 40)")
    jsb.add_argument("--generation-timeout", type=float, default=60.0, help="seconds (default: 60)")
    jsb.add_argument("--temperature", type=_non_negative_float, default=0.0, help="0: greedy (default)")
    jsb.add_argument("--whitespace", choices=("compact", "flexible"), default="compact",
                     help="JSON whitespace for every engine (default: compact)")
    jsb.add_argument("--drafter", type=_drafters, default=[None],
                     help="gramspec drafters to compare, comma-separated; 'none' is plain decoding "
                     "(e.g. none,grammar+ngram; default: none)")
    jsb.add_argument("--num-draft-tokens", type=_draft_length, default=4, help="or 'adaptive' (default: 4)")
    jsb.add_argument("--aligned", choices=("asap", "cars"), help="aligned sampling for gramspec (needs --temperature)")
    jsb.add_argument("--workers", type=_positive_int, default=1, help="processes on this machine, one shard each")
    jsb.add_argument("--threads", type=_positive_int, help="torch threads (default: torch's)")
    jsb.add_argument("--resume", action="store_true", help="continue the results file in --out")
    jsb.add_argument("--overwrite", action="store_true", help="replace the results file in --out")
    jsb.add_argument("--no-report", action="store_true", help="write results only (for shards)")
    jsb.set_defaults(run=_bench("jsonschemabench_command"))

    mb = kinds.add_parser(
        "maskbench",
        help="token-by-token mask checks and mask/compile times on labelled instances",
        description="MaskBench: valid instances accepted, invalid ones wrongly accepted, mask time p50/p99, "
        "compile time p50/p99, per engine.",
    )
    corpus_options(mb, "bench-results/maskbench")
    mb.add_argument("--engines", type=_csv, default=["gramspec", "xgrammar", "llguidance"],
                    help="comma-separated: gramspec, xgrammar, llguidance, outlines (default: the first three; missing "
                    "peers skip; outlines-core's index can take over 10 GB on some schemas)")
    mb.add_argument("--vocab", default="llama-bpe", help="tokenizer in ../shared/vocab (default: llama-bpe)")
    mb.add_argument("--time-limit", type=float, default=30.0, help="seconds per schema and engine (default: 30)")
    mb.set_defaults(run=_bench("maskbench_command"))

    ts = kinds.add_parser(
        "testsuite",
        help="JSON Schema Test Suite: groups passed / over- / under-constrained per keyword file",
        description="The JSON Schema Test Suite through gramspec's compiler, compared with the ratchet files.",
    )
    ts.add_argument("--draft", type=_csv, default=["draft2020-12", "draft7"], help="default: draft2020-12,draft7")
    ts.add_argument("--vocab", default="llama-bpe", help="tokenizer in ../shared/vocab (default: llama-bpe)")
    ts.add_argument("--time-limit", type=float, default=30.0, help="seconds per group (default: 30)")
    ts.add_argument("--cases", type=int, default=25, help="over/under-constrained cases listed")
    ts.add_argument("--engines", type=_csv, default=["gramspec"],
                    help="comma-separated: gramspec, xgrammar, llguidance, outlines (default: gramspec)")
    ts.add_argument("--out", default="bench-results/testsuite", help="folder for testsuite_<draft>.json")
    ts.set_defaults(run=_bench("testsuite_command"))

    rp = kinds.add_parser("report", help="merge the results files in a folder (shards) into one report")
    rp.add_argument("out", help="folder with results*.jsonl files")
    rp.add_argument("--no-plots", action="store_true")
    rp.set_defaults(run=_bench("report_command"))


def _bench(name: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        from gramspec.evaluation import commands

        return int(getattr(commands, name)(args, args.argv))

    return run


def _constraint_source(args: argparse.Namespace) -> tuple[str, Any] | None:
    """(kind, source) of the requested constraint, read from its file; None when unconstrained."""
    import json
    from pathlib import Path

    if args.schema is not None:
        try:
            return "schema", json.loads(Path(args.schema).read_text(encoding="utf-8"))
        except OSError as exc:
            raise GramspecError(f"cannot read the schema file: {exc}") from exc
        except ValueError as exc:
            raise GramspecError(f"{args.schema} is not JSON: {exc}") from exc
    if args.grammar is not None:
        try:
            return "grammar", Path(args.grammar).read_text(encoding="utf-8")
        except OSError as exc:
            raise GramspecError(f"cannot read the grammar file: {exc}") from exc
    if args.regex is not None:
        return "regex", args.regex
    return None


def _generate(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from gramspec.generation import generate
    from gramspec.models import load_model

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    if args.unlisted_keys != "schema" and args.schema is None:
        raise GramspecError("--unlisted-keys is an option of --schema")
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt

    start = time.perf_counter()
    model, tokenizer = load_model(args.model, gguf_file=args.gguf_file)
    load_s = time.perf_counter() - start

    use_template = not args.no_chat_template and bool(getattr(tokenizer, "chat_template", None))
    request: str | list[dict[str, str]] = prompt
    if use_template:
        request = [{"role": "user", "content": prompt}]
        if args.system is not None:
            request.insert(0, {"role": "system", "content": args.system})
    found = _constraint_source(args)
    constraint = {} if found is None else {found[0]: found[1]}
    draft_model = None
    if args.draft_model is not None:
        draft_model, _ = load_model(args.draft_model)
    result = generate(
        model,
        tokenizer,
        request,
        **constraint,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        chat_template=use_template,
        drafter=args.drafter,
        num_draft_tokens=args.num_draft_tokens,
        draft_model=draft_model,
        compile_options={"unlisted_keys": args.unlisted_keys} if args.schema is not None else None,
    )
    print(result.text)
    status = ""
    if constraint:
        status = "; truncated at --max-new-tokens" if result.truncated else (
            "; valid" if result.valid else f"; INVALID: {result.error}"
        )
    n = len(result.token_ids)
    speed = f"{n / result.seconds if result.seconds > 0 else 0.0:.1f} tokens/s"
    spec = ""
    if args.drafter is not None:
        spec = (
            f"; drafter {args.drafter}: {result.stats['target_forwards']} target forwards, "
            f"{result.stats['mean_accepted_length']:.2f} tokens per forward, "
            f"acceptance {result.stats['acceptance_rate']:.2f}"
        )
    print(
        f"gramspec: model {args.model} loaded in {load_s:.1f} s; {result.prompt_tokens} prompt tokens; "
        f"{n} new tokens in {result.seconds:.1f} s ({speed}){spec}{status}",
        file=sys.stderr,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.run(args))
    except (GramspecError, FileNotFoundError) as exc:
        print(f"gramspec: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
