"""HF LogitsProcessors and gramspec.generate on a tiny random Llama with GPT-2's vocabulary."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

import gramspec
from gramspec.generation import validate
from gramspec.plugins import (
    GrammarConstraintLogitsProcessor,
    GrammarLogitsProcessor,
    JSONSchemaLogitsProcessor,
    RegexLogitsProcessor,
)

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "kind": {"enum": ["cat", "dog"]},
    },
    "required": ["name", "age", "kind"],
    "additionalProperties": False,
}
LARK = 'start: "(" item ("," item)* ")"\nitem: /[a-z]{1,4}/ | start\n'
REGEX = r"[0-9]{1,3}(\.[0-9]{1,2})? (kg|lb)"
CONSTRAINTS: dict[str, tuple[str, Any]] = {"schema": ("schema", SCHEMA), "grammar": ("grammar", LARK), "regex": ("regex", REGEX)}
PROMPTS = ["Hello there, tell me", "A", "The answer, as JSON, in one line:"]


@pytest.fixture(scope="module")
def tokenizer(load_shared_tokenizer: Callable[[str], Any]) -> Any:
    tok = load_shared_tokenizer("gpt-2")
    tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def tiny_llama(vocab_size: int, seed: int = 0) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        eos_token_id=50256,
        pad_token_id=50256,
        bos_token_id=50256,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # larger logits: a sharper, more varied random model
        model.lm_head.weight.mul_(40)
    return model


@pytest.fixture(scope="module")
def model(tokenizer: Any) -> Any:
    return tiny_llama(len(tokenizer))


def make_processor(kind: str, tokenizer: Any, **options: Any) -> GrammarConstraintLogitsProcessor:
    source = CONSTRAINTS[kind][1]
    cls = {"schema": JSONSchemaLogitsProcessor, "grammar": GrammarLogitsProcessor, "regex": RegexLogitsProcessor}[kind]
    return cls(source, tokenizer, **options)


def check_outputs(
    processor: GrammarConstraintLogitsProcessor, kind: str, sequences: torch.Tensor, prompt_length: int
) -> list[str]:
    """Every row validates with the oracle, or the processor reports it truncated."""
    vocab = processor.grammar.vocab
    eos = vocab.eos_token_ids
    truncated = processor.truncated(sequences)
    texts = []
    for row, cut in zip(sequences[:, prompt_length:].tolist(), truncated):
        tokens = row[: next((i for i, t in enumerate(row) if t in eos), len(row))]
        text = vocab.decode(tokens).decode("utf-8", errors="replace")
        ok, _, error = validate(kind, CONSTRAINTS[kind][1], text)
        assert ok or cut, f"{kind}: {text!r} is neither valid nor reported truncated ({error})"
        if not cut:
            assert ok and row[len(tokens)] in eos
        texts.append(text)
    return texts


def run_generate(model: Any, tokenizer: Any, processor: Any, **options: Any) -> tuple[torch.Tensor, int]:
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = model.generate(
            **batch,
            logits_processor=[processor],
            pad_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **options,
        )
    return out, int(batch["input_ids"].shape[1])


DECODING = {
    "greedy": {"do_sample": False, "max_new_tokens": 24},
    "sample": {"do_sample": True, "temperature": 1.0, "top_k": None, "top_p": 0.95, "max_new_tokens": 24},
    "sample_n2": {"do_sample": True, "num_return_sequences": 2, "max_new_tokens": 20},
    "beam": {"do_sample": False, "num_beams": 3, "num_return_sequences": 3, "max_new_tokens": 16},
}


@pytest.mark.parametrize("decoding", sorted(DECODING))
@pytest.mark.parametrize("kind", sorted(CONSTRAINTS))
def test_processor_outputs_validate_or_are_truncated(model: Any, tokenizer: Any, kind: str, decoding: str) -> None:
    processor = make_processor(kind, tokenizer)
    torch.manual_seed(0)
    sequences, prompt_length = run_generate(model, tokenizer, processor, **DECODING[decoding])
    expected_rows = len(PROMPTS) * DECODING[decoding].get("num_return_sequences", 1)
    assert sequences.shape[0] == expected_rows
    check_outputs(processor, kind, sequences, prompt_length)
    assert not processor.rejected_rows


def test_processor_is_reusable_across_generations(model: Any, tokenizer: Any) -> None:
    processor = make_processor("regex", tokenizer)
    first, _ = run_generate(model, tokenizer, processor, do_sample=False, max_new_tokens=10)
    second, n2 = run_generate(model, tokenizer, processor, do_sample=False, max_new_tokens=10)
    assert torch.equal(first, second)
    check_outputs(processor, "regex", second, n2)


def test_processor_detects_a_new_prompt_one_token_longer_than_the_last_sequence(tokenizer: Any) -> None:
    """A reused processor whose next prompt happens to be one token longer than its last
    sequence starts over, instead of reading the new prompt's tail as generated tokens."""
    processor = make_processor("regex", tokenizer)
    digit = processor.grammar.vocab.token_bytes.index(b"1")
    scores = torch.zeros(2, len(tokenizer))
    prompt = torch.zeros(2, 3, dtype=torch.long)
    processor(prompt, scores)
    processor(torch.cat([prompt, torch.full((2, 1), digit)], dim=1), scores)  # the last sequence: 4 tokens
    new_prompt = torch.full((2, 5), 7, dtype=torch.long)
    expected = make_processor("regex", tokenizer)(new_prompt, scores)
    assert torch.equal(processor(new_prompt, scores), expected)
    assert processor.prompt_length == 5
    # and a real continuation of it is still one
    fresh = make_processor("regex", tokenizer)
    fresh(new_prompt, scores)
    step = torch.cat([new_prompt, torch.full((2, 1), digit)], dim=1)
    assert torch.equal(processor(step, scores), fresh(step, scores))
    assert processor.prompt_length == 5


