"""Command line: ``gramspec generate "prompt"``.

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gramspec",
        description="Constrained decoding for Hugging Face transformers models.",
    )
    parser.add_argument("--version", action="version", version=f"gramspec {gramspec.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_generate(commands)
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
    constraint = p.add_argument_group("constraint (at most one)").add_mutually_exclusive_group()
    constraint.add_argument("--schema", metavar="FILE", help="JSON Schema file: the reply is JSON that validates")
    constraint.add_argument("--grammar", metavar="FILE", help="Lark grammar file")
    constraint.add_argument("--regex", metavar="PATTERN", help="regex the whole reply must match")
    p.set_defaults(run=_generate)


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


def _constraints(args: argparse.Namespace, tokenizer: Any, model: Any = None) -> list[Any]:
    """Logits processors for the requested constraint (empty when unconstrained)."""
    found = _constraint_source(args)
    if found is None:
        return []
    from gramspec.generation import _eos_ids, _model_vocab_size
    from gramspec.plugins import GrammarLogitsProcessor, JSONSchemaLogitsProcessor, RegexLogitsProcessor

    kind, source = found
    cls = {"schema": JSONSchemaLogitsProcessor, "grammar": GrammarLogitsProcessor, "regex": RegexLogitsProcessor}[kind]
    options: dict[str, Any] = {}
    if model is not None:
        options = {"vocab_size": _model_vocab_size(model), "eos_token_ids": _eos_ids(model, tokenizer)}
    return [cls(source, tokenizer, **options)]


def _generate(args: argparse.Namespace) -> int:
    import torch
    from transformers.utils import logging as hf_logging

    from gramspec.models import load_model

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt

    start = time.perf_counter()
    model, tokenizer = load_model(args.model, gguf_file=args.gguf_file)
    load_s = time.perf_counter() - start

    if args.no_chat_template or not getattr(tokenizer, "chat_template", None):
        input_ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    else:
        messages = [{"role": "user", "content": prompt}]
        if args.system is not None:
            messages.insert(0, {"role": "system", "content": args.system})
        input_ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]

    sampling: dict[str, Any] = {"do_sample": False}
    if args.temperature > 0:
        sampling = {"do_sample": True, "temperature": args.temperature, "top_k": None, "top_p": args.top_p}
    processors = _constraints(args, tokenizer, model)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=args.max_new_tokens,
            logits_processor=processors,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            **sampling,
        )
    gen_s = time.perf_counter() - start

    new_tokens = output[0, input_ids.shape[1] :]
    status = ""
    truncated = False
    if processors:
        from gramspec.generation import validate

        processor = processors[0]
        eos = processor.grammar.vocab.eos_token_ids
        text_tokens = [t for t in new_tokens.tolist() if t not in eos]
        text = processor.grammar.vocab.decode(text_tokens).decode("utf-8", errors="replace")
        kind, source = _constraint_source(args) or ("", None)
        valid, _, error = validate(kind, source, text)
        truncated = processor.truncated(output)[0]
        status = "; truncated at --max-new-tokens" if truncated else ("; valid" if valid else f"; INVALID: {error}")
    else:
        text = tokenizer.decode(new_tokens, skip_special_tokens=True)
    print(text)
    n = len(new_tokens)
    print(
        f"gramspec: model {args.model} loaded in {load_s:.1f} s; {input_ids.shape[1]} prompt tokens; "
        f"{n} new tokens in {gen_s:.1f} s ({n / gen_s if gen_s > 0 else 0.0:.1f} tokens/s){status}",
        file=sys.stderr,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.run(args))
    except GramspecError as exc:
        print(f"gramspec: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
