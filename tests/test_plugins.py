"""Plugins and the pipeline on a small synthetic vocabulary (no model, no shared/)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from stats import chi_square, chi_square_critical
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

import gramspec.plugins.mask as mask_module
from gramspec import Vocabulary
from gramspec.errors import MatcherError
from gramspec.grammars import compile_grammar, compile_regex, pack_mask
from gramspec.plugins import (
    GrammarMask,
    MinP,
    Mirostat,
    Pipeline,
    Plugin,
    RepetitionPenalty,
    Temperature,
    TopK,
    TopP,
    apply_token_bitmask,
    apply_token_bitmask_inplace,
    unpack_bitmask,
)

# ids: 0 a, 1 b, 2 ab, 3 ba, 4 aa, 5 c, 6 <eos>, 7 <special>, 8 bb, 9 abc
TOKENS = [b"a", b"b", b"ab", b"ba", b"aa", b"c", b"", b"", b"bb", b"abc"]
EOS = 6
VOCAB = Vocabulary.from_token_bytes(TOKENS, eos_token_ids=[EOS], special_token_ids=[7])
REGEX = r"(ab|b)+c?"
LARK = 'start: "a" x "c"\nx: ("b" | "ab")*\n'


def regex_mask() -> GrammarMask:
    return GrammarMask(compile_regex(REGEX, VOCAB, disk_cache=False))


def random_scores(generator: torch.Generator, n: int = len(TOKENS)) -> torch.Tensor:
    return torch.randn(n, generator=generator) * 2


# -- bitmasks on torch -----------------------------------------------------------


@pytest.mark.parametrize("unpack", [unpack_bitmask, mask_module._unpack_with_torch], ids=["cpu", "device-path"])
@pytest.mark.parametrize("columns", [1, 31, 32, 33, 100, 130])
def test_unpack_bitmask_matches_numpy(columns: int, unpack: Any) -> None:
    rng = np.random.default_rng(columns)
    allowed = rng.random((3, 100)) < 0.5
    words = np.stack([pack_mask(row) for row in allowed])
    got = unpack(torch.from_numpy(words), columns).numpy()
    want = np.zeros((3, columns), dtype=bool)
    n = min(columns, 100)
    want[:, :n] = allowed[:, :n]  # bits past the vocabulary but inside the last word are zero
    assert got.shape == (3, columns) and (got == want).all()
    assert (unpack(torch.from_numpy(words[1]), columns).numpy() == want[1]).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("columns", [1, 31, 32, 33, 64, 100, 130])
@pytest.mark.parametrize("path", ["kernel", "numpy"])
def test_apply_token_bitmask_on_cpu_matches_where(columns: int, dtype: torch.dtype, path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU kernel (whole words of 0s and 1s, single bits, columns past the
    bitmask's bits) and the numpy path both give torch.where over the unpacked bits."""
    if path == "numpy":
        monkeypatch.setattr(mask_module, "_fill_kernel", None)
    elif mask_module._fill_kernel is None:
        pytest.skip("numba is not installed (or GRAMSPEC_JIT=0)")
    rng = np.random.default_rng(columns)
    allowed = rng.random((3, 100)) < 0.5
    allowed[0, :64] = False  # whole words masked
    allowed[1, :64] = True  # whole words allowed
    words = np.stack([pack_mask(row) for row in allowed])
    scores = (torch.randn(3, columns, generator=torch.Generator().manual_seed(columns)) * 3).to(dtype)
    want = np.zeros((3, columns), dtype=bool)
    n = min(columns, 100)
    want[:, :n] = allowed[:, :n]
    expected = torch.where(torch.from_numpy(want), scores, torch.tensor(-torch.inf, dtype=dtype))
    original = scores.clone()
    assert torch.equal(apply_token_bitmask(scores, words), expected)
    assert torch.equal(apply_token_bitmask(scores[1], words[1]), expected[1])
    assert torch.equal(scores, original)


def test_apply_token_bitmask_is_one_new_tensor_and_inplace_variant_writes() -> None:
    scores = torch.arange(40, dtype=torch.float32).reshape(2, 20)
    original = scores.clone()
    allowed = np.zeros((2, 20), dtype=bool)
    allowed[0, [1, 5]] = True
    allowed[1, [19]] = True
    bitmask = np.stack([pack_mask(row) for row in allowed])
    out = apply_token_bitmask(scores, bitmask)
    assert torch.equal(scores, original)
    assert torch.isfinite(out).numpy().tolist() == allowed.tolist()
    assert torch.equal(apply_token_bitmask(scores, torch.from_numpy(bitmask)), out)  # a tensor bitmask alike
    apply_token_bitmask_inplace(scores, bitmask)
    assert torch.equal(scores, out)


# -- plugins never write into their input --------------------------------------------

PLUGIN_FACTORIES: dict[str, Callable[[], Plugin]] = {
    "temperature": lambda: Temperature(0.7),
    "top_k": lambda: TopK(3),
    "top_p": lambda: TopP(0.8),
    "min_p": lambda: MinP(0.1),
    "repetition_penalty": lambda: RepetitionPenalty(1.3),
    "mirostat": lambda: Mirostat(tau=2.0, eta=0.2),
    "grammar_mask": regex_mask,
}


