"""Speculative decoding: the verifier's law, each drafter, and the decode loop on a tiny model.

The sequence-level tests enumerate every token sequence a small grammar allows,
compute its exact probability under plain constrained sampling with a tiny
model (``gramspec.evaluation.toy.ToyLM``, fast enough for thousands of samples), and compare
the sequences the speculative loop samples against that law (chi-square). A
deliberately biased verifier fails the same test. A tiny random Llama checks
that the loop drives a real transformers model and its KV cache the same way.
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
from gramspec.plugins import (
    GrammarMask,
    Pipeline,
    Temperature,
    TopK,
    apply_token_bitmask,
)
from gramspec.specdec import (
    Chain,
    Draft,
    DraftContext,
    Drafter,
    DraftLength,
    DraftModel,
    GrammarForced,
    PromptLookup,
    TokenRecycling,
    TreeBuilder,
    TrigramTable,
    available_drafters,
    decode,
    make_drafter,
    register_drafter,
    sibling_law,
    verify_deterministic,
    verify_stochastic,
    verify_stochastic_tree,
)
from gramspec.specdec import loop as loop_module
from gramspec.specdec import verify as verify_module
from gramspec.specdec.drafters import (
    cached_forward,
    crop_cache,
    sample_siblings,
    sibling_rows,
    walk_allowed,
)

# ids: 0 a, 1 b, 2 ab, 3 ba, 4 c, 5 <eos>, 6 x (prompt only), 7 y (prompt only)
TOKENS = [b"a", b"b", b"ab", b"ba", b"c", b"", b"x", b"y"]
EOS = 5
VOCAB = Vocabulary.from_token_bytes(TOKENS, eos_token_ids=[EOS])
REGEX = r"[ab]{1,2}c"
PROMPT = [6, 0, 1, 7, 2, 4, 6, 0]


def tiny_llama(seed: int, sharpness: float = 3.0) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(TOKENS),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        eos_token_id=EOS,
        pad_token_id=EOS,
        bos_token_id=EOS,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpness)
    return model


@pytest.fixture(scope="module")
def target() -> Any:
    return ToyLM(0, len(TOKENS))


@pytest.fixture(scope="module")
def draft_model() -> Any:
    return ToyLM(1, len(TOKENS))


@pytest.fixture(scope="module")
def grammar() -> Any:
    return compile_regex(REGEX, VOCAB, disk_cache=False)


def make_pipeline(grammar: Any, temperature: float = 1.0) -> Pipeline:
    plugins: list[Any] = [] if temperature == 1.0 else [Temperature(temperature)]
    return Pipeline([*plugins, GrammarMask(grammar)])


def exact_law(model: Any, grammar: Any, temperature: float) -> dict[tuple[int, ...], float]:
    """Every complete token sequence (EOS included) with its probability under plain constrained sampling."""
    law: dict[tuple[int, ...], float] = {}
    matcher = grammar.matcher()

    def visit(prefix: list[int], prob: float) -> None:
        if prefix and prefix[-1] == EOS:
            law[tuple(prefix)] = prob
            return
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([PROMPT + prefix])).logits[0, -1]
        bitmask = np.zeros(1, dtype=np.int32)
        matcher.fill_mask(bitmask)
        probs = torch.softmax(apply_token_bitmask(logits / temperature, bitmask).double(), dim=-1)
        for token in torch.nonzero(probs > 0).flatten().tolist():
            assert matcher.advance(token)
            visit(prefix + [token], prob * float(probs[token]))
            matcher.rollback(1)

    visit([], 1.0)
    assert math.isclose(sum(law.values()), 1.0, rel_tol=1e-9)
    return law


def sample_sequences(
    model: Any, grammar: Any, drafter: Drafter | None, n: int, *, temperature: float = 1.0, k: int | str = 3, seed: int = 0
) -> tuple[Counter[tuple[int, ...]], dict[str, int]]:
    generator = torch.Generator().manual_seed(seed)
    pipeline = make_pipeline(grammar, temperature)
    counts: Counter[tuple[int, ...]] = Counter()
    totals = Counter[str]()
    for _ in range(n):
        pipeline.reset(PROMPT)
        out = decode(
            model,
            PROMPT,
            pipeline,
            eos_ids=frozenset([EOS]),
            max_new_tokens=10,
            greedy=False,
            generator=generator,
            drafter=drafter,
            draft_length=k,
            temperature=temperature,
        )
        assert out.finish_reason == "eos"
        counts[tuple(out.tokens)] += 1
        totals["drafted"] += out.stats.drafted
        totals["accepted"] += out.stats.accepted
    return counts, dict(totals)


def check_law(counts: Counter[tuple[int, ...]], law: dict[tuple[int, ...], float]) -> tuple[bool, float, int]:
    keys = sorted(set(law) | set(counts))
    observed = np.array([counts.get(key, 0) for key in keys])
    expected = np.array([law.get(key, 0.0) for key in keys])
    return fits(observed, expected)


# -- the verifier on its own ---------------------------------------------------------------


def _random_law(generator: torch.Generator, v: int, zeros: int = 1) -> torch.Tensor:
    p = torch.rand(v, generator=generator, dtype=torch.float64) ** 2
    p[torch.randperm(v, generator=generator)[:zeros]] = 0
    return p / p.sum()


def _truncate_then_resample(probs: torch.Tensor, tokens: list[int], q: torch.Tensor, generator: torch.Generator) -> list[int]:
    """The biased rule: keep draft tokens the target allows, then sample afresh."""
    out: list[int] = []
    for i, x in enumerate(tokens):
        if probs[i, x] <= 0:
            break
        out.append(x)
    return out + [int(torch.multinomial(probs[len(out)], 1, generator=generator))]


@pytest.mark.parametrize("rule", ["speculative", "truncate-then-resample"])
def test_stochastic_verifier_first_token_follows_the_target(rule: str) -> None:
    g = torch.Generator().manual_seed(3)
    v = 6
    pi = torch.stack([_random_law(g, v) for _ in range(3)])
    q = torch.stack([_random_law(g, v, zeros=2) for _ in range(2)])
    counts = np.zeros(v, dtype=np.int64)
    pairs: Counter[tuple[int, int]] = Counter()
    for _ in range(20000):
        tokens = [int(torch.multinomial(q[i], 1, generator=g)) for i in range(2)]
        if rule == "speculative":
            out = verify_stochastic(pi, tokens, q, generator=g)
        else:
            out = _truncate_then_resample(pi, tokens, q, g)
        assert 1 <= len(out) <= 3
        counts[out[0]] += 1
        pairs[(out[0], out[1]) if len(out) > 1 else (out[0], -1)] += 1
    ok, stat, df = fits(counts, pi[0].numpy())
    assert ok == (rule == "speculative"), (stat, df)


def test_stochastic_verifier_accepts_a_draft_equal_to_the_target() -> None:
    g = torch.Generator().manual_seed(0)
    pi = torch.stack([_random_law(g, 5) for _ in range(4)])
    for _ in range(50):
        tokens = [int(torch.multinomial(pi[i], 1, generator=g)) for i in range(3)]
        out = verify_stochastic(pi, tokens, pi[:3], generator=g)
        assert out[:3] == tokens and len(out) == 4  # q == pi: always accepted, plus a bonus token


def test_stochastic_verifier_checks_shapes() -> None:
    with pytest.raises(ValueError, match="target rows"):
        verify_stochastic(torch.ones(2, 4) / 4, [1, 2], torch.ones(2, 4) / 4)


def test_deterministic_verifier_stops_at_the_first_mismatch() -> None:
    draws = iter([3, 1, 9])
    assert verify_deterministic([3, 1, 2, 7], lambda i: next(draws)) == [3, 1, 9]
    assert verify_deterministic([], lambda i: 4) == [4]
    assert verify_deterministic([4, 4], lambda i: 4) == [4, 4, 4]  # all accepted, then the bonus


# -- draft lengths, the registry, drafters on their own -----------------------------------------------


def test_draft_length_parse_and_adaptive_cut() -> None:
    assert DraftLength.parse(0).max_tokens == 0
    assert DraftLength.parse("adaptive").adaptive
    for bad in (-1, "many", 2.5, True):
        with pytest.raises(ValueError, match="num_draft_tokens"):
            DraftLength.parse(bad)  # type: ignore[arg-type]
    draft = Draft([1, 2, 3, 4, 5], None, [0.95, 0.9, 0.5, 0.9, 0.9])
    assert DraftLength(max_tokens=3).cut(draft).tokens == [1, 2, 3]
    # survival 0.95, 0.855, 0.4275: the third token pushes P(some rejection) past 0.5
    assert DraftLength(max_tokens=8, adaptive=True, threshold=0.5).cut(draft).tokens == [1, 2]
    assert DraftLength(max_tokens=8, adaptive=True, threshold=0.01).cut(draft).tokens == [1]  # at least one


def test_goodput_rule_drafts_only_what_pays_for_its_forward() -> None:
    from gramspec.specdec.loop import ForwardCost

    cost = ForwardCost()
    assert cost.estimate(3) == 1.0  # nothing measured: all lengths alike
    for tokens, seconds in ((1, 1.0), (2, 1.65), (5, 2.0)):
        cost.observe(tokens, seconds)
    assert cost.estimate(4) == 1.65 and cost.estimate(9) == 2.0  # unmeasured: the nearest shorter one
    rule = DraftLength(max_tokens=8, adaptive=True, threshold=1.0)  # the threshold rule never cuts
    weak = Draft([1, 2, 3, 4], None, [0.3] * 4)
    strong = Draft([1, 2, 3, 4], None, [0.95] * 4)
    assert rule.cut(weak, cost).tokens == []  # 1.43 expected tokens for 2.0 s: plain decoding is better
    assert rule.cut(strong, cost).tokens == [1, 2, 3, 4]  # 4.5 tokens for 2.0 s
    assert rule.cut(weak).tokens == [1, 2, 3, 4]  # without costs only the threshold rule applies
    # with a cost curve the goodput rule decides alone: survival 0.95, 0.90, 0.86 passes a
    # threshold of 0.1 at the third token, yet four tokens for the price of one forward of 5 pay
    strict = DraftLength(max_tokens=8, adaptive=True, threshold=0.1)
    assert strict.cut(strong).tokens == [1, 2]
    assert strict.cut(strong, cost).tokens == [1, 2, 3, 4]
    # a tree is cut by node survival: the weak sibling is not worth a longer forward
    tree = Draft([1, 2, 3], None, [0.95, 0.9, 0.05], [-1, 0, -1])
    flat = ForwardCost()
    for tokens, seconds in ((1, 1.0), (2, 1.1), (3, 1.2), (4, 2.0)):
        flat.observe(tokens, seconds)
    assert rule.cut(tree, flat).tokens == [1, 2]


def test_acceptance_rates_are_kept_by_depth() -> None:
    from gramspec.specdec.drafters import AcceptanceRate

    rate = AcceptanceRate(prior=0.5, decay=0.5, relax=0.0, depth=4)
    rate.update(drafted=4, accepted=2)  # depths 0 and 1 accepted, 2 rejected, 3 never tested
    assert rate.rates == [0.75, 0.75, 0.25, 0.5]
    rate.update(drafted=2, accepted=2)  # all accepted: the bonus token is not a depth of the draft
    assert rate.rates == [0.875, 0.875, 0.25, 0.5]
    assert rate.current(6) == [0.875, 0.875, 0.25, 0.5, 0.5, 0.5]  # deeper than tracked: the last depth's rate
    runs = AcceptanceRate(prior=0.5, run_prior=0.8, relax=0.5, depth=3)
    assert runs.current(3) == [0.5, 0.8, 0.8]  # once a run starts it tends to go on
    runs.update(drafted=3, accepted=0)
    assert runs.rates[0] == pytest.approx(0.45) and runs.current(1) == pytest.approx([0.475])  # relaxed toward 0.5


def test_registry_builds_chains_and_reports_unknown_names(draft_model: Any) -> None:
    assert {"grammar", "ngram", "recycling", "trigram", "model"} <= set(available_drafters())
    chain = make_drafter("grammar+ngram")
    assert isinstance(chain, Chain) and chain.name == "grammar+ngram"
    with pytest.raises(ValueError, match="unknown drafter 'nope'.*available"):
        make_drafter("grammar+nope")
    with pytest.raises(ValueError, match="draft_model"):
        make_drafter("model")
    assert isinstance(make_drafter("model", draft_model=draft_model), DraftModel)
    with pytest.raises(ValueError, match="without"):
        register_drafter("a+b", PromptLookup)

    class Repeat(Drafter):
        name = "repeat"

        def propose(self, context: DraftContext, k: int) -> Draft:
            return Draft([int(context.tokens[-1])] * k, None, [0.5] * k)

    register_drafter("repeat", Repeat)
    assert isinstance(make_drafter("repeat"), Repeat)


def _context(tokens: list[int], grammar: Any = None, advanced: list[int] = ()) -> DraftContext:  # type: ignore[assignment]
    matcher = None
    if grammar is not None:
        matcher = grammar.matcher()
        assert matcher.advance_many(advanced) == len(advanced)
    return DraftContext(tokens, 2, matcher, greedy=True, eos_ids=frozenset([EOS]))


def test_prompt_lookup_copies_what_followed_the_latest_match_within_the_grammar(grammar: Any) -> None:
    lookup = PromptLookup(max_ngram=2)
    # "... 0 1 | 7 2 ..." earlier, and the context ends with 0 1: propose 7 2 4 (unconstrained)
    assert lookup.propose(_context([6, 0, 1, 7, 2, 4, 6, 0, 1]), 3).tokens == [7, 2, 4]
    # inside "[ab]{1,3}c" after "a": the match proposes "b c a"; "a" after "c" is cut
    assert lookup.propose(_context([0, 1, 4, 0], grammar, [0]), 4).tokens == [1, 4]
    # "b ab" would make "abab", more than two letters: only "b" is kept
    assert lookup.propose(_context([0, 1, 2, 4, 0], grammar, [0]), 4).tokens == [1]
    ctx = _context([0, 1, 2, 4, 0], grammar, [0])
    before = ctx.matcher.num_tokens  # type: ignore[union-attr]
    lookup.propose(ctx, 4)
    assert ctx.matcher.num_tokens == before  # type: ignore[union-attr]
    assert lookup.propose(_context([6, 7]), 3).tokens == []  # no earlier occurrence
    # the latest match of "1 2" lies two tokens back: the copy runs on into its own output
    assert lookup.propose(_context([5, 1, 2, 1, 2]), 5).tokens == [1, 2, 1, 2, 1]
    assert lookup.propose(_context([3, 3]), 4).tokens == [3, 3, 3, 3]
    assert lookup.propose(_context([5, 1, 2, 1, 2]), 0).tokens == []


def test_grammar_forced_tokens_and_chain_order(grammar: Any) -> None:
    forced = GrammarForced(branches=0)
    # after "ab" the grammar forces "c" (then EOS, which is a token of its own choice)
    ctx = _context([6, 0, 1], grammar, [0, 1])
    assert forced.propose(ctx, 4).tokens == [4]
    assert GrammarForced().propose(ctx, 4).tokens == [4]  # nothing else may follow
    assert forced.propose(_context([6, 0], grammar, [0]), 4).tokens == []  # "b" or "c" may follow "a"
    chain = Chain([GrammarForced(), PromptLookup()])
    ctx = _context([6, 4, EOS, 6, 0, 1], grammar, [0, 1])
    # forced "c", then lookup of "c" in the context finds "c <eos>"
    assert chain.propose(ctx, 4).tokens == [4, EOS]
    assert ctx.matcher.num_tokens == 2  # type: ignore[union-attr]


def _tree_paths(draft: Draft) -> list[list[int]]:
    """Every root-to-node path of a draft, as tokens."""
    paths: list[list[int]] = []
    for i, token in enumerate(draft.tokens):
        parent = draft.parent(i)
        paths.append((paths[parent] if parent >= 0 else []) + [token])
    return paths


def _check_tree(draft: Draft, grammar: Any, before: bytes) -> list[bytes]:
    """Asserts the tree is a deterministic draft inside the grammar; the texts of its paths."""
    siblings = [(draft.parent(i), t) for i, t in enumerate(draft.tokens)]
    assert len(set(siblings)) == len(siblings)  # siblings are distinct tokens
    assert all(draft.parent(i) < i for i in range(len(draft)))
    survival = draft.survival()
    assert all(survival[i] <= (survival[draft.parent(i)] if draft.parent(i) >= 0 else 1.0) + 1e-12 for i in range(len(draft)))
    texts = [before + b"".join(grammar.vocab.token_bytes[t] for t in path) for path in _tree_paths(draft)]
    assert all(grammar.is_viable_prefix(text) for text in texts)
    return texts


def test_grammar_drafts_the_few_continuations_the_grammar_allows(grammar: Any) -> None:
    # after "a", the language [ab]{1,2}c continues with "c", "ac" or "bc": all three are in the tree
    draft = GrammarForced().propose(_context([6, 0], grammar, [0]), 16)
    texts = _check_tree(draft, grammar, b"a")
    assert draft.is_tree and {t for t in texts if grammar.accepts_bytes(t)} == {b"ac", b"aac", b"abc"}
    # width 2 is narrower than the three bytes allowed after "a": nothing to propose
    assert GrammarForced(width=2).propose(_context([6, 0], grammar, [0]), 16).tokens == []
    # the size limit keeps the nodes most likely accepted, parents first
    small = GrammarForced().propose(_context([6, 0], grammar, [0]), 2)
    assert len(small) == 2 and _check_tree(small, grammar, b"a")


JSON_TOKENS = [b"{", b'"', b'{"', b"name", b"na", b'":', b'":"', b":", b"x", b"y", b'"x', b'"}', b"}", b",", b"", b"age", b"1"]
JSON_EOS = JSON_TOKENS.index(b"")


def test_grammar_tree_holds_other_splits_of_the_forced_text() -> None:
    vocab = Vocabulary.from_token_bytes(JSON_TOKENS, eos_token_ids=[JSON_EOS])
    grammar = compile_regex(r'\{"name":"[xy]+"\}', vocab, disk_cache=False)
    ids = {t: i for i, t in enumerate(JSON_TOKENS)}
    matcher = grammar.matcher()
    draft = GrammarForced().propose(DraftContext([ids[b"x"]], 1, matcher, greedy=True), 16)
    paths = _tree_paths(draft)
    _check_tree(draft, grammar, b"")
    # the spine: longest match; beside it, the first token and the last one ended earlier
    spine = [ids[b'{"'], ids[b"name"], ids[b'":"']]
    assert draft.tokens[:3] == spine and draft.parents[:3] == [-1, 0, 1]  # type: ignore[index]
    assert [ids[b"{"], ids[b'"'], ids[b"name"], ids[b'":"']] in paths
    assert [ids[b'{"'], ids[b"name"], ids[b'":'], ids[b'"x']] not in paths  # "x" is the model's own choice
    assert [ids[b'{"'], ids[b"name"], ids[b'":']] in paths
    assert matcher.num_tokens == 0
    # the chain continues after the spine, so lookup may finish the value
    chain = Chain([GrammarForced(), PromptLookup()])
    ctx = DraftContext([ids[b"x"], *spine, ids[b"x"], ids[b'"}'], ids[b"x"]], 1, grammar.matcher(), greedy=True)
    tokens = chain.propose(ctx, 16)
    assert tokens.tokens[:5] == [*spine, ids[b"x"], ids[b'"}']] and tokens.parents[:5] == [-1, 0, 1, 2, 3]  # type: ignore[index]
    _check_tree(tokens, grammar, b"")


def test_grammar_tree_enumerates_object_keys() -> None:
    from gramspec.grammars.json_schema import compile_json_schema

    vocab = Vocabulary.from_token_bytes(JSON_TOKENS, eos_token_ids=[JSON_EOS])
    schema = {"type": "object", "properties": {"name": {"enum": ["x", "y"]}, "age": {"const": 1}}, "additionalProperties": False}
    grammar = compile_json_schema(schema, vocab)
    matcher = grammar.matcher()
    ids = {t: i for i, t in enumerate(JSON_TOKENS)}
    draft = GrammarForced(branches=16, max_bytes=32).propose(DraftContext([ids[b"x"]], 1, matcher, greedy=True), 64)
    texts = set(_check_tree(draft, grammar, b""))
    # every key with its whole value, and the empty object
    for text in (b'{"name":"x"', b'{"name":"y"', b'{"age":1', b"{}"):
        assert any(t.startswith(text) for t in texts), text


def test_tree_builder_merges_paths_and_keeps_the_best_nodes() -> None:
    tree = TreeBuilder()
    tree.add(-1, [1, 2, 3], [0.9, 0.8, 0.7])
    tree.add(-1, [1, 4], [0.5, 0.45])  # merges with the first node, whose survival stays 0.9
    tree.add(-1, [5], [0.85])
    draft = tree.draft(10)
    assert draft.tokens == [1, 5, 2, 3, 4] and draft.parents == [-1, -1, 0, 2, 0]
    assert draft.survival() == pytest.approx([0.9, 0.85, 0.8, 0.7, 0.45])
    assert tree.draft(2).tokens == [1, 5]
    chain = tree.draft(3, first=[0, 1, 2])  # the chain 1 2 3 first, whatever the survivals
    assert chain.tokens == [1, 2, 3] and chain.parents is None


def test_accepted_path_finds_repeated_sampled_siblings() -> None:
    # two sampled siblings drew token 1; only the second one's child is 2
    draft = Draft([1, 1, 3, 2], None, [0.5] * 4, [-1, -1, 0, 1])
    assert loop_module.accepted_path(draft, [1, 2]) == [1, 3]
    assert loop_module.accepted_path(draft, [1, 3]) == [0, 2]
    with pytest.raises(AssertionError):
        loop_module.accepted_path(draft, [3])


def test_keep_path_moves_the_accepted_nodes_cache(target: Any) -> None:
    # a tree over the prompt: nodes 0 (a) and 1 (b) are siblings, 2 (c) is b's child; b c is accepted
    tree = [0, 1, 4]
    parents = [-1, -1, 1]
    with torch.inference_mode():
        cache = target(input_ids=torch.tensor([PROMPT]), use_cache=True).past_key_values
        mask, positions = loop_module.tree_attention(len(PROMPT) - 1, 1, parents, torch.float32, torch.device("cpu"))
        crop_cache(cache, len(PROMPT) - 1)
        cache = target(input_ids=torch.tensor([[PROMPT[-1], *tree]]), attention_mask=mask, position_ids=positions,
                       past_key_values=cache, use_cache=True).past_key_values
        assert loop_module.keep_path(cache, len(PROMPT), [len(PROMPT) + 1, len(PROMPT) + 2])
        crop_cache(cache, len(PROMPT) + 2)
        assert cache.tokens == PROMPT + [1, 4]  # the toy cache holds the tokens read, laid out as keys
    assert not loop_module.keep_path(object(), 0, [1])  # a cache of unknown layout: re-read instead


def test_keep_path_on_a_transformers_cache() -> None:
    model = tiny_llama(0)
    tree, parents = [0, 1, 4], [-1, -1, 1]  # b c accepted, a rejected
    with torch.inference_mode():
        _, cache = cached_forward(model, torch.tensor([PROMPT[:-1]]), None)
        mask, positions = loop_module.tree_attention(len(PROMPT) - 1, 1, parents, torch.float32, torch.device("cpu"))
        _, cache = cached_forward(model, torch.tensor([[PROMPT[-1], *tree]]), cache, attention_mask=mask, position_ids=positions)
        assert loop_module.keep_path(cache, len(PROMPT), [len(PROMPT) + 1, len(PROMPT) + 2])
        crop_cache(cache, len(PROMPT) + 2)
        after_tree, _ = cached_forward(model, torch.tensor([[2]]), cache)
        after_chain, _ = cached_forward(model, torch.tensor([PROMPT + [1, 4, 2]]), None)
    assert torch.allclose(after_tree[0, -1], after_chain[0, -1], atol=1e-5)


def test_token_recycling_follows_the_successors_the_target_predicted() -> None:
    recycling = TokenRecycling(top_k=2, max_children=1)
    assert recycling.propose(_context([6, 0]), 3).tokens == []
    logits = torch.full((3, len(TOKENS)), -5.0)
    logits[0, 1] = logits[1, 2] = logits[2, 0] = 5.0  # after 0 comes 1, after 3 comes 2, after 2 comes 0
    recycling.observe([0, 3, 2], logits, accepted=0)  # rejected rows are recycled too
    draft = recycling.propose(_context([6, 3]), 4)
    assert draft.tokens == [2, 0, 1] and not draft.is_tree


def test_token_recycling_grows_a_tree_best_first_inside_the_grammar(grammar: Any) -> None:
    recycling = TokenRecycling(top_k=3, max_children=2)
    logits = torch.full((len(TOKENS), len(TOKENS)), -5.0)
    for token in range(len(TOKENS)):  # successors of t: t+1 (best), then t+2
        logits[token, (token + 1) % len(TOKENS)] = 5.0
        logits[token, (token + 2) % len(TOKENS)] = 4.0
    recycling.observe(list(range(len(TOKENS))), logits, accepted=0)
    for matcher_grammar in (None, grammar):
        context = _context([6, 0], matcher_grammar, [0] if matcher_grammar is not None else [])
        draft = recycling.propose(context, 6)
        assert len(draft) <= 6 and draft.parents is not None
        if matcher_grammar is None:
            assert draft.is_tree and len(draft) == 6
        survival = draft.survival()
        assert survival == sorted(survival, reverse=True)  # best-first: parents before children
        for i, (token, parent) in enumerate(zip(draft.tokens, draft.parents)):
            source = context.tokens[-1] if parent < 0 else draft.tokens[parent]
            assert token in recycling.M[source, :2].tolist()
            path = [draft.tokens[j] for j in _path(draft.parents, i)]
            if context.matcher is not None:
                assert walk_allowed(context.matcher, path) == len(path), path  # inside the grammar
        siblings = [(p, t) for t, p in zip(draft.tokens, draft.parents)]
        assert len(set(siblings)) == len(siblings)


def _path(parents: list[int], i: int) -> list[int]:
    out = []
    while i >= 0:
        out.append(i)
        i = parents[i]
    return out[::-1]


def test_tree_verification_has_the_target_law() -> None:
    """Deterministic siblings: the emitted sequence has the law of drawing pi token by
    token (exactly enumerated), and a verifier that takes the first child whenever the
    draw is any child fails the same test."""
    torch.manual_seed(0)
    pi = torch.softmax(torch.randn(5) * 1.2, dim=0)
    tokens, parents = [1, 3, 4, 2, 0], [-1, -1, 0, 0, 1]  # root: 1, 3; under 1: 4, 2; under 3: 0
    children = {-1: {1: 0, 3: 1}, 0: {4: 2, 2: 3}, 1: {0: 4}}

    def exact(node: int = -1, prefix: tuple[int, ...] = ()) -> dict[tuple[int, ...], float]:
        law: dict[tuple[int, ...], float] = {}
        for y in range(5):
            p = float(pi[y])
            child = children.get(node, {}).get(y)
            if child is None:
                law[prefix + (y,)] = p
            else:
                for seq, q in exact(child, prefix + (y,)).items():
                    law[seq] = p * q
        return law

    law = exact()
    outcomes = sorted(law)
    generator = torch.Generator().manual_seed(1)

    def draw(i: int) -> int:
        return int(torch.multinomial(pi, 1, generator=generator))

    def sample_counts(verify: Callable[[], list[int]]) -> np.ndarray:
        counts = Counter(tuple(verify()) for _ in range(20000))
        assert set(counts) <= set(outcomes)
        return np.array([counts[o] for o in outcomes])

    probs = np.array([law[o] for o in outcomes])
    ok, stat, df = fits(sample_counts(lambda: verify_deterministic(tokens, draw, parents=parents)), probs)
    assert ok, (stat, df)

    def biased() -> list[int]:  # wrong: any child drawn counts as the first child
        out, node = [], -1
        while True:
            y = draw(node + 1)
            kids = children.get(node, {})
            if y not in kids:
                return [*out, y]
            first = min(kids, key=kids.get)  # type: ignore[arg-type]
            out.append(first)
            node = kids[first]

    assert not fits(sample_counts(biased), probs)[0]
    with pytest.raises(ValueError, match="twice"):
        verify_deterministic([1, 1], lambda i: 0, parents=[-1, -1])


def test_trigram_table_learns_from_text_and_target_predictions() -> None:
    trigram = TrigramTable()
    trigram.reset([])
    assert trigram.propose(_context([0, 1, 2, 0, 1]), 3).tokens == [2, 0, 1]
    logits = torch.full((1, len(TOKENS)), -5.0)
    logits[0, 3] = 5.0
    for _ in range(3):  # the target keeps predicting 3 after "0 1"
        trigram.propose(_context([0, 1, 2, 0, 1]), 0)
        trigram.observe([1], logits, accepted=0)
    assert trigram.propose(_context([0, 1, 2, 0, 1]), 1).tokens == [3]


def test_draft_model_reuses_its_cache_and_drafts_inside_the_grammar(draft_model: Any, grammar: Any) -> None:
    drafter = DraftModel(draft_model)
    drafter.reset(PROMPT)
    first = drafter.propose(_context(PROMPT, grammar), 4)
    assert first.q is None and 1 <= len(first) <= 4  # greedy: a deterministic draft
    m = grammar.matcher()
    assert m.advance_many(first.tokens) == len(first.tokens)
    again = drafter.propose(_context(PROMPT + [0], grammar, [0]), 3)
    fresh = DraftModel(draft_model)
    assert fresh.propose(_context(PROMPT + [0], grammar, [0]), 3).tokens == again.tokens
    sampled = drafter.propose(
        DraftContext(PROMPT, 1, grammar.matcher(), greedy=False, eos_ids=frozenset([EOS]), generator=torch.Generator()), 3
    )
    assert sampled.q is not None and sampled.q.shape == (len(sampled), len(TOKENS))
    for row, token in zip(sampled.q, sampled.tokens):
        assert math.isclose(float(row.sum()), 1.0, rel_tol=1e-5) and row[token] > 0
    assert float(sampled.q[0, 6]) == 0.0  # "x" is outside the grammar: q is masked too


def test_crop_cache_keeps_a_prefix(target: Any) -> None:
    with torch.inference_mode():
        cache = target(input_ids=torch.tensor([PROMPT]), use_cache=True).past_key_values
        crop_cache(cache, 3)
        assert cache.get_seq_length() == 3
        crop_cache(cache, 10)  # longer than the cache: nothing happens
        assert cache.get_seq_length() == 3


# -- the loop: greedy identity and the law of sampled sequences --------------------------------


DRAFTERS: dict[str, Callable[[Any], Drafter]] = {
    "grammar": lambda dm: GrammarForced(),
    "ngram": lambda dm: PromptLookup(),
    "recycling": lambda dm: TokenRecycling(),
    "trigram": lambda dm: TrigramTable(),
    "model": lambda dm: DraftModel(dm),
    "model-tree": lambda dm: DraftModel(dm, branching=2),
    "grammar+model": lambda dm: Chain([GrammarForced(), DraftModel(dm)]),
    "grammar+ngram": lambda dm: Chain([GrammarForced(), PromptLookup()]),
    "grammar+recycling": lambda dm: Chain([GrammarForced(), TokenRecycling()]),  # a tree merged into a tree
    "grammar+ngram+trigram": lambda dm: Chain([GrammarForced(), PromptLookup(), TrigramTable()]),
}


@pytest.mark.parametrize("name", sorted(DRAFTERS))
@pytest.mark.parametrize("k", [1, 4, "adaptive"])
def test_greedy_output_equals_plain_decoding(target: Any, draft_model: Any, grammar: Any, name: str, k: int | str) -> None:
    def run(prompt: list[int], drafter: Drafter | None) -> list[int]:
        pipeline = make_pipeline(grammar)
        pipeline.reset(prompt)
        return decode(target, prompt, pipeline, eos_ids=frozenset([EOS]), max_new_tokens=10, greedy=True,
                      drafter=drafter, draft_length=k).tokens

    drafter = DRAFTERS[name](draft_model)  # one drafter across prompts: learned state must not matter
    for shift in range(4):
        prompt = PROMPT[shift:] + PROMPT[:shift]
        assert run(prompt, drafter) == run(prompt, None)


SAMPLES = 3000


@pytest.fixture(scope="module")
def law(target: Any, grammar: Any) -> dict[tuple[int, ...], float]:
    return exact_law(target, grammar, temperature=1.0)


def test_plain_sampling_matches_the_exact_law(target: Any, grammar: Any, law: dict[tuple[int, ...], float]) -> None:
    counts, _ = sample_sequences(target, grammar, None, SAMPLES, seed=1)
    ok, stat, df = check_law(counts, law)
    assert ok, (stat, df)


@pytest.mark.parametrize("name", sorted(DRAFTERS))
def test_speculative_sampling_matches_the_exact_law(
    target: Any, draft_model: Any, grammar: Any, law: dict[tuple[int, ...], float], name: str
) -> None:
    counts, totals = sample_sequences(target, grammar, DRAFTERS[name](draft_model), SAMPLES, seed=2)
    assert totals["drafted"] > SAMPLES // 4 and totals["accepted"] > 0  # the drafter really drafted
    if name != "grammar":  # forced tokens with one spelling are always accepted here
        assert totals["accepted"] < totals["drafted"]
    ok, stat, df = check_law(counts, law)
    assert ok, (stat, df)


class WideTree(Drafter):
    """Every token the grammar allows, two levels deep, in descending id order: a
    bushy tree whose accepted path is seldom its first nodes."""

    name = "wide-tree"

    def propose(self, context: DraftContext, k: int) -> Draft:
        matcher = context.matcher
        tokens: list[int] = []
        parents: list[int] = []
        level = [(-1, [])]
        for _ in range(2):
            below = []
            for node, path in level:
                for token in sorted(range(len(TOKENS)), reverse=True):
                    if len(tokens) >= k or (path and path[-1] == EOS):
                        break
                    if walk_allowed(matcher, [*path, token], frozenset([EOS])) == len(path) + 1:
                        tokens.append(token)
                        parents.append(node)
                        below.append((len(tokens) - 1, [*path, token]))
            level = below
        return Draft(tokens, None, [0.5] * len(tokens), parents)


TREE_REGEX = r"[ab]{2,4}c"


@pytest.fixture(scope="module")
def tree_grammar() -> Any:
    return compile_regex(TREE_REGEX, VOCAB, disk_cache=False)


@pytest.fixture(scope="module")
def tree_law(target: Any, tree_grammar: Any) -> dict[tuple[int, ...], float]:
    return exact_law(target, tree_grammar, temperature=1.0)


def test_token_trees_keep_the_exact_law(target: Any, tree_grammar: Any, tree_law: dict[tuple[int, ...], float]) -> None:
    counts, totals = sample_sequences(target, tree_grammar, WideTree(), SAMPLES, k=8, seed=5)
    assert totals["drafted"] > 3 * SAMPLES and totals["accepted"] > SAMPLES
    ok, stat, df = check_law(counts, tree_law)
    assert ok, (stat, df)
    greedy_plain = decode(target, PROMPT, _reset(make_pipeline(tree_grammar)), eos_ids=frozenset([EOS]),
                          max_new_tokens=10, greedy=True).tokens
    greedy_tree = decode(target, PROMPT, _reset(make_pipeline(tree_grammar)), eos_ids=frozenset([EOS]),
                         max_new_tokens=10, greedy=True, drafter=WideTree(), draft_length=8).tokens
    assert greedy_tree == greedy_plain


def _reset(pipeline: Pipeline) -> Pipeline:
    pipeline.reset(PROMPT)
    return pipeline


@pytest.mark.parametrize("sabotage", ["causal-mask", "keep-tree-cache", "first-nodes-as-path"])
def test_broken_tree_attention_fails_the_same_test(
    target: Any, tree_grammar: Any, tree_law: dict[tuple[int, ...], float], sabotage: str, monkeypatch: Any
) -> None:
    if sabotage == "causal-mask":  # every node attends to all nodes before it, as in a chain
        real = loop_module.tree_attention
        monkeypatch.setattr(loop_module, "tree_attention",
                            lambda cached, committed, parents, dtype, device: real(
                                cached, committed, list(range(-1, len(parents) - 1)), dtype, device))
    elif sabotage == "keep-tree-cache":  # one cache entry too many survives the tree
        real_crop = loop_module.crop_cache
        monkeypatch.setattr(loop_module, "crop_cache", lambda cache, length: real_crop(cache, length + 1))
    else:  # the cache keeps the first tree nodes as if they were the accepted path
        real_keep = loop_module.keep_path
        monkeypatch.setattr(loop_module, "keep_path",
                            lambda cache, start, positions: real_keep(cache, start, [start + i for i in range(len(positions))]))
    counts, _ = sample_sequences(target, tree_grammar, WideTree(), SAMPLES, k=8, seed=5)
    ok, stat, df = check_law(counts, tree_law)
    assert not ok, (stat, df)


def _biased_verify(
    pipeline: Pipeline, logits: torch.Tensor, draft: Draft, greedy: bool, generator: Any, eos_ids: frozenset[int]
) -> list[int]:
    """Truncate-then-resample: every draft token the grammar allows is kept, then one fresh draw."""
    out = []
    for token in draft.tokens:
        if not pipeline.advance(token):
            break
        out.append(token)
        if token in eos_ids:
            return out
    token = pipeline.choose(logits[len(out)], generator=generator)
    assert pipeline.advance(token)
    return out + [token]


@pytest.mark.parametrize("name", ["model", "ngram"])
def test_a_biased_verifier_fails_the_same_test(
    target: Any, draft_model: Any, grammar: Any, law: dict[tuple[int, ...], float], name: str, monkeypatch: Any
) -> None:
    monkeypatch.setattr(loop_module, "_verify", _biased_verify)
    counts, _ = sample_sequences(target, grammar, DRAFTERS[name](draft_model), SAMPLES, seed=2)
    ok, stat, df = check_law(counts, law)
    assert not ok, (stat, df)


def test_speculative_sampling_with_temperature_and_top_k(target: Any, draft_model: Any, grammar: Any) -> None:
    temperature = 0.7
    law = exact_law(target, grammar, temperature)
    counts, totals = sample_sequences(target, grammar, DraftModel(draft_model), SAMPLES, temperature=temperature, seed=4)
    assert totals["drafted"] > 0
    ok, stat, df = check_law(counts, law)
    assert ok, (stat, df)
    # a pipeline with top-k after the mask still verifies (rows come from process_positions)
    pipeline = Pipeline([GrammarMask(grammar), TopK(2)])
    pipeline.reset(PROMPT)
    out = decode(target, PROMPT, pipeline, eos_ids=frozenset([EOS]), max_new_tokens=10, greedy=False,
                 generator=torch.Generator().manual_seed(0), drafter=DraftModel(draft_model), draft_length=3)
    assert out.finish_reason == "eos" and grammar.matcher().advance_many(out.tokens) == len(out.tokens)


def test_stats_count_forwards_and_acceptance(target: Any, grammar: Any) -> None:
    pipeline = make_pipeline(grammar)
    pipeline.reset(PROMPT)
    plain = decode(target, PROMPT, pipeline, eos_ids=frozenset([EOS]), max_new_tokens=10, greedy=True)
    assert plain.stats.target_forwards == len(plain.tokens) == plain.stats.emitted
    assert plain.stats.mean_accepted_length == 1.0 and math.isnan(plain.stats.acceptance_rate)
    pipeline.reset(PROMPT)
    spec = decode(target, PROMPT, pipeline, eos_ids=frozenset([EOS]), max_new_tokens=10, greedy=True,
                  drafter=GrammarForced(), draft_length=4)
    assert spec.tokens == plain.tokens
    assert spec.stats.target_forwards + spec.stats.accepted == len(spec.tokens)
    assert spec.stats.as_dict()["emitted"] == len(spec.tokens)


def test_max_new_tokens_bounds_drafts(target: Any, grammar: Any) -> None:
    for budget in (1, 2, 3):
        pipeline = make_pipeline(grammar)
        pipeline.reset(PROMPT)
        out = decode(target, PROMPT, pipeline, eos_ids=frozenset([EOS]), max_new_tokens=budget, greedy=True,
                     drafter=Chain([GrammarForced(), PromptLookup()]), draft_length=8)
        assert len(out.tokens) <= budget
        assert out.finish_reason == ("eos" if out.tokens[-1] == EOS else "length")


def test_a_transformers_model_and_its_kv_cache(grammar: Any) -> None:
    """Greedy identity and the law of the first tokens on a real (tiny, random) Llama with a DynamicCache."""
    target, drafts = tiny_llama(0), tiny_llama(1)
    for drafter in (Chain([GrammarForced(), PromptLookup()]), DraftModel(drafts), TokenRecycling(),
                    DraftModel(drafts, branching=2)):
        for shift in range(3):
            prompt = PROMPT[shift:] + PROMPT[:shift]
            outs = []
            for d in (None, drafter):
                pipeline = make_pipeline(grammar)
                pipeline.reset(prompt)
                outs.append(decode(target, prompt, pipeline, eos_ids=frozenset([EOS]), max_new_tokens=10, greedy=True,
                                   drafter=d, draft_length=4).tokens)
            assert outs[0] == outs[1]
    law = exact_law(target, grammar, temperature=1.0)
    for drafter in (DraftModel(drafts), DraftModel(drafts, branching=2, siblings="iid")):  # a chain, a sampled tree
        counts, totals = sample_sequences(target, grammar, drafter, 400, seed=9)
        assert totals["drafted"] > 0
        ok, stat, df = check_law(counts, law)
        assert ok, (stat, df)


def test_layer_skip_drafts_with_part_of_the_target(grammar: Any) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from gramspec.specdec import LayerSkip

    torch.manual_seed(3)
    config = LlamaConfig(vocab_size=len(TOKENS), hidden_size=16, intermediate_size=32, num_hidden_layers=4,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         eos_token_id=EOS, pad_token_id=EOS, bos_token_id=EOS)
    target = LlamaForCausalLM(config).eval()
    skip = LayerSkip(target)
    assert skip.keep == [0, 2, 3] and len(target.model.layers) == 4  # the target itself is untouched
    for shift in range(3):
        prompt = PROMPT[shift:] + PROMPT[:shift]
        outs = []
        for drafter in (None, skip):
            pipeline = make_pipeline(grammar)
            pipeline.reset(prompt)
            outs.append(decode(target, prompt, pipeline, eos_ids=frozenset([EOS]), max_new_tokens=10, greedy=True,
                               drafter=drafter, draft_length=3).tokens)
        assert outs[0] == outs[1]
    with pytest.raises(ValueError, match="layer 0"):
        LayerSkip(target, keep=[1, 2])
    with pytest.raises(ValueError, match="model.model.layers"):
        LayerSkip(ToyLM(0, len(TOKENS)))


# -- stochastic token trees: sampled siblings, SpecInfer / RSD rules ------------------------------------

def _stale_residual(p: torch.Tensor, tokens: Any, q_rows: torch.Tensor) -> tuple[list[float], torch.Tensor]:
    """Wrong: every sibling is tested against the node's target p, not against the residual
    left by the siblings rejected before it; one residual step after the last."""
    p = p.double()
    accept = [min(1.0, float(p[x]) / float(q[x])) if q[x] > 0 else 0.0 for x, q in zip(tokens, q_rows)]
    if not len(q_rows):
        return accept, p
    residual = (p - q_rows[-1].double()).clamp(min=0)
    return accept, residual / residual.sum() if residual.sum() > 0 else p


def _fresh_target(p: torch.Tensor, tokens: Any, q_rows: torch.Tensor) -> tuple[list[float], torch.Tensor]:
    """Wrong: siblings accepted with min(1, p/q) and, when all are rejected, p sampled afresh (no residual)."""
    accept, _ = _stale_residual(p, tokens, q_rows)
    return accept, p.double()


SIBLING_RULES = {"recursive": sibling_law, "stale-residual": _stale_residual, "fresh-target": _fresh_target}


def _sibling_draws(q: torch.Tensor, k: int, siblings: Any) -> list[tuple[list[int], float]]:
    """Every sequence of ``k`` siblings drawn from ``q`` with its probability (without
    replacement: fewer when ``q``'s support runs out, as :func:`sample_siblings` does)."""
    out: list[tuple[list[int], float]] = []

    def visit(drawn: list[int], prob: float) -> None:
        remaining = q.clone()
        if siblings == "without_replacement":
            remaining[drawn] = 0
        if len(drawn) == k or float(remaining.sum()) <= 0:
            out.append((drawn, prob))
            return
        row = remaining / remaining.sum()
        for token in torch.nonzero(row > 0).flatten().tolist():
            visit([*drawn, token], prob * float(row[token]))

    visit([], 1.0)
    return out


def _node_law(p: torch.Tensor, q: torch.Tensor, k: int, siblings: Any, rule: Callable[..., Any]) -> torch.Tensor:
    """The exact law of the token one node emits: every sibling draw enumerated, and for
    each the chance of each acceptance and of the final residual."""
    law = torch.zeros_like(p, dtype=torch.float64)
    for drawn, prob in _sibling_draws(q, k, siblings):
        rows = sibling_rows(q, drawn, siblings)
        accept, residual = rule(p, drawn, rows)
        reach = prob
        for token, chance in zip(drawn, accept):
            law[token] += reach * chance
            reach *= 1 - chance
        law += reach * residual
    return law


NODE_CASES = {
    # (p, q): p has mass where q has none and the reverse
    "random": (torch.tensor([0.05, 0.3, 0.0, 0.25, 0.4]), torch.tensor([0.5, 0.1, 0.2, 0.0, 0.2])),
    "p on tokens q never draws": (torch.tensor([0.0, 0.0, 0.0, 0.6, 0.4]), torch.tensor([0.4, 0.3, 0.3, 0.0, 0.0])),
    "p on one likely sibling": (torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0]), torch.tensor([0.7, 0.1, 0.1, 0.1, 0.0])),
    "p equals q": (torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0]), torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0])),
    "q one token (deterministic)": (torch.tensor([0.3, 0.3, 0.4, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0])),
}