def test_processor_handles_more_logits_than_tokenizer_ids(tokenizer: Any) -> None:
    big = tiny_llama(len(tokenizer) + 7, seed=1)
    with torch.no_grad():  # make the extra ids the favourites: the mask must still forbid them
        big.lm_head.weight[len(tokenizer) :] = big.lm_head.weight[:100].mean(0) * 50
    processor = make_processor("schema", tokenizer, vocab_size=len(tokenizer) + 7)
    sequences, prompt_length = run_generate(big, tokenizer, processor, do_sample=False, max_new_tokens=16)
    assert int(sequences[:, prompt_length:].max()) < len(tokenizer)
    check_outputs(processor, "schema", sequences, prompt_length)


def test_processor_handles_fewer_logits_than_tokenizer_ids(tokenizer: Any) -> None:
    processor = make_processor("regex", tokenizer)
    scores = torch.zeros(2, len(tokenizer) - 3)
    ids = torch.zeros(2, 4, dtype=torch.long)
    out = processor(ids, scores)
    assert out.shape == scores.shape and torch.isfinite(out).any(dim=1).all()


def test_processor_state_follows_reordered_beams(tokenizer: Any) -> None:
    """Rows swapped between steps (as beam search does) still get their own prefix's mask."""
    processor = make_processor("regex", tokenizer)
    vocab = processor.grammar.vocab
    digit = vocab.token_bytes.index(b"1")
    space = vocab.token_bytes.index(b" ")
    prompt = torch.zeros(2, 3, dtype=torch.long)
    scores = torch.zeros(2, len(tokenizer))
    processor(prompt, scores)
    step1 = torch.cat([prompt, torch.tensor([[digit], [digit]])], dim=1)
    processor(step1, scores)
    step2 = torch.cat([step1, torch.tensor([[space], [digit]])], dim=1)  # row 0: "1 ", row 1: "11"
    masked = processor(step2[[1, 0]], scores)  # beams swap places
    assert torch.isfinite(masked[0, digit]) and not torch.isfinite(masked[1, digit])
    assert torch.isfinite(masked[0, space]) and not torch.isfinite(masked[1, space])


