"""Grammar-aligned sampling (ASAp, CARS) against exactly enumerated laws.

The grammar is the kind of skewed binary language the Grammar-Aligned Decoding
paper uses: the model starts with "1" 95% of the time and, after a "1", keeps
writing "1"s; but the only grammatical string starting with "1" is "1000",
while all eight "0xxx" are grammatical. Masking emits "1000" about 95% of the
time; the model conditioned on the grammar gives it about 2%.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from stats import fits

from gramspec import Vocabulary
from gramspec.evaluation.toy import ToyLM
from gramspec.grammars import compile_regex
from gramspec.plugins import CARS, AlignedStore, ASAp, GrammarMask, Pipeline, Plugin, RejectedSample
from gramspec.specdec import Chain, DraftModel, GrammarForced, PromptLookup, decode
from gramspec.specdec import loop as loop_module

# ids: 0 "0", 1 "1", 2 <eos>, 3 "x" (prompt only)
TOKENS = [b"0", b"1", b"", b"x"]
EOS = 2
VOCAB = Vocabulary.from_token_bytes(TOKENS, eos_token_ids=[EOS])
REGEX = r"1000|0[01]{3}"
PROMPT = [3, 3]


def skewed_logits(prefix: tuple[int, ...]) -> torch.Tensor:
    generated = prefix[len(PROMPT) :]
    if not generated:
        probs = [0.05, 0.95, 1e-3, 1e-3]
    elif generated[0] == 1:
        probs = [0.1, 0.85, 0.05, 1e-3]
    else:
        probs = [0.45, 0.45, 0.1, 1e-3]
    return torch.log(torch.tensor(probs))


@pytest.fixture(scope="module")
def grammar() -> Any:
    return compile_regex(REGEX, VOCAB, disk_cache=False)


@pytest.fixture(scope="module")
def model() -> ToyLM:
    return ToyLM(0, len(TOKENS), logits_fn=skewed_logits)


def enumerate_law(model: ToyLM, grammar: Any, weigh: Callable[[tuple[int, ...], torch.Tensor], torch.Tensor]) -> dict[tuple[int, ...], float]:
    """Every complete token sequence with its probability when each step samples
    ``softmax(weigh(prefix, logits))``."""
    law: dict[tuple[int, ...], float] = {}
    matcher = grammar.matcher()

    def visit(prefix: list[int], prob: float) -> None:
        if prefix and prefix[-1] == EOS:
            law[tuple(prefix)] = prob
            return
        probs = torch.softmax(weigh(tuple(prefix), model.logits_after(tuple(PROMPT + prefix))).double(), -1)
        for token in torch.nonzero(probs > 0).flatten().tolist():
            if matcher.advance(token):
                visit(prefix + [token], prob * float(probs[token]))
                matcher.rollback(1)

    visit([], 1.0)
    return law


def conditioned_law(model: ToyLM, grammar: Any) -> dict[tuple[int, ...], float]:
    """P(w | w in L): the model's own probability of each grammatical sequence, normalized."""
    raw = enumerate_law(model, grammar, lambda prefix, logits: logits)  # unmasked steps, grammatical leaves only
    total = sum(raw.values())
    return {w: p / total for w, p in raw.items()}


def plugin_law(model: ToyLM, grammar: Any, plugin: Plugin) -> dict[tuple[int, ...], float]:
    """The law one sample has under ``plugin`` as it is now (its trie read, never written)."""
    was = getattr(plugin, "learn", None)
    if was is not None:
        plugin.learn = False  # type: ignore[attr-defined]

    def weigh(prefix: tuple[int, ...], logits: torch.Tensor) -> torch.Tensor:
        plugin.reset(PROMPT)
        for token in prefix:
            assert plugin.advance(token)
        return plugin.process(logits)

    try:
        law = enumerate_law(model, grammar, weigh)
    finally:
        plugin.reset(PROMPT)
        if was is not None:
            plugin.learn = was  # type: ignore[attr-defined]
    total = sum(law.values())
    return {w: p / total for w, p in law.items()}