@pytest.mark.parametrize("siblings", ["iid", "without_replacement"])
@pytest.mark.parametrize("case", sorted(NODE_CASES))
def test_sibling_rule_emits_the_target_exactly(siblings: str, case: str) -> None:
    """Exact enumeration of every sibling draw: the recursive rule emits p to rounding,
    for 1..3 siblings; the rules without the residual update do not (on the cases
    where rejections happen)."""
    p, q = (t.double() for t in NODE_CASES[case])
    for k in (1, 2, 3):
        law = _node_law(p, q, k, siblings, sibling_law)
        assert torch.allclose(law, p, atol=1e-12), (k, law, p)
    if case == "random":
        for name in ("stale-residual", "fresh-target"):
            law = _node_law(p, q, 3, siblings, SIBLING_RULES[name])
            assert float((law - p).abs().sum()) / 2 > 0.02, (name, law)  # total variation


def _random_node(generator: torch.Generator, zeros: int = 1) -> torch.Tensor:
    return _random_law(generator, 5, zeros)


@pytest.mark.parametrize("siblings", ["iid", "without_replacement"])
@pytest.mark.parametrize("rule", ["recursive", "stale-residual", "fresh-target"])
def test_stochastic_tree_verifier_has_the_target_law(siblings: str, rule: str, monkeypatch: Any) -> None:
    """A two-level tree sampled afresh each time (3 root candidates from q, 2 under each
    from q after that token), verified; the emitted tokens continued by plain sampling to
    two tokens have the law pi(y1) pi(y2 | y1) (chi-square, 6000 draws). The rules
    without the residual update fail the same test."""
    monkeypatch.setattr(verify_module, "sibling_law", SIBLING_RULES[rule])
    g = torch.Generator().manual_seed(11)
    v = 5
    p_root, q_root = _random_node(g), _random_node(g, zeros=2)
    p_next = torch.stack([_random_node(g) for _ in range(v)])
    q_next = torch.stack([_random_node(g, zeros=2) for _ in range(v)])
    counts = np.zeros((v, v), dtype=np.int64)
    for _ in range(6000):
        roots, root_rows = sample_siblings(q_root, 3, siblings, g)  # type: ignore[arg-type]
        tokens, parents, rows = list(roots), [-1] * len(roots), [root_rows]
        for i, x in enumerate(roots):
            kids, kid_rows = sample_siblings(q_next[x], 2, siblings, g)  # type: ignore[arg-type]
            tokens += kids
            parents += [i] * len(kids)
            rows.append(kid_rows)

        def target(i: int, tokens: list[int] = tokens) -> torch.Tensor:
            return p_root if i == 0 else p_next[tokens[i - 1]]

        out = verify_stochastic_tree(tokens, parents, torch.cat(rows), target, generator=g)
        assert len(out) <= 3
        if len(out) == 1:
            out.append(int(torch.multinomial(p_next[out[0]], 1, generator=g)))
        counts[out[0], out[1]] += 1
    law = (p_root[:, None] * p_next).numpy()
    ok, stat, df = fits(counts.ravel(), law.ravel())
    print(f"{rule} {siblings}: chi-square {stat:.1f} on {df} df")
    assert ok == (rule == "recursive"), (stat, df)