def test_eos_only_when_complete(tokenizer: Any) -> None:
    processor = make_processor("regex", tokenizer)
    eos = tokenizer.eos_token_id
    out = processor(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, len(tokenizer)))
    assert not torch.isfinite(out[0, eos])


# -- gramspec.generate ----------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(CONSTRAINTS))
@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_generate_validates_or_reports_truncation(model: Any, tokenizer: Any, kind: str, temperature: float) -> None:
    result = gramspec.generate(
        model, tokenizer, PROMPTS[0], **{kind: CONSTRAINTS[kind][1]}, max_new_tokens=24, temperature=temperature, seed=3
    )
    assert isinstance(result, gramspec.GenerationResult)
    assert result.valid or result.truncated, result
    assert result.truncated == (result.finish_reason == "length")
    if kind == "schema" and result.valid:
        assert isinstance(result.json, dict) and set(result.json) == {"name", "age", "kind"}


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_generate_opportunistic_equals_full_masking(model: Any, tokenizer: Any, temperature: float) -> None:
    runs = [
        gramspec.generate(
            model, tokenizer, prompt, schema=SCHEMA, max_new_tokens=20, temperature=temperature, seed=seed,
            opportunistic=opportunistic,
        )
        for prompt in PROMPTS[:2]
        for seed in (0, 1)
        for opportunistic in (True, False)
    ]
    for fast, full in zip(runs[::2], runs[1::2]):
        assert fast.token_ids == full.token_ids
        assert full.stats["fast_path_hits"] == 0
    if temperature == 0:  # a random model's samples are rarely valid: the fast path is for greedy here
        assert sum(r.stats["fast_path_hits"] for r in runs[::2]) > 0


def test_generate_with_mirostat_and_warpers(model: Any, tokenizer: Any) -> None:
    result = gramspec.generate(
        model, tokenizer, "x", regex=REGEX, max_new_tokens=16, temperature=0.8, top_k=50, top_p=0.9,
        repetition_penalty=1.1, mirostat_tau=3.0, seed=0,
    )
    assert result.valid or result.truncated


def test_unlisted_keys_reach_the_compiler(model: Any, tokenizer: Any) -> None:
    open_schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    assert JSONSchemaLogitsProcessor(open_schema, tokenizer).grammar.accepts_bytes(b'{"a":1,"b":2}')
    processor = JSONSchemaLogitsProcessor(open_schema, tokenizer, unlisted_keys="forbid")
    assert not processor.grammar.accepts_bytes(b'{"a":1,"b":2}') and processor.grammar.accepts_bytes(b'{"a":1}')
    result = gramspec.generate(model, tokenizer, PROMPTS[2], schema=open_schema, max_new_tokens=24,
                               compile_options={"unlisted_keys": "forbid"})
    assert result.truncated or set(result.json) == {"a"}, result


def test_generate_rejects_two_constraints(model: Any, tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="at most one"):
        gramspec.generate(model, tokenizer, "x", schema=SCHEMA, regex=REGEX)


def test_generate_with_a_drafter_gives_the_plain_tokens(model: Any, tokenizer: Any) -> None:
    plain = gramspec.generate(model, tokenizer, "Answer:", schema=SCHEMA, max_new_tokens=24)
    for drafter in ("grammar+ngram", "recycling", "trigram", "layerskip"):
        spec = gramspec.generate(model, tokenizer, "Answer:", schema=SCHEMA, max_new_tokens=24, drafter=drafter,
                                 num_draft_tokens=4)
        assert spec.token_ids == plain.token_ids, drafter
        assert spec.stats["target_forwards"] + spec.stats["accepted"] == len(spec.token_ids)
    with pytest.raises(ValueError, match="unknown drafter"):
        gramspec.generate(model, tokenizer, "x", schema=SCHEMA, drafter="psychic")


