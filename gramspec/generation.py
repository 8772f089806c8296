"""``gramspec.generate``: one constrained generation, validated.

The decode loop is :func:`gramspec.specdec.decode`: plain decoding (one
forward per token with a KV cache) or lossless speculative decoding with a
drafter; tokens are chosen by a :class:`~gramspec.plugins.Pipeline` (warpers,
grammar mask, optional Mirostat) with opportunistic masking. The
result says whether the text validates with an independent oracle
(python-jsonschema with format checking, lark, ``re.fullmatch``) and whether
the constraint was left open at ``max_new_tokens``.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from gramspec.errors import LimitError
from gramspec.grammars.compiled import CompiledGrammar
from gramspec.plugins.asap import CARS, AlignedStore, ASAp, RejectedSample
from gramspec.plugins.base import Pipeline, Plugin
from gramspec.plugins.hf import compile_constraint, vocabulary_for
from gramspec.plugins.mask import GrammarMask
from gramspec.plugins.mirostat import Mirostat
from gramspec.plugins.warpers import MinP, RepetitionPenalty, Temperature, TopK, TopP
from gramspec.specdec import DecodeStats, Drafter, decode, make_drafter
from gramspec.specdec.loop import FinishReason

ConstraintKind = Literal["schema", "grammar", "regex"]
AlignedMode = Literal["asap", "cars"]


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
    #: advancing, forward passes excluded), first_token_us (prompt forward + first token),
    #: and the decode loop's counters (target_forwards, drafted, accepted, acceptance_rate,
    #: mean_accepted_length, draft_seconds, tokens_per_second...)
    stats: dict[str, float] = field(default_factory=dict)

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
    drafter: str | Drafter | None = None,
    num_draft_tokens: int | str = 4,
    draft_model: Any = None,
    aligned: AlignedMode | None = None,
    aligned_store: AlignedStore | None = None,
    max_attempts: int = 1000,
    max_time: float | None = None,
) -> GenerationResult:
    """Generate a reply to ``prompt`` under at most one of ``schema``, ``grammar`` (Lark text) or ``regex``.

    ``prompt`` is text, or a list of chat messages (``{"role": ..., "content": ...}``)
    that goes through the tokenizer's chat template (``chat_template=True``
    applies it to a text prompt as a user message). ``temperature=0`` is
    greedy decoding; ``mirostat_tau`` turns on Mirostat 2.0 sampling. The
    pipeline is: repetition penalty -> temperature -> grammar mask -> top-k
    -> top-p -> min-p -> ``extra_plugins`` -> Mirostat.

    ``drafter`` turns on lossless speculative decoding: a registered name
    (``"grammar"``, ``"ngram"``, ``"recycling"``, ``"trigram"``, ``"model"`` with
    ``draft_model=``), names joined by ``+`` (``"grammar+ngram"``), or a
    :class:`~gramspec.specdec.Drafter`. ``num_draft_tokens`` is the most tokens
    drafted per step, or ``"adaptive"``. The output has the same law as without
    a drafter (greedy: the same tokens); ``stats`` reports target forwards,
    acceptance rate and mean accepted length.

    ``aligned`` samples from the model's distribution conditioned on the
    constraint instead of the masked one (docs/aligned.md): ``"asap"`` (ASAp:
    approaches it as calls sharing ``aligned_store`` accumulate) or ``"cars"``
    (exact: rejection sampling, at most ``max_attempts`` attempts). Hold an
    :class:`~gramspec.plugins.AlignedStore` and pass it to every call to share
    what earlier samples taught (or use :func:`sample_many`).

    ``max_time`` bounds the decoding time in seconds (per attempt); a generation
    cut by it has ``finish_reason == "time"`` and, under a constraint, ``truncated``.

    ``compile_options`` go to the constraint's compiler, e.g. for a schema
    ``{"whitespace": "flexible"}`` or ``{"unlisted_keys": "forbid"}`` (no object keys
    beyond the listed ones where the schema says nothing of them; docs/json_schema.md).
    """
    given = {k: v for k, v in (("schema", schema), ("grammar", grammar), ("regex", regex)) if v is not None}
    if len(given) > 1:
        raise ValueError(f"give at most one of schema, grammar and regex, not {sorted(given)}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, not {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, not {temperature}")
    greedy = temperature == 0 and mirostat_tau is None
    if aligned not in (None, "asap", "cars"):
        raise ValueError(f"aligned must be 'asap', 'cars' or None, not {aligned!r}")
    if aligned is not None and not given:
        raise ValueError("aligned sampling needs a constraint (schema, grammar or regex)")
    if aligned is not None and greedy:
        raise ValueError("aligned sampling samples: give a temperature > 0")

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
    if compiled is not None and aligned is None:
        plugins.append(GrammarMask(compiled))
    elif compiled is not None and kind is not None:
        store = aligned_store if aligned_store is not None else AlignedStore()
        # tries are shared only by the same model, constraint and sampling settings (and prompt)
        key = (id(model), kind, json.dumps(given[kind], sort_keys=True, default=repr),
               temperature, top_k, top_p, min_p, repetition_penalty, tuple(map(repr, extra_plugins)))
        plugins.append((ASAp if aligned == "asap" else CARS)(compiled, store, key))
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
    spec_drafter = None
    if drafter is not None:
        spec_drafter = make_drafter(drafter, draft_model=draft_model, target_model=model)
    stats = DecodeStats()
    attempts = 0
    while True:  # one attempt, except for CARS, which retries until a sample is in the language
        attempts += 1
        try:
            output = decode(
                model,
                prompt_ids,
                pipeline,
                eos_ids=eos_ids,
                max_new_tokens=max_new_tokens,
                greedy=greedy,
                generator=generator,
                drafter=spec_drafter,
                draft_length=num_draft_tokens if spec_drafter is not None else 0,
                temperature=temperature if temperature > 0 else 1.0,
                stats=stats,
                max_time=max_time,
            )
            break
        except RejectedSample:
            pipeline.finish()
            if attempts >= max_attempts:
                raise LimitError(f"CARS found no sample in the language in {max_attempts} attempts") from None
            pipeline.reset(prompt_ids)
    tokens, finish, seconds = output.tokens, output.finish_reason, output.stats.seconds

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
            "pipeline_us": int(output.stats.verify_seconds * 1e6),
            "first_token_us": int(output.stats.first_token_seconds * 1e6),
            **{k: v for k, v in output.stats.as_dict().items() if k not in ("seconds",)},
            "attempts": attempts,
        },
    )
    if kind is not None:
        result.valid, result.json, result.error = validate(kind, given[kind], text)
    return result


def sample_many(
    model: Any,
    tokenizer: Any,
    prompt: str | Sequence[Mapping[str, str]],
    n: int,
    *,
    aligned: AlignedMode | None = "asap",
    aligned_store: AlignedStore | None = None,
    seed: int | None = None,
    temperature: float = 1.0,
    **options: Any,
) -> list[GenerationResult]:
    """``n`` samples for one prompt and constraint, sharing one aligned-sampling trie.

    With ASAp the samples are not independent: each one's estimates include what
    the earlier ones taught, which is how the law of later samples approaches the
    conditioned distribution. ``seed`` seeds the first sample (``seed + i`` the
    ``i``-th); other options are :func:`generate`'s.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, not {n}")
    store = aligned_store if aligned_store is not None else AlignedStore()
    return [
        generate(model, tokenizer, prompt, aligned=aligned, aligned_store=store, temperature=temperature,
                 seed=None if seed is None else seed + i, **options)
        for i in range(n)
    ]


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