def test_stochastic_tree_verifier_edge_cases() -> None:
    g = torch.Generator().manual_seed(0)
    eye = torch.eye(4, dtype=torch.float64)
    q = torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=torch.float64)
    # a sibling with q(x) = 0 is never accepted; p all on the other sibling: it always is
    p = torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    for _ in range(20):
        assert verify_stochastic_tree([2, 1], [-1, -1], torch.stack([q, q]), lambda i: p if i == 0 else eye[3],
                                      generator=g) == [1, 3]
    # p all on siblings that are rejected (p(x) = 0): the residual gives p, never a sibling
    p = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    assert verify_stochastic_tree([0, 1, 0], [-1, -1, -1], torch.stack([q, q, q]), lambda i: p, generator=g) == [3]
    # an accepted EOS ends the output; q == p is always accepted, then a bonus token
    assert verify_stochastic_tree([EOS], [-1], eye[:1].new_zeros(1, 8).index_fill_(1, torch.tensor([EOS]), 1.0),
                                  lambda i: torch.eye(8)[EOS], generator=g, stop={EOS}) == [EOS]
    assert verify_stochastic_tree([0, 2], [-1, 0], torch.stack([q, eye[2]]),
                                  lambda i: [q, eye[2], eye[1]][i], generator=g)[1:] == [2, 1]
    with pytest.raises(ValueError, match="topological"):
        verify_stochastic_tree([0, 1], [1, -1], torch.stack([q, q]), lambda i: q)