def test_aligned_sampling_options(model: Any, tokenizer: Any) -> None:
    from gramspec.errors import LimitError
    from gramspec.plugins import AlignedStore

    store = AlignedStore()
    results = gramspec.sample_many(model, tokenizer, "Answer:", 3, regex=REGEX, max_new_tokens=12, seed=0,
                                   aligned_store=store)
    assert len(results) == 3 and store.nodes > 1 and len(store) == 1  # one prompt, one trie
    for r in results:
        assert r.valid or r.truncated
    with pytest.raises(ValueError, match="temperature"):
        gramspec.generate(model, tokenizer, "x", regex=REGEX, aligned="asap")
    with pytest.raises(ValueError, match="needs a constraint"):
        gramspec.generate(model, tokenizer, "x", temperature=1.0, aligned="asap")
    with pytest.raises(ValueError, match="aligned must be"):
        gramspec.generate(model, tokenizer, "x", regex=REGEX, temperature=1.0, aligned="best")  # type: ignore[arg-type]
    # a random model over GPT-2's 50k tokens almost never starts inside the regex: CARS gives up
    with pytest.raises(LimitError, match="3 attempts"):
        gramspec.generate(model, tokenizer, "x", regex=REGEX, temperature=1.0, aligned="cars", max_attempts=3)


def test_validate_oracles() -> None:
    assert validate("schema", SCHEMA, '{"name":"a","age":3,"kind":"cat"}')[0]
    assert not validate("schema", SCHEMA, '{"name":"a","age":300,"kind":"cat"}')[0]
    assert not validate("schema", {"type": "string", "format": "email"}, '"nope"')[0]  # formats are checked
    assert validate("grammar", LARK, "(ab,(c))")[0] and not validate("grammar", LARK, "(ab,")[0]
    assert validate("regex", REGEX, "12.5 kg")[0] and not validate("regex", REGEX, "12.5kg")[0]


@pytest.mark.parametrize("kind", sorted(CONSTRAINTS))
def test_processor_assume_greedy_gives_the_full_mask_tokens(model: Any, tokenizer: Any, kind: str) -> None:
    full = make_processor(kind, tokenizer)
    fast = make_processor(kind, tokenizer, assume_greedy=True)
    out_full, start = run_generate(model, tokenizer, full, do_sample=False, max_new_tokens=24)
    out_fast, _ = run_generate(model, tokenizer, fast, do_sample=False, max_new_tokens=24)
    assert out_fast.tolist() == out_full.tolist()
    assert full.fast_path_hits == 0 and full.full_masks > 0
    assert fast.fast_path_hits > 0 and fast.full_masks < full.full_masks
    assert fast.truncated(out_fast) == full.truncated(out_full)
    check_outputs(fast, kind, out_fast, start)


def test_processor_assume_greedy_row_keeps_only_the_argmax(tokenizer: Any) -> None:
    processor = RegexLogitsProcessor("[0-9]+", tokenizer, assume_greedy=True)
    allowed = tokenizer.convert_tokens_to_ids("7")
    scores = torch.zeros(2, len(tokenizer))
    scores[0, allowed] = 5.0  # allowed argmax: fast path, only that token stays
    scores[1, tokenizer.convert_tokens_to_ids("x")] = 5.0  # rejected argmax: the full mask
    out = processor(torch.zeros(2, 3, dtype=torch.long), scores)
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == [allowed]
    assert out[0, allowed] == 5.0
    assert torch.isfinite(out[1]).sum() > 1 and not torch.isfinite(out[1, tokenizer.convert_tokens_to_ids("x")])
    assert (processor.fast_path_hits, processor.full_masks) == (1, 1)
    # the sign bit of a mask word too (ids 31, 63, ... are bit 31)
    processor = RegexLogitsProcessor("[a-z]+", tokenizer, assume_greedy=True)
    allowed_ids = np.flatnonzero(processor.grammar.matcher().allowed_tokens()).tolist()
    edge = [t for t in allowed_ids if t & 31 == 31][:20] + [t for t in allowed_ids if t & 31 == 0][:20]
    assert any(t & 31 == 31 for t in edge)
    for token in edge:
        scores = torch.zeros(1, len(tokenizer))
        scores[0, token] = 5.0
        out = processor(torch.zeros(1, 3, dtype=torch.long), scores)
        assert torch.isfinite(out[0]).nonzero().flatten().tolist() == [token]