@pytest.mark.parametrize("name", sorted(PLUGIN_FACTORIES))
def test_plugins_never_modify_scores_in_place(name: str) -> None:
    plugin = PLUGIN_FACTORIES[name]()
    plugin.reset([0, 1, 1])
    generator = torch.Generator().manual_seed(0)
    scores = random_scores(generator)
    before = scores.clone()
    out = plugin.process(scores)
    assert torch.equal(scores, before)
    assert out.data_ptr() != scores.data_ptr()
    rows = torch.stack([random_scores(generator) for _ in range(3)])
    rows_before = rows.clone()
    out_rows = plugin.process_positions(rows, [1, 2])
    assert torch.equal(rows, rows_before)
    assert out_rows.data_ptr() != rows.data_ptr()


@pytest.mark.parametrize("name", sorted(PLUGIN_FACTORIES))
def test_process_positions_equals_stepwise_and_restores_state(name: str) -> None:
    plugin = PLUGIN_FACTORIES[name]()
    plugin.reset([0, 1])
    generator = torch.Generator().manual_seed(1)
    plugin.process(random_scores(generator))
    assert plugin.advance(1)  # "b" is fine for every plugin, the regex included
    draft = [2, 1, 5]
    rows = torch.stack([random_scores(generator) for _ in range(len(draft) + 1)])
    batched = plugin.process_positions(rows, draft)
    stepwise = []
    for i in range(len(rows)):
        stepwise.append(plugin.process(rows[i]))
        if i < len(draft):
            assert plugin.advance(draft[i])
    plugin.rollback(len(draft))
    assert torch.allclose(batched, torch.stack(stepwise), equal_nan=True)
    again = plugin.process_positions(rows, draft)  # the state was restored: same answer
    assert torch.allclose(again, batched, equal_nan=True)


def test_grammar_mask_rows_after_a_rejected_draft_token_are_empty() -> None:
    mask = regex_mask()
    rows = torch.zeros(3, len(TOKENS))
    out = mask.process_positions(rows, [0, 0])  # "a" then "a": "aa" is no prefix of (ab|b)+c?
    assert torch.isfinite(out[0]).any() and torch.isfinite(out[1]).any()
    assert not torch.isfinite(out[2]).any()
    assert mask.matcher.num_tokens == 0


# -- Mirostat ---------------------------------------------------------------------


def test_mirostat_update_follows_the_paper() -> None:
    plugin = Mirostat(tau=1.5, eta=0.25)
    assert plugin.mu == 3.0  # mu starts at 2 * tau
    scores = torch.log(torch.tensor([0.5, 0.25, 0.125, 0.0625, 0.0625]))
    out = plugin.process(scores)
    # surprises 1, 2, 3, 4, 4 bits: tokens above mu = 3 are cut
    assert torch.isfinite(out).tolist() == [True, True, True, False, False]
    assert plugin.advance(1)  # observed surprise 2 bits
    assert plugin.mu == pytest.approx(3.0 - 0.25 * (2.0 - 1.5))
    assert plugin.observed == [pytest.approx(2.0)]


def test_mirostat_state_rolls_back_exactly() -> None:
    generator = torch.Generator().manual_seed(3)
    plugin = Mirostat(tau=2.0, eta=0.3)
    mus = [plugin.mu]
    scores_seen = []
    tokens = []
    for _ in range(6):
        scores = random_scores(generator)
        out = plugin.process(scores)
        token = int(torch.argmax(out))
        scores_seen.append(scores)
        tokens.append(token)
        assert plugin.advance(token)
        mus.append(plugin.mu)
    plugin.rollback(4)
    assert plugin.mu == mus[2] and plugin.position == 2 and len(plugin.observed) == 2
    for scores, token in zip(scores_seen[2:], tokens[2:]):  # replay: bit-identical
        plugin.process(scores)
        assert plugin.advance(token)
    assert [plugin.mu] == mus[-1:]
    plugin.rollback(6)
    assert plugin.mu == mus[0]
    with pytest.raises(MatcherError):
        plugin.rollback(1)


def test_mirostat_advance_needs_scores() -> None:
    with pytest.raises(Exception, match="process"):
        Mirostat().advance(0)


# -- the pipeline -------------------------------------------------------------------


def test_pipeline_distribution_equals_manual_composition() -> None:
    generator = torch.Generator().manual_seed(4)
    mask = regex_mask()
    pipeline = Pipeline([RepetitionPenalty(1.2), Temperature(0.6), mask, TopP(0.9)])
    pipeline.reset([1, 2])
    assert pipeline.advance(1)
    logits = random_scores(generator)
    got = pipeline.distribution(logits)

    manual = logits.clone()
    for token in (1, 2):  # CTRL penalty over the prefix [1, 2, 1]
        manual[token] = manual[token] / 1.2 if manual[token] > 0 else manual[token] * 1.2
    manual = TemperatureLogitsWarper(0.6)(torch.zeros(1, 0, dtype=torch.long), manual[None])[0]
    allowed = mask.matcher.allowed_tokens()
    manual = manual.masked_fill(~torch.from_numpy(allowed), -math.inf)
    manual = TopPLogitsWarper(0.9)(torch.zeros(1, 0, dtype=torch.long), manual[None])[0]
    assert torch.allclose(got, torch.softmax(manual, dim=-1))