def test_draft_model_samples_token_trees(draft_model: Any, grammar: Any) -> None:
    for siblings in ("iid", "without_replacement"):
        drafter = DraftModel(draft_model, branching=3, siblings=siblings)  # type: ignore[arg-type]
        for seed in range(20):
            context = DraftContext(PROMPT, 1, grammar.matcher(), greedy=False, eos_ids=frozenset([EOS]),
                                   generator=torch.Generator().manual_seed(seed))
            draft = drafter.propose(context, 7)
            assert context.matcher.num_tokens == 0  # type: ignore[union-attr]
            assert draft.parents is not None and draft.q is not None and draft.q.shape == (len(draft), len(TOKENS))
            assert 3 <= len(draft) <= 7 and draft.parents[:3] == [-1, -1, -1]
            for i, (token, parent) in enumerate(zip(draft.tokens, draft.parents)):
                path = [draft.tokens[j] for j in _path(draft.parents, i)]
                assert walk_allowed(grammar.matcher(), path, frozenset([EOS])) == len(path)  # inside the grammar
                assert math.isclose(float(draft.q[i].sum()), 1.0, rel_tol=1e-5) and draft.q[i, token] > 0
                siblings_before = [j for j in range(i) if draft.parents[j] == parent]
                if siblings == "without_replacement":
                    assert all(draft.q[i, draft.tokens[j]] == 0 for j in siblings_before)  # RSD: renormalized rows
                elif siblings_before:
                    assert torch.equal(draft.q[i], draft.q[siblings_before[0]])  # SpecInfer: one q per node
                if token in (draft.tokens[j] for j in siblings_before):  # a repeated i.i.d. draw is not expanded
                    assert siblings == "iid" and i not in draft.parents
            kids: dict[int, list[int]] = {}
            for i, parent in enumerate(draft.parents):
                kids.setdefault(parent, []).append(i)
            for group in kids.values():  # siblings are added together, in draw order
                assert group == list(range(group[0], group[0] + len(group)))
    greedy = DraftModel(draft_model, branching=2).propose(_context(PROMPT, grammar), 6)
    assert greedy.q is None and greedy.is_tree and greedy.parents[:2] == [-1, -1]  # type: ignore[index]
    assert greedy.tokens[0] == DraftModel(draft_model).propose(_context(PROMPT, grammar), 1).tokens[0]
    with pytest.raises(ValueError, match="branching"):
        DraftModel(draft_model, branching=0)
    with pytest.raises(ValueError, match="siblings"):
        DraftModel(draft_model, siblings="sometimes")  # type: ignore[arg-type]
    assert make_drafter("model-tree", draft_model=draft_model).branching == 2  # type: ignore[attr-defined]


