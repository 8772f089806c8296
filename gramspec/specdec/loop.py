"""The decode loop: plain decoding is speculative decoding with drafts of length 0.

Each step feeds the target the committed tokens it has not read yet (the whole
prompt at first, then the last token) followed by the draft, in one forward
with the KV cache. The :class:`~gramspec.plugins.Pipeline` (warpers, grammar
mask, samplers) turns the logits at every draft position into the constrained
target distribution; the verifier (:mod:`gramspec.specdec.verify`) keeps the
accepted prefix and adds one token; the cache is cropped to what was kept.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from gramspec.plugins.base import Pipeline
from gramspec.specdec.drafters import (
    Draft,
    DraftContext,
    Drafter,
    cached_forward,
    crop_cache,
)
from gramspec.specdec.verify import (
    verify_deterministic,
    verify_stochastic,
    verify_stochastic_tree,
)

#: eos: the sequence ended; length: max_new_tokens reached; time: max_time passed.
FinishReason = Literal["eos", "length", "time"]


class ForwardCost:
    """Measured seconds of one target forward by number of input tokens (moving averages).

    A length never measured is assumed to cost what the nearest shorter measured one
    does: optimistic, so the goodput rule tries it once and learns its price.
    """

    def __init__(self) -> None:
        self.seconds: dict[int, float] = {}

    def observe(self, tokens: int, seconds: float) -> None:
        old = self.seconds.get(tokens)
        self.seconds[tokens] = seconds if old is None else 0.8 * old + 0.2 * seconds

    def estimate(self, tokens: int) -> float:
        found = self.seconds.get(tokens)
        if found is not None:
            return found
        shorter = [n for n in self.seconds if n <= tokens]
        if shorter:
            return self.seconds[max(shorter)]
        return min(self.seconds.values(), default=1.0)


#: Forward costs per target model, kept across generations (a model's cost curve does not change).
_COSTS: weakref.WeakKeyDictionary[torch.nn.Module, ForwardCost] = weakref.WeakKeyDictionary()


def forward_cost(model: torch.nn.Module) -> ForwardCost:
    found = _COSTS.get(model)
    if found is None:
        found = _COSTS[model] = ForwardCost()
    return found


@dataclass
class DraftLength:
    """How many tokens to draft per step.

    Fixed (``adaptive=False``): up to ``max_tokens``. Adaptive: the drafter proposes
    up to ``max_tokens``, each token with a confidence (its predicted chance of
    acceptance), and one of two rules cuts the draft:

    * a goodput rule (``goodput=True``, the default, once the loop knows the target's
      cost curve): keep the length ``n`` that maximizes expected tokens per second,
      ``(1 + sum_i prod_{j<=i} confidence_j) / cost(n + 1)``, with ``cost`` the target's
      measured forward time for ``n + 1`` input tokens (on a CPU a forward over a few
      tokens costs well over one token's, so weak drafts are not worth verifying; with
      ``n = 0`` the step is plain decoding). For a tree, the sum runs over nodes, each
      with the product of the confidences on its path;
    * otherwise SpecDec++'s threshold rule (Huang et al. 2024): stop before the position
      where the predicted chance that some draft token is rejected, ``1 - prod(confidence)``,
      passes ``threshold`` (chains only: in a tree some node is always rejected). It
      ignores what a forward costs: where a longer forward costs little more, it cuts
      drafts that would pay (measured in docs/specdec.md), hence the goodput rule first.

    A stochastic draft (one with ``q``) is only cut to ``max_tokens``: its confidences
    are the draft's probabilities of the tokens it drew, and dropping a sampled token
    because of its own value biases the output (``q = (0.9, 0.1)``, ``pi = (0.1, 0.9)``,
    a threshold that drops the second token: the first comes out with probability
    0.11, not 0.1). Its drafter applies the threshold while drafting instead
    (:attr:`DraftContext.min_survival`), deciding before each draw whether to draw on.
    """

    max_tokens: int = 4
    adaptive: bool = False
    threshold: float = 0.7
    goodput: bool = True

    @classmethod
    def parse(cls, value: int | str | DraftLength) -> DraftLength:
        if isinstance(value, DraftLength):
            return value
        if value == "adaptive":
            return cls(max_tokens=16, adaptive=True)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"num_draft_tokens must be an integer >= 0 or 'adaptive', not {value!r}")
        return cls(max_tokens=value)

    def cut(self, draft: Draft, cost: ForwardCost | None = None) -> Draft:
        if not self.adaptive or draft.q is not None:
            return draft.truncate(self.max_tokens)
        # a token's survival: the chance it is accepted (the product of the confidences on
        # its path); a draft's first n tokens are a chain's prefix or a subtree
        survival = draft.survival()[: self.max_tokens]
        if self.goodput and cost is not None:
            best, best_rate, expected = 0, 1.0 / cost.estimate(1), 1.0
            for n, survive in enumerate(survival, start=1):
                expected += survive
                rate = expected / cost.estimate(n + 1)
                if rate > best_rate:
                    best, best_rate = n, rate
            return draft.truncate(best)
        keep = len(survival)
        if not draft.is_tree:  # in a tree some node is always rejected: the threshold means nothing there
            keep = 0
            for survive in survival:
                if keep and 1 - survive > self.threshold:
                    break
                keep += 1
        return draft.truncate(keep)


@dataclass
class DecodeStats:
    target_forwards: int = 0
    drafted: int = 0
    accepted: int = 0
    emitted: int = 0
    draft_seconds: float = 0.0
    #: time choosing and verifying tokens (pipeline, masks), forward passes excluded
    verify_seconds: float = 0.0
    first_token_seconds: float = 0.0
    seconds: float = 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else math.nan

    @property
    def mean_accepted_length(self) -> float:
        """Tokens emitted per target forward (1.0 for plain decoding)."""
        return self.emitted / self.target_forwards if self.target_forwards else math.nan

    def as_dict(self) -> dict[str, float]:
        return {
            "target_forwards": self.target_forwards,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "emitted": self.emitted,
            "acceptance_rate": self.acceptance_rate,
            "mean_accepted_length": self.mean_accepted_length,
            "draft_seconds": self.draft_seconds,
            "verify_seconds": self.verify_seconds,
            "first_token_seconds": self.first_token_seconds,
            "seconds": self.seconds,
            "tokens_per_second": self.emitted / self.seconds if self.seconds else math.nan,
        }


@dataclass
class DecodeOutput:
    tokens: list[int]  # generated tokens, EOS included when it was generated
    finish_reason: FinishReason
    stats: DecodeStats = field(default_factory=DecodeStats)


def decode(
    model: torch.nn.Module,
    prompt_ids: Sequence[int],
    pipeline: Pipeline,
    *,
    eos_ids: frozenset[int],
    max_new_tokens: int,
    greedy: bool,
    generator: torch.Generator | None = None,
    drafter: Drafter | None = None,
    draft_length: DraftLength | int | str = 0,
    temperature: float = 1.0,
    stats: DecodeStats | None = None,
    max_time: float | None = None,
) -> DecodeOutput:
    """Generate after ``prompt_ids`` with the target distribution ``pipeline`` defines.

    ``pipeline`` must be reset to the prompt. ``drafter=None`` or a draft length of
    0 is plain decoding. ``temperature`` only informs a draft model's sampling.
    ``stats``: counters to add to (several attempts at one sample), else new ones.
    ``max_time``: seconds after which generation stops at the end of a step
    (finish reason ``"time"``), like transformers' ``max_time``.
    """
    if not prompt_ids:
        raise ValueError("the prompt must have at least one token")
    if max_time is not None and not max_time > 0:
        raise ValueError(f"max_time must be a positive number of seconds, not {max_time!r}")
    length = DraftLength.parse(draft_length)
    speculative = drafter is not None and length.max_tokens > 0
    matcher = pipeline.matcher
    costs = forward_cost(model)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    if drafter is not None:
        drafter.reset(prompt_ids)

    sequence = [int(t) for t in prompt_ids]
    generated: list[int] = []
    stats = stats if stats is not None else DecodeStats()
    cache = None
    fed = 0  # tokens of `sequence` whose keys/values are in the cache
    finish: FinishReason = "length"
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            while len(generated) < max_new_tokens:
                budget = max_new_tokens - len(generated) - 1  # the step's last token is the target's own
                draft = Draft()
                if speculative and budget > 0:
                    t0 = time.perf_counter()
                    context = DraftContext(sequence, len(prompt_ids), matcher, greedy, temperature, eos_ids, generator,
                                           min_survival=1 - length.threshold if length.adaptive else 0.0)
                    draft = length.cut(drafter.propose(context, min(length.max_tokens, budget)), costs)  # type: ignore[union-attr]
                    stats.draft_seconds += time.perf_counter() - t0

                committed = len(sequence) - fed  # tokens the target has not read yet (>= 1)
                inputs = sequence[fed:] + draft.tokens
                tree = tree_attention(fed, committed, draft.parents, dtype, device) if draft.is_tree else None
                t0 = time.perf_counter()
                all_logits, cache = cached_forward(
                    model, torch.tensor([inputs], dtype=torch.long, device=device), cache,
                    attention_mask=None if tree is None else tree[0], position_ids=None if tree is None else tree[1],
                    last=len(draft) + 1,
                )
                if fed:  # decode steps only: the prompt's forward says nothing about drafts
                    costs.observe(len(inputs), time.perf_counter() - t0)
                stats.target_forwards += 1
                logits = all_logits[0, -(len(draft) + 1) :]

                t0 = time.perf_counter()
                emitted = _verify(pipeline, logits, draft, greedy, generator, eos_ids)
                stats.verify_seconds += time.perf_counter() - t0
                if stats.target_forwards == 1:
                    stats.first_token_seconds = time.perf_counter() - start

                accepted = len(emitted) - 1
                path = accepted_path(draft, emitted[:accepted]) if tree is not None else None
                stats.drafted += len(draft)
                stats.accepted += accepted
                if drafter is not None and (len(draft) or drafter.wants_logits):
                    rows = logits.detach() if drafter.wants_logits else None
                    drafter.observe([sequence[-1], *draft.tokens], rows, accepted, path)

                # a chain's accepted tokens sit right after the committed ones in the cache; a
                # tree's accepted path is moved there (or, in a cache of unknown layout, re-read)
                fed = len(sequence)
                if path is None:
                    fed += accepted
                elif keep_path(cache, fed, [fed + i for i in path]):
                    fed += len(path)
                crop_cache(cache, fed)
                for token in emitted:
                    sequence.append(token)
                    generated.append(token)
                    stats.emitted += 1
                    if token in eos_ids:
                        finish = "eos"
                        break
                if finish == "eos":
                    break
                if max_time is not None and time.perf_counter() - start > max_time:
                    finish = "time"
                    break
    finally:
        stats.seconds += time.perf_counter() - start
    pipeline.finish()
    return DecodeOutput(generated, finish, stats)


def accepted_path(draft: Draft, accepted: Sequence[int]) -> list[int]:
    """Nodes of ``draft`` that spell ``accepted`` from the root. Siblings are distinct in
    a deterministic draft; sampled ones may repeat a token, and then any path spelling
    it will do for the cache (a node's keys and values depend only on its path's tokens)."""

    def extend(path: list[int]) -> list[int] | None:
        if len(path) == len(accepted):
            return path
        parent = path[-1] if path else -1
        for i in range(parent + 1, len(draft)):
            if draft.parent(i) == parent and draft.tokens[i] == accepted[len(path)]:
                found = extend([*path, i])
                if found is not None:
                    return found
        return None

    path = extend([])
    if path is None:
        raise AssertionError(f"the accepted tokens {list(accepted)} are not a path of the draft")
    return path


def keep_path(cache: Any, start: int, positions: Sequence[int]) -> bool:
    """Move the cache entries at ``positions`` (increasing, all >= ``start``) to ``start``,
    ``start + 1``, ...: a tree's accepted path after the committed tokens. False, with
    nothing changed, for a cache whose layers are not plain key/value tensors."""
    layers = getattr(cache, "layers", None)
    if not layers or not all(isinstance(getattr(layer, "keys", None), torch.Tensor)
                             and isinstance(getattr(layer, "values", None), torch.Tensor) for layer in layers):
        return False
    if not positions:
        return True
    n = len(positions)
    for layer in layers:
        index = torch.tensor(positions, dtype=torch.long, device=layer.keys.device)
        layer.keys[..., start : start + n, :] = layer.keys.index_select(-2, index)
        layer.values[..., start : start + n, :] = layer.values.index_select(-2, index)
    return True


def tree_attention(
    cached: int, committed: int, parents: Sequence[int] | None, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The 4D additive attention mask and position ids of one forward over ``committed``
    new tokens (causal) followed by a token tree (each node sees the cache, the
    committed tokens, its ancestors and itself), after ``cached`` cached positions."""
    parents = list(parents or ())
    n = committed + len(parents)
    allowed = torch.zeros(n, cached + n, dtype=torch.bool)
    allowed[:, :cached] = True
    allowed[:committed, cached : cached + committed] = torch.ones(committed, committed, dtype=torch.bool).tril()
    allowed[committed:, cached : cached + committed] = True
    depth: list[int] = []
    for i, parent in enumerate(parents):
        row = committed + i
        if parent >= 0:
            allowed[row, cached + committed :] = allowed[committed + parent, cached + committed :]
        allowed[row, cached + row] = True
        depth.append(1 + (depth[parent] if parent >= 0 else 0))
    positions = [cached + j for j in range(committed)] + [cached + committed - 1 + d for d in depth]
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None].to(device), torch.tensor([positions], dtype=torch.long, device=device)