def test_is_allowed_agrees_with_the_mask() -> None:
    for grammar in (compile_regex(REGEX, VOCAB, disk_cache=False), compile_grammar(LARK, VOCAB, disk_cache=False)):
        matcher = grammar.matcher()
        rng = np.random.default_rng(5)
        for _ in range(12):
            allowed = matcher.allowed_tokens()
            assert [matcher.is_allowed(t) for t in range(len(TOKENS))] == allowed.tolist()
            choices = np.flatnonzero(allowed)
            if not choices.size or matcher.is_terminated():
                break
            assert matcher.advance(int(rng.choice(choices)))


def _walk(pipeline: Pipeline, seed: int, steps: int, greedy: bool) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    logits_source = torch.Generator().manual_seed(seed + 1000)
    pipeline.reset()
    out = []
    for _ in range(steps):
        token = pipeline.choose(random_scores(logits_source), generator=generator, greedy=greedy)
        assert pipeline.advance(token)
        out.append(token)
        if token == EOS:
            break
    return out


@pytest.mark.parametrize("greedy", [True, False])
def test_opportunistic_masking_is_identical_to_full_masking(greedy: bool) -> None:
    hits = 0
    for seed in range(20):
        fast = Pipeline([Temperature(0.9), regex_mask()], opportunistic=True)
        full = Pipeline([Temperature(0.9), regex_mask()], opportunistic=False)
        assert _walk(fast, seed, 12, greedy) == _walk(full, seed, 12, greedy)
        assert full.fast_path_hits == 0
        hits += fast.fast_path_hits
        assert fast.full_masks > 0 or fast.fast_path_hits > 0
    assert hits > 0  # the fast path was taken


def test_opportunistic_path_is_off_when_a_truncating_plugin_follows_the_mask() -> None:
    pipeline = Pipeline([regex_mask(), TopK(2)])
    assert _walk(pipeline, 0, 5, greedy=False)
    assert pipeline.fast_path_hits == 0 and pipeline.full_masks == 0  # only the plain full pipeline ran


# -- sampled frequencies match the exact masked distribution (chi-square) -----------------


class _LeakyMask(GrammarMask):
    """A deliberately wrong mask: also lets token 4 ("aa", never viable after "b") through."""

    def process(self, scores: torch.Tensor) -> torch.Tensor:
        out = super().process(scores)
        out[4] = scores[4]
        return out

    def is_allowed(self, token: int) -> bool:
        return token == 4 or super().is_allowed(token)


@pytest.mark.parametrize("opportunistic", [True, False])
def test_sampled_frequencies_match_the_masked_distribution(opportunistic: bool) -> None:
    logits = torch.tensor([2.0, 0.5, 1.0, -0.5, 1.5, 0.0, 0.3, 0.0, 0.2, 1.2])
    n = 6000

    def counts_for(mask: GrammarMask) -> np.ndarray:
        pipeline = Pipeline([Temperature(1.3), mask], opportunistic=opportunistic)
        pipeline.reset()
        assert pipeline.advance(1)  # after "b" everything but "aa" and the special token is allowed
        generator = torch.Generator().manual_seed(11)
        counts = np.zeros(len(TOKENS), dtype=np.int64)
        for _ in range(n):
            counts[pipeline.choose(logits, generator=generator)] += 1
        return counts

    exact_mask = regex_mask()
    exact_mask.advance(1)
    allowed = torch.from_numpy(exact_mask.matcher.allowed_tokens())
    probs = torch.softmax((logits / 1.3).masked_fill(~allowed, -math.inf), dim=-1).numpy()

    stat, df = chi_square(counts_for(regex_mask()), probs)
    assert stat < chi_square_critical(df), (stat, df)

    leaky_stat, _ = chi_square(counts_for(_LeakyMask(compile_regex(REGEX, VOCAB, disk_cache=False))), probs)
    assert leaky_stat > chi_square_critical(df)  # the control: a wrong mask fails the same test


@pytest.mark.parametrize("greedy", [True, False])
@pytest.mark.parametrize("opportunistic", [True, False])
def test_choose_with_no_finite_score_is_a_typed_error(greedy: bool, opportunistic: bool) -> None:
    pipeline = Pipeline([Temperature(0.9)], opportunistic=opportunistic)
    generator = None if greedy else torch.Generator().manual_seed(0)
    for bad in (torch.full((6,), -torch.inf), torch.tensor([0.0, float("nan"), 1.0])):
        with pytest.raises(MatcherError, match="no token has a finite score"):
            pipeline.choose(bad, generator=generator, greedy=greedy)
    scores = torch.tensor([-torch.inf, 0.5, -torch.inf, 2.0])
    assert pipeline.choose(scores, generator=generator, greedy=True) == 3
    assert pipeline.choose(scores, generator=generator, greedy=greedy) in (1, 3)
