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
        description="Generate a reply to PROMPT with the chat template applied. "
        "The reply goes to stdout, timings to stderr.",
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
    # Constraint options (--schema, --grammar, --regex) go in their own group
    # here; _constraints() turns them into logits processors.
    p.set_defaults(run=_generate)


def _constraints(args: argparse.Namespace, tokenizer: Any) -> list[Any]:
    """Logits processors for the requested constraints (none yet: unconstrained)."""
    return []


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
        sampling = {"do_sample": True, "temperature": args.temperature, "top_k": None, "top_p": None}
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=args.max_new_tokens,
            logits_processor=_constraints(args, tokenizer),
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            **sampling,
        )
    gen_s = time.perf_counter() - start

    new_tokens = output[0, input_ids.shape[1] :]
    print(tokenizer.decode(new_tokens, skip_special_tokens=True))
    n = len(new_tokens)
    print(
        f"gramspec: model {args.model} loaded in {load_s:.1f} s; {input_ids.shape[1]} prompt tokens; "
        f"{n} new tokens in {gen_s:.1f} s ({n / gen_s if gen_s > 0 else 0.0:.1f} tokens/s)",
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
