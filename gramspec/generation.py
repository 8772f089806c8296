"""``gramspec.generate``: one constrained generation, validated.

The decode loop is plain (no speculation yet): one forward per token with a
KV cache, the next token chosen by a :class:`~gramspec.plugins.Pipeline`
(warpers, grammar mask, optional Mirostat) with opportunistic masking. The
result says whether the text validates with an independent oracle
(python-jsonschema with format checking, lark, ``re.fullmatch``) and whether
the constraint was left open at ``max_new_tokens``.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from gramspec.grammars.compiled import CompiledGrammar
from gramspec.plugins.base import Pipeline, Plugin
from gramspec.plugins.hf import compile_constraint, vocabulary_for
from gramspec.plugins.mask import GrammarMask
from gramspec.plugins.mirostat import Mirostat
from gramspec.plugins.warpers import MinP, RepetitionPenalty, Temperature, TopK, TopP

ConstraintKind = Literal["schema", "grammar", "regex"]
FinishReason = Literal["eos", "length"]


@dataclass
class GenerationResult:
    """What :func:`generate` returns."""

    text: str
    token_ids: list[int]  # generated tokens, EOS included when it was generated
    finish_reason: FinishReason
    #: The constraint was still open when generation stopped (cut by ``max_new_tokens``).
    truncated: bool
    #: The text validates with the constraint's oracle (always True without a constraint).
    valid: bool
    #: The parsed JSON value (schema constraints, when the text parses).
    json: Any = None
    #: Why the text does not validate, if it does not.
    error: str | None = None
    prompt_tokens: int = 0
    seconds: float = 0.0
    #: full_masks / fast_path_hits (opportunistic masking), pipeline_us (choosing and
    #: advancing, forward passes excluded), first_token_us (prompt forward + first token)
    stats: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.text


def generate(
    model: Any,
    tokenizer: Any,
    prompt: str | Sequence[Mapping[str, str]],
    *,
    schema: Any = None,
    grammar: str | None = None,
    regex: str | None = None,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
    mirostat_tau: float | None = None,
    mirostat_eta: float = 0.1,
    seed: int | None = None,
    chat_template: bool | None = None,
    opportunistic: bool = True,
    extra_plugins: Sequence[Plugin] = (),
    compile_options: Mapping[str, Any] | None = None,
) -> GenerationResult:
    """Generate a reply to ``prompt`` under at most one of ``schema``, ``grammar`` (Lark text) or ``regex``.

    ``prompt`` is text, or a list of chat messages (``{"role": ..., "content": ...}``)
    that goes through the tokenizer's chat template (``chat_template=True``
    applies it to a text prompt as a user message). ``temperature=0`` is
    greedy decoding; ``mirostat_tau`` turns on Mirostat 2.0 sampling. The
    pipeline is: repetition penalty -> temperature -> grammar mask -> top-k
    -> top-p -> min-p -> ``extra_plugins`` -> Mirostat.
    """
    given = {k: v for k, v in (("schema", schema), ("grammar", grammar), ("regex", regex)) if v is not None}
    if len(given) > 1:
        raise ValueError(f"give at most one of schema, grammar and regex, not {sorted(given)}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, not {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, not {temperature}")
    greedy = temperature == 0 and mirostat_tau is None

    eos_ids = _eos_ids(model, tokenizer)
    prompt_ids = _prompt_ids(tokenizer, prompt, chat_template)
    compiled: CompiledGrammar | None = None
    kind: ConstraintKind | None = None
    if given:
        kind, source = next(iter(given.items()))  # type: ignore[assignment]
        vocab = vocabulary_for(tokenizer, vocab_size=_model_vocab_size(model), eos_token_ids=eos_ids)
        compiled = compile_constraint(kind, source, vocab, **dict(compile_options or {}))  # type: ignore[arg-type]

    plugins: list[Plugin] = []
    if repetition_penalty is not None and repetition_penalty != 1.0:
        plugins.append(RepetitionPenalty(repetition_penalty))
    if not greedy and temperature not in (0, 1):
        plugins.append(Temperature(temperature))
    if compiled is not None:
        plugins.append(GrammarMask(compiled))
    if not greedy:
        if top_k is not None:
            plugins.append(TopK(top_k))
        if top_p is not None and top_p < 1:
            plugins.append(TopP(top_p))
        if min_p is not None and min_p > 0:
            plugins.append(MinP(min_p))
    plugins.extend(extra_plugins)
    if mirostat_tau is not None:
        plugins.append(Mirostat(mirostat_tau, mirostat_eta))
    pipeline = Pipeline(plugins, opportunistic=opportunistic)
    pipeline.reset(prompt_ids)

    generator = None
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    tokens: list[int] = []
    finish: FinishReason = "length"
    pipeline_ns = 0  # time choosing and advancing (warpers, mask, sampler), without the forward passes
    first_token_ns: int | None = None  # prompt forward + first choice
    start, start_ns = time.perf_counter(), time.perf_counter_ns()
    with torch.inference_mode():
        past = None
        step_input = torch.tensor([prompt_ids], dtype=torch.long, device=device)
        for _ in range(max_new_tokens):
            out = model(input_ids=step_input, past_key_values=past, use_cache=True)
            past = out.past_key_values
            chose_at = time.perf_counter_ns()
            token = pipeline.choose(out.logits[0, -1], generator=generator, greedy=greedy)
            if not pipeline.advance(token):  # cannot happen with an exact mask
                raise AssertionError(f"the pipeline chose token {token} and then rejected it")
            pipeline_ns += time.perf_counter_ns() - chose_at
            tokens.append(token)
            if first_token_ns is None:
                first_token_ns = time.perf_counter_ns() - start_ns
            if token in eos_ids:
                finish = "eos"
                break
            step_input = torch.tensor([[token]], dtype=torch.long, device=device)
    seconds = time.perf_counter() - start

    text_tokens = [t for t in tokens if t not in eos_ids]
    if compiled is not None:
        text = compiled.vocab.decode(text_tokens).decode("utf-8", errors="replace")
    else:
        text = tokenizer.decode(text_tokens, skip_special_tokens=True)
    truncated = compiled is not None and finish != "eos"
    result = GenerationResult(
        text=text,
        token_ids=tokens,
        finish_reason=finish,
        truncated=truncated,
        valid=True,
        prompt_tokens=len(prompt_ids),
        seconds=seconds,
        stats={
            "full_masks": pipeline.full_masks,
            "fast_path_hits": pipeline.fast_path_hits,
            "pipeline_us": pipeline_ns // 1000,
            "first_token_us": (first_token_ns or 0) // 1000,
        },
    )
    if kind is not None:
        result.valid, result.json, result.error = validate(kind, given[kind], text)
    return result


def validate(kind: str, source: Any, text: str) -> tuple[bool, Any, str | None]:
    """Check ``text`` with the constraint's oracle: (valid, parsed JSON or None, error message or None)."""
    if kind == "schema":
        try:
            value = json.loads(text)
        except ValueError as exc:
            return False, None, f"not JSON: {exc}"
        import jsonschema

        schema = _schema_dict(source)
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        error = jsonschema.exceptions.best_match(
            cls(schema, format_checker=cls.FORMAT_CHECKER).iter_errors(value)
        )
        return error is None, value, None if error is None else error.message
    if kind == "grammar":
        import lark

        try:
            _lark_parser(source).parse(text)
        except lark.exceptions.LarkError as exc:
            return False, None, str(exc).splitlines()[0]
        return True, None, None
    if kind == "regex":
        ok = re.fullmatch(source, text) is not None
        return ok, None, None if ok else "re.fullmatch does not match"
    raise ValueError(f"unknown constraint kind {kind!r}")