def test_adaptive_length_does_not_cut_a_sampled_draft_by_its_own_tokens() -> None:
    q = torch.full((3, 4), 0.25)
    draft = Draft([1, 2, 3], q, [0.9, 0.1, 0.9])
    assert DraftLength(max_tokens=8, adaptive=True, threshold=0.5).cut(draft).tokens == [1, 2, 3]
    assert DraftLength(max_tokens=2, adaptive=True).cut(draft).tokens == [1, 2]
    with pytest.raises(ValueError, match="one row per token"):
        Draft([1, 2], q)


class SampledTree(Drafter):
    """A stochastic tree from a fixed law: 3 candidates at the root drawn from the
    grammar-masked ``q``, 2 under each, ``q`` depending on the parent token."""

    name = "sampled-tree"

    def __init__(self, siblings: Any) -> None:
        self.siblings = siblings
        g = torch.Generator().manual_seed(5)
        self.laws = torch.rand(len(TOKENS) + 1, len(TOKENS), generator=g) ** 3

    def _q(self, context: DraftContext, path: list[int]) -> torch.Tensor | None:
        law = self.laws[path[-1] if path else len(TOKENS)].clone()
        for token in range(len(TOKENS)):
            if walk_allowed(context.matcher, [*path, token], context.eos_ids) < len(path) + 1:
                law[token] = 0
        return law / law.sum() if law.sum() > 0 else None

    def propose(self, context: DraftContext, k: int) -> Draft:
        tokens: list[int] = []
        parents: list[int] = []
        rows: list[torch.Tensor] = []
        level: list[tuple[int, list[int]]] = [(-1, [])]
        for width in (3, 2):
            below = []
            for node, path in level:
                q = None if (path and path[-1] == EOS) else self._q(context, path)
                if q is None or len(tokens) >= k:
                    continue
                drawn, q_rows = sample_siblings(q, min(width, k - len(tokens)), self.siblings, context.generator)
                for token, row in zip(drawn, q_rows):
                    tokens.append(token)
                    parents.append(node)
                    rows.append(row)
                    below.append((len(tokens) - 1, [*path, token]))
            level = below
        return Draft(tokens, torch.stack(rows) if rows else None, [0.5] * len(tokens), parents)