def _verify(
    pipeline: Pipeline,
    logits: torch.Tensor,
    draft: Draft,
    greedy: bool,
    generator: torch.Generator | None,
    eos_ids: frozenset[int],
) -> list[int]:
    """Accepted draft tokens + one, with the pipeline advanced past all of them."""
    if draft.q is None or greedy:

        def draw(i: int) -> int:
            token = pipeline.choose(logits[i], generator=generator, greedy=greedy)
            if not pipeline.advance(token):  # cannot happen with an exact mask
                raise AssertionError(f"the pipeline chose token {token} and then rejected it")
            return token

        return verify_deterministic(draft.tokens, draw, stop=eos_ids, parents=draft.parents)

    if draft.is_tree:
        advanced = 0

        def target(i: int) -> torch.Tensor:  # called along the accepted path: 0, then 1 + each accepted node
            nonlocal advanced
            if i > 0:
                if not pipeline.advance(draft.tokens[i - 1]):
                    raise AssertionError(f"the verifier accepted token {draft.tokens[i - 1]}, which the pipeline rejects")
                advanced += 1
            return pipeline.distribution(logits[i])

        emitted = verify_stochastic_tree(draft.tokens, draft.parents or [], draft.q, target,
                                         generator=generator, stop=eos_ids)
        pending = emitted[advanced:]
    else:
        scores = pipeline.process_positions(logits, draft.tokens)
        probs = torch.softmax(scores.float(), dim=-1)
        emitted = pending = verify_stochastic(probs, draft.tokens, draft.q, generator=generator, stop=eos_ids)
    for token in pending:
        if not pipeline.advance(token):
            raise AssertionError(f"the verifier emitted token {token}, which the pipeline rejects")
    return emitted