def trie_estimates(plugin: ASAp) -> dict[tuple[int, ...], float]:
    """EFG estimate of every prefix in the plugin's trie that has one."""
    out: dict[tuple[int, ...], float] = {}
    stack = [((), plugin._root)]
    while stack:
        prefix, node = stack.pop()
        if node.allowed is not None:
            out[prefix] = node.efg
        stack.extend((prefix + (t,), child) for t, child in node.children.items())
    return out


def kl(p: dict[tuple[int, ...], float], q: dict[tuple[int, ...], float]) -> float:
    """KL(p || q) over p's support (inf when q misses part of it)."""
    out = 0.0
    for w, pw in p.items():
        if pw > 0:
            qw = q.get(w, 0.0)
            if qw <= 0:
                return math.inf
            out += pw * math.log(pw / qw)
    return out


def draw(model: ToyLM, plugin: Plugin, generator: torch.Generator, drafter: Any = None, k: int = 3) -> tuple[int, ...]:
    pipeline = Pipeline([plugin])
    for _ in range(1000):
        pipeline.reset(PROMPT)
        try:
            out = decode(model, PROMPT, pipeline, eos_ids=frozenset([EOS]), max_new_tokens=8, greedy=False,
                         generator=generator, drafter=drafter, draft_length=k if drafter is not None else 0)
        except RejectedSample:
            pipeline.finish()
            continue
        return tuple(out.tokens)
    raise AssertionError("no sample in 1000 attempts")


def test_masking_is_biased_on_this_grammar(model: ToyLM, grammar: Any) -> None:
    exact = conditioned_law(model, grammar)
    masked = plugin_law(model, grammar, GrammarMask(grammar))
    assert exact[(1, 0, 0, 0, EOS)] < 0.03 and masked[(1, 0, 0, 0, EOS)] > 0.9
    assert kl(exact, masked) > 1.0


def test_asap_estimates_converge_and_its_law_approaches_the_conditioned_one(model: ToyLM, grammar: Any) -> None:
    exact = conditioned_law(model, grammar)
    asap = ASAp(grammar, AlignedStore())
    generator = torch.Generator().manual_seed(0)
    gaps = [kl(exact, plugin_law(model, grammar, asap))]
    counts: Counter[tuple[int, ...]] = Counter()
    estimates: dict[tuple[int, ...], float] = {}
    for i in range(1, 401):
        sample = draw(model, asap, generator)
        assert grammar.matcher().advance_many(sample) == len(sample)  # always valid
        for prefix, efg in trie_estimates(asap).items():  # estimates only go down
            assert efg <= estimates.get(prefix, 1.0) + 1e-12, (i, prefix)
            estimates[prefix] = efg
        if i > 200:
            counts[sample] += 1
        if i in (1, 10, 400):
            gaps.append(kl(exact, plugin_law(model, grammar, asap)))
    assert gaps[0] > 1.0  # before any sample, ASAp is masking
    assert gaps[1] < gaps[0] / 10 and gaps[-1] < 0.01, gaps
    # the true EFG of the prefix "1" is P(0 0 0 <eos> | 1), each step's weights summing to 1.001
    assert math.isclose(estimates[(1,)], (0.1 / 1.001) ** 3 * (0.05 / 1.001), rel_tol=1e-6)
    # the empirical frequencies of later samples: close to the conditioned law
    keys = sorted(exact)
    ok, stat, df = fits(np.array([counts[w] for w in keys]), np.array([exact[w] for w in keys]))
    assert ok, (stat, df)


def test_cars_samples_are_exact_from_the_start(model: ToyLM, grammar: Any) -> None:
    exact = conditioned_law(model, grammar)
    keys = sorted(exact)
    for plugin, expect_ok in ((CARS(grammar, AlignedStore()), True), (GrammarMask(grammar), False)):
        generator = torch.Generator().manual_seed(1)
        counts = Counter(draw(model, plugin, generator) for _ in range(1500))
        assert set(counts) <= set(exact)
        ok, stat, df = fits(np.array([counts[w] for w in keys]), np.array([exact[w] for w in keys]))
        assert ok == expect_ok, (type(plugin).__name__, stat, df)