TREE_SAMPLES = 2000
STOCHASTIC_TREES: dict[str, Callable[[Any], Drafter]] = {
    "model-tree iid": lambda dm: DraftModel(dm, branching=2, siblings="iid"),
    "model-tree without replacement": lambda dm: DraftModel(dm, branching=3),
    "grammar+model-tree": lambda dm: Chain([GrammarForced(), DraftModel(dm, branching=2)]),
    "sampled-tree iid": lambda dm: SampledTree("iid"),
    "sampled-tree without replacement": lambda dm: SampledTree("without_replacement"),
}


@pytest.mark.parametrize("name", sorted(STOCHASTIC_TREES))
def test_stochastic_trees_keep_the_exact_law(
    target: Any, draft_model: Any, tree_grammar: Any, tree_law: dict[tuple[int, ...], float], name: str
) -> None:
    drafter = STOCHASTIC_TREES[name](draft_model)
    counts, totals = sample_sequences(target, tree_grammar, drafter, TREE_SAMPLES, k=6, seed=7)
    assert totals["drafted"] > 2 * TREE_SAMPLES and 0 < totals["accepted"] < totals["drafted"]
    ok, stat, df = check_law(counts, tree_law)
    print(f"{name}: chi-square {stat:.1f} on {df} df, {totals['accepted']}/{totals['drafted']} accepted")
    assert ok, (stat, df)


@pytest.mark.parametrize("rule", ["stale-residual", "fresh-target"])
def test_stochastic_trees_without_the_residual_fail_the_same_test(
    target: Any, draft_model: Any, tree_grammar: Any, tree_law: dict[tuple[int, ...], float], rule: str,
    monkeypatch: Any
) -> None:
    monkeypatch.setattr(verify_module, "sibling_law", SIBLING_RULES[rule])
    counts, _ = sample_sequences(target, tree_grammar, SampledTree("iid"), TREE_SAMPLES // 2, k=6, seed=7)
    ok, stat, df = check_law(counts, tree_law)
    print(f"{rule}: chi-square {stat:.1f} on {df} df")
    assert not ok, (stat, df)