@functools.lru_cache(maxsize=32)
def _lark_parser(text: str) -> Any:
    import lark

    return lark.Lark(text, parser="earley")


def _schema_dict(source: Any) -> Any:
    if isinstance(source, str):
        return json.loads(source)
    if isinstance(source, type) and hasattr(source, "model_json_schema"):
        return source.model_json_schema()
    return source


def _model_vocab_size(model: Any) -> int | None:
    try:
        return int(model.get_output_embeddings().weight.shape[0])
    except (AttributeError, TypeError):
        size = getattr(getattr(model, "config", None), "vocab_size", None)
        return int(size) if size else None


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    config = getattr(model, "generation_config", None)
    for value in (getattr(config, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, Iterable):
            ids.update(int(v) for v in value)
    if not ids:
        raise ValueError("neither the model's generation config nor the tokenizer names an EOS token")
    return frozenset(ids)


def _prompt_ids(tokenizer: Any, prompt: str | Sequence[Mapping[str, str]], chat_template: bool | None) -> list[int]:
    if isinstance(prompt, str):
        if not chat_template:
            return list(tokenizer(prompt)["input_ids"])
        prompt = [{"role": "user", "content": prompt}]
    if chat_template is False:
        raise ValueError("a list of messages needs the chat template (chat_template=False was given)")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template: give the prompt as text")
    encoded = tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, return_dict=True)
    return list(encoded["input_ids"])