def test_cars_learns_dead_ends(model: ToyLM, grammar: Any) -> None:
    cars = CARS(grammar, AlignedStore())
    generator = torch.Generator().manual_seed(2)
    attempts_before = model.calls
    for _ in range(200):
        draw(model, cars, generator)
    late_calls = model.calls
    for _ in range(100):
        draw(model, cars, generator)
    # later samples need fewer forwards each: dead mass is pruned as it is discovered
    assert (model.calls - late_calls) / 100 < (late_calls - attempts_before) / 200


@pytest.mark.parametrize("name", ["grammar+ngram", "model"])
def test_frozen_asap_law_is_unchanged_by_speculation(model: ToyLM, grammar: Any, name: str) -> None:
    store = AlignedStore()
    teacher = ASAp(grammar, store, key="k")
    generator = torch.Generator().manual_seed(3)
    for _ in range(6):  # a partly learned trie, so the estimates are neither 0/1 nor exact
        draw(model, teacher, generator)
    frozen = ASAp(grammar, store, key="k", learn=False)
    law = plugin_law(model, grammar, frozen)
    drafter = Chain([GrammarForced(), PromptLookup()]) if name != "model" else DraftModel(ToyLM(7, len(TOKENS)))
    counts = Counter(draw(model, frozen, generator, drafter) for _ in range(1200))
    keys = sorted(law)
    ok, stat, df = fits(np.array([counts[w] for w in keys]), np.array([law[w] for w in keys]))
    assert ok, (stat, df)


def _write_then_verify(pipeline: Pipeline, logits: torch.Tensor, draft: Any, greedy: bool, generator: Any,
                       eos_ids: frozenset[int]) -> list[int]:
    """The wrong composition: what the draft positions show is written to the trie (the
    branch a rejection will discard included) before the target rows are computed."""
    plugin = pipeline.plugins[0]
    if draft.tokens:
        pipeline.process_positions(logits, draft.tokens)
        taken = plugin.matcher.advance_many(draft.tokens)  # type: ignore[attr-defined]
        plugin.matcher.rollback(taken)  # type: ignore[attr-defined]
        walked = 0
        for token in draft.tokens[:taken]:
            plugin.advance(token)
            walked += 1
        plugin._commit()  # type: ignore[attr-defined]
        plugin.rollback(walked)
    return _VERIFY(pipeline, logits, draft, greedy, generator, eos_ids)


_VERIFY = loop_module._verify


def test_writing_the_trie_before_verifying_changes_the_law(model: ToyLM, grammar: Any, monkeypatch: Any) -> None:
    """Each sample starts from an empty trie, so its law is masking's: the buffered plugin
    keeps that law under speculation; writing draft branches first does not."""
    masking = plugin_law(model, grammar, GrammarMask(grammar))
    keys = sorted(masking)
    drafter = DraftModel(ToyLM(7, len(TOKENS)))
    generator = torch.Generator().manual_seed(4)
    counts = Counter(draw(model, ASAp(grammar, AlignedStore()), generator, drafter) for _ in range(1000))
    ok, stat, df = fits(np.array([counts[w] for w in keys]), np.array([masking[w] for w in keys]))
    assert ok, (stat, df)
    monkeypatch.setattr(loop_module, "_verify", _write_then_verify)
    counts = Counter(draw(model, ASAp(grammar, AlignedStore()), generator, drafter) for _ in range(1000))
    ok, stat, df = fits(np.array([counts[w] for w in keys]), np.array([masking[w] for w in keys]))
    assert not ok, (stat, df)


def test_store_keys_and_memory_bound(model: ToyLM, grammar: Any) -> None:
    store = AlignedStore(max_nodes=8)  # a's first sample takes 6 (root + 5 tokens), b's root 1, then full
    generator = torch.Generator().manual_seed(5)
    a, b = ASAp(grammar, store, key="a"), ASAp(grammar, store, key="b")
    draw(model, a, generator)
    draw(model, b, generator)
    assert len(store) == 2 and store.nodes == 8 and store.full
    for _ in range(20):  # past the bound: still valid samples, no growth
        sample = draw(model, a, generator)
        assert grammar.matcher().advance_many(sample) == len(sample)
    assert store.nodes == 8
    with pytest.raises(ValueError, match="max_nodes"):
        AlignedStore(max_nodes=0)
