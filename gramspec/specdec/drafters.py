"""Drafters: cheap guesses of the next tokens, verified losslessly by the decode loop.

A drafter proposes up to ``k`` tokens after the current context
(:meth:`Drafter.propose`) and may learn from what the target did
(:meth:`Drafter.observe`). A draft is *deterministic* (no ``q``: the tokens
are a function of the context) or *stochastic* (``q[i]`` is the distribution
``tokens[i]`` was sampled from). Either may be a token tree; in a stochastic
tree the siblings are sampled candidates (:class:`DraftModel` with
``branching``). Drafts are restricted to the grammar: every
drafter stops at the first token the matcher rejects, and the draft model
samples from its masked distribution, so ``q`` is zero outside the grammar.

Each position also carries a ``confidence``, the drafter's estimate of the
chance that the target accepts it; the adaptive draft length reads it.

Drafters are registered by name (:func:`register_drafter`); names joined with
``+`` make a :class:`Chain` that asks each source in turn (``"grammar+ngram"``:
the tokens the grammar forces, then prompt lookup from there).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np
import torch

from gramspec.grammars.compiled import Matcher, mask_words
from gramspec.plugins.mask import apply_token_bitmask


@dataclass
class Draft:
    """Proposed tokens; ``q`` (``(len(tokens), V)`` probabilities) only for stochastic drafts.

    ``q[i]`` is the law ``tokens[i]`` was drawn from, given its path and, in a tree,
    its earlier siblings: the draft's distribution at the parent for i.i.d. siblings
    (SpecInfer), that distribution with the earlier siblings removed and renormalized
    for siblings drawn without replacement (RSD); a one-hot row for a deterministic
    token. The verifier needs nothing else to know which rule applies.
    """

    tokens: list[int] = field(default_factory=list)
    q: torch.Tensor | None = None
    #: Estimated chance that the target accepts each token once its parent was
    #: accepted (for the adaptive draft length).
    confidence: list[float] = field(default_factory=list)
    #: A token tree: ``parents[i]`` is the index of token ``i``'s parent in ``tokens``
    #: (always below ``i``), -1 for a child of the last committed token; siblings are
    #: tried in index order. Deterministic siblings are distinct tokens; sampled ones
    #: (with ``q``) may repeat when drawn i.i.d. None: a chain (token ``i``'s parent is ``i - 1``).
    parents: list[int] | None = None

    def __post_init__(self) -> None:
        parents = self.parents
        if parents is not None and (len(parents) != len(self.tokens) or any(not -1 <= p < i for i, p in enumerate(parents))):
            raise ValueError(f"tree parents {parents} do not fit {len(self.tokens)} tokens in topological order")
        if self.q is not None and (self.q.ndim != 2 or self.q.shape[0] != len(self.tokens)):
            raise ValueError(f"q must have one row per token ({len(self.tokens)}), not shape {tuple(self.q.shape)}")

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def is_tree(self) -> bool:
        return self.parents is not None and any(p != i - 1 for i, p in enumerate(self.parents))

    def parent(self, i: int) -> int:
        return i - 1 if self.parents is None else self.parents[i]

    def truncate(self, n: int) -> Draft:
        """The first ``n`` tokens (for a tree, a subtree: parents come first)."""
        q = None if self.q is None else self.q[:n]
        parents = None if self.parents is None else self.parents[:n]
        return Draft(self.tokens[:n], q, self.confidence[:n], parents)

    def survival(self) -> list[float]:
        """Each token's predicted chance of being accepted: the product of the
        confidences on its path."""
        out: list[float] = []
        for i, confidence in enumerate(self.confidence):
            parent = self.parent(i)
            out.append(confidence * (out[parent] if parent >= 0 else 1.0))
        return out


@dataclass
class DraftContext:
    """What a drafter sees: the whole sequence so far and the grammar state.

    ``matcher`` is the live matcher of the constraint (None when unconstrained):
    a drafter may advance it but must roll it back before returning.
    """

    tokens: Sequence[int]  # prompt + generated tokens
    prompt_length: int
    matcher: Matcher | None
    greedy: bool
    temperature: float = 1.0
    eos_ids: frozenset[int] = frozenset()
    generator: torch.Generator | None = None
    #: Drafters that pay per drafted token may stop once the product of their
    #: confidences falls below this (the adaptive draft length would cut there).
    min_survival: float = 0.0


class Drafter:
    """Base class. Subclasses implement :meth:`propose`; learning drafters also :meth:`observe`."""

    name = "drafter"
    #: Whether :meth:`observe` wants the target's logits at every verified position.
    wants_logits = False

    def reset(self, prompt: Sequence[int]) -> None:
        """A new generation starts after ``prompt``."""

    def propose(self, context: DraftContext, k: int) -> Draft:
        raise NotImplementedError

    def observe(self, inputs: Sequence[int], logits: torch.Tensor | None, accepted: int,
                path: Sequence[int] | None = None) -> None:
        """After one verification: the target read ``inputs`` (the last committed token, then
        the draft) and produced ``logits`` (one row per input, when :attr:`wants_logits`);
        ``accepted`` draft tokens were accepted: the first ones of a chain, for a tree
        the nodes ``path`` (indices into the draft, root first; None for a chain)."""

    def __repr__(self) -> str:
        return type(self).__name__ + "()"


class AcceptanceRate:
    """Online estimates of how often a drafted token is accepted, by depth in the draft:
    ``rate[i]`` is the chance that token ``i`` is accepted once tokens ``0..i-1`` were.

    Acceptance comes in runs (a lookup that matches tends to match on), so later
    depths accept more readily than the first: their prior is ``run_prior``
    (default: ``prior``). The product of the rates predicts a draft's survival.
    Estimates are exponential moving averages, and each proposal relaxes them a
    little toward their priors, so a drafter whose drafts stopped being verified
    (the goodput rule found them not worth it) is tried again.
    """

    def __init__(self, prior: float = 0.5, decay: float = 0.9, relax: float = 0.02, depth: int = 16,
                 run_prior: float | None = None) -> None:
        self.priors = [prior] + [prior if run_prior is None else run_prior] * (depth - 1)
        self.rates = list(self.priors)
        self.decay = decay
        self.relax = relax

    def update(self, drafted: int, accepted: int) -> None:
        for i in range(min(drafted, accepted + 1, len(self.rates))):  # the depths this draft tested
            hit = 1.0 if i < accepted else 0.0
            self.rates[i] = self.decay * self.rates[i] + (1 - self.decay) * hit

    def current(self, n: int) -> list[float]:
        """Confidences for a new proposal of ``n`` tokens (relaxed toward the prior)."""
        self.rates = [r + self.relax * (p - r) for r, p in zip(self.rates, self.priors)]
        return [self.rates[min(i, len(self.rates) - 1)] for i in range(n)]


def walk_allowed(matcher: Matcher | None, tokens: Sequence[int], eos_ids: frozenset[int] = frozenset()) -> int:
    """How many of ``tokens`` the matcher takes in a row (the matcher is left as found).

    Without a matcher every token counts, up to and including the first EOS.
    """
    n = 0
    for token in tokens:
        if matcher is not None and not matcher.advance(token):
            break
        n += 1
        if token in eos_ids:
            break
    if matcher is not None:
        matcher.rollback(n)
    return n


class GrammarForced(Drafter):
    """What the grammar leaves no or little choice about: a lossless jump-forward.

    The spine of the draft is the forced text (JSON keys, punctuation) split by longest
    match (:meth:`~gramspec.grammars.compiled.Matcher.forced_tokens`). Around it, a
    token tree holds what the model may do instead:

    * where the forced text ends in a choice among few continuations (at most
      ``width`` bytes at each step, at most ``branches`` strings in all, up to
      ``max_bytes``: the next key, ``,`` or ``}``, an enum value), each of them;
    * other splits of the same text: the model often ends a token earlier than the
      longest match (``{`` then ``"name``, where the longest match is ``{"``; ``":``
      then ``"2``, where it is ``":"``), so the first and the last token of each path
      also get their longest shorter prefix, the rest of the text split after it.

    A node's confidence is the spine's acceptance rate at its depth (learned online)
    times a prior for the path: ``1 / n`` at a choice among ``n`` bytes, 0.3 for
    another split. The drafter reads the grammar only, so its trees are cached per
    grammar state. ``branches=0`` drafts the spine alone.
    """

    name = "grammar"
    #: prior of a path that splits the text otherwise than by longest match
    SPLIT_PRIOR = 0.3

    def __init__(self, branches: int = 8, width: int = 8, max_bytes: int = 64) -> None:
        if branches < 0 or width < 1 or max_bytes < 1:
            raise ValueError(f"need branches >= 0, width >= 1 and max_bytes >= 1, not {branches}, {width}, {max_bytes}")
        self.branches, self.width, self.max_bytes = branches, width, max_bytes
        self.rate = AcceptanceRate(prior=0.9)
        self._paths: dict[tuple[Any, Any], list[tuple[list[int], list[float]]]] = {}

    def propose(self, context: DraftContext, k: int) -> Draft:
        matcher = context.matcher
        if matcher is None or k <= 0 or matcher.is_terminated():
            return Draft()
        spine = matcher.forced_tokens()[:k]
        if not self.branches:
            return Draft(spine, None, self.rate.current(len(spine)))
        key = (matcher.grammar, matcher.state)
        paths = self._paths.get(key)
        if paths is None:
            if len(self._paths) >= 4096:
                self._paths.clear()
            paths = self._paths[key] = self._tree_paths(matcher)
        rates = self.rate.current(max([len(spine), *(len(p) for p, _ in paths)]))
        tree = TreeBuilder()
        line = tree.add(-1, spine, _running_product(rates[: len(spine)]))
        for tokens, priors in paths:
            tree.add(-1, tokens, [prior * r for prior, r in zip(priors, _running_product(rates[: len(tokens)]))])
        return tree.draft(k, first=line)

    def _tree_paths(self, matcher: Matcher) -> list[tuple[list[int], list[float]]]:
        """Token paths around the spine, each token with its path prior (see the class doc)."""
        grammar, state = matcher.grammar, matcher.state
        forced = matcher.forced_bytes()
        after = grammar.walk(state, forced) if forced else state
        texts: list[tuple[bytes, float]] = [(forced, 1.0)] if forced else []
        if after is not None:
            texts += [(forced + tail, prior) for tail, prior in self._choices(grammar, after)]
        out: list[tuple[list[int], list[float]]] = []
        for text, prior in texts:
            split = grammar.segment(state, text)
            if not split:
                continue
            out.append(self._with_priors(grammar, split, len(forced), prior))
            for j in {0, max(0, len(split) - 1)}:  # the first and the last token split earlier
                token, before = split[j][0], split[j - 1][1] if j else state
                data = grammar.vocab.token_bytes[token]
                start = sum(len(grammar.vocab.token_bytes[t]) for t, _ in split[:j])
                shorter = next((u for n in range(len(data) - 1, 0, -1)
                                if (u := grammar.tokens.by_bytes.get(data[:n])) is not None
                                and grammar.walk_token(before, u) is not None), None)
                if shorter is None:
                    continue
                rest = grammar.segment(grammar.walk_token(before, shorter), text[start + len(grammar.vocab.token_bytes[shorter]):])  # type: ignore[arg-type]
                tokens, priors = self._with_priors(grammar, [*split[:j], (shorter, before), *rest], len(forced), prior)
                out.append((tokens, [p * (self.SPLIT_PRIOR if i >= j else 1.0) for i, p in enumerate(priors)]))
        return out

    @staticmethod
    def _with_priors(grammar: Any, split: list[tuple[int, Any]], forced: int, prior: float) -> tuple[list[int], list[float]]:
        """A path's tokens, with prior 1 for those inside the forced text and ``prior`` after."""
        tokens, priors, end = [], [], 0
        for token, _ in split:
            end += len(grammar.vocab.token_bytes[token])
            tokens.append(token)
            priors.append(1.0 if end <= forced else prior)
        return tokens, priors

    def _choices(self, grammar: Any, state: Any) -> list[tuple[bytes, float]]:
        """The strings the grammar allows from ``state`` while each step offers at most
        ``width`` bytes (at most ``branches`` strings, ``max_bytes`` long), each with
        the product of ``1 / options`` along it. A string stops where more bytes are
        allowed (a free value starts) or none (the end)."""
        out: list[tuple[bytes, float]] = []
        queue: list[tuple[bytes, Any, float]] = [(b"", state, 1.0)]
        while queue:
            text, current, prior = queue.pop(0)
            options = grammar.next_bytes(current)
            if (not options or len(options) > self.width or len(text) >= self.max_bytes
                    or len(out) + len(queue) + len(options) > self.branches):
                if text:
                    out.append((text, prior))
                continue
            queue += [(text + bytes((b,)), nxt, prior / len(options)) for b, nxt in options]
        return out

    def observe(self, inputs: Sequence[int], logits: torch.Tensor | None, accepted: int,
                path: Sequence[int] | None = None) -> None:
        # the rates are the spine's: its nodes come first, so a path that leaves it ends the count
        on_spine = accepted if path is None else next((i for i, node in enumerate(path) if node != i), len(path))
        self.rate.update(len(inputs) - 1, on_spine)


def _running_product(values: Sequence[float]) -> list[float]:
    out, product = [], 1.0
    for v in values:
        product *= v
        out.append(product)
    return out


class TreeBuilder:
    """Deterministic token paths merged into one tree (siblings are distinct tokens),
    each node with its survival: its predicted chance of acceptance, the highest of the
    paths through it (a path's survivals must not increase along it)."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.survival: list[float] = []
        self._child: dict[tuple[int, int], int] = {}
        self.place: dict[int, int] = {}

    def add(self, parent: int, tokens: Sequence[int], survival: Sequence[float]) -> list[int]:
        """Hang the path ``tokens`` under node ``parent`` (-1: the root); its nodes."""
        nodes = []
        for token, value in zip(tokens, survival):
            node = self._child.get((parent, token))
            if node is None:
                node = self._child[(parent, token)] = len(self.tokens)
                self.tokens.append(token)
                self.parents.append(parent)
                self.survival.append(value)
            else:
                self.survival[node] = max(self.survival[node], value)
            nodes.append(node)
            parent = node
        return nodes

    def graft(self, parent: int, draft: Draft, scale: float | None = None) -> list[int]:
        """Hang a deterministic ``draft`` under node ``parent``, its survivals times
        ``scale`` (default: the parent's survival); its nodes, in its order."""
        if scale is None:
            scale = self.survival[parent] if parent >= 0 else 1.0
        nodes: list[int] = []
        for i, (token, value) in enumerate(zip(draft.tokens, draft.survival())):
            above = draft.parent(i)
            nodes += self.add(parent if above < 0 else nodes[above], [token], [scale * value])
        return nodes

    def draft(self, k: int, first: Sequence[int] = ()) -> Draft:
        """The ``k`` nodes most likely accepted, best first (a node's parent comes before
        it), with confidences ``survival / survival of the parent``; the nodes ``first``
        (a chain from the root) are kept first, in order. :attr:`place` maps the nodes
        kept to their index in the draft."""
        chosen = set(first)
        order = list(first) + sorted((i for i in range(len(self.tokens)) if i not in chosen),
                                     key=lambda i: (-self.survival[i], i))
        place: dict[int, int] = {}
        self.place = place
        tokens: list[int] = []
        parents: list[int] = []
        confidence: list[float] = []
        for node in order:
            if len(tokens) >= k:
                break
            parent = self.parents[node]
            if parent >= 0 and parent not in place:
                continue  # its parent was cut
            tokens.append(self.tokens[node])
            parents.append(place[parent] if parent >= 0 else -1)
            above = self.survival[parent] if parent >= 0 else 1.0
            confidence.append(min(1.0, self.survival[node] / above) if above > 0 else 0.0)
            place[node] = len(tokens) - 1
        chain = all(p == i - 1 for i, p in enumerate(parents))
        return Draft(tokens, None, confidence, None if chain else parents)


class PromptLookup(Drafter):
    """n-gram lookup in the context: find the latest earlier occurrence of the last
    ``n`` tokens (``n`` from ``max_ngram`` down to ``min_ngram``) and propose what followed it.

    The copy may run into its own output, as an LZ77 match does: when the match lies
    ``p`` tokens back, the draft repeats the last ``p`` tokens for as long as ``k``
    allows (a list of repeated items, a loop), not just up to the context's end.

    Acceptance is estimated per match length: a match of the last three tokens
    predicts far better than one of the last token alone, so the adaptive draft
    length keeps the first and often drops the second.
    """

    name = "ngram"

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram} and {max_ngram}")
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram
        self.rates = {n: AcceptanceRate(run_prior=0.8) for n in range(min_ngram, max_ngram + 1)}
        self._matched = min_ngram  # the match length of the last proposal

    def propose(self, context: DraftContext, k: int) -> Draft:
        if k <= 0:
            return Draft()
        tokens = np.asarray(context.tokens, dtype=np.int64)
        length = len(tokens)
        for n in range(min(self.max_ngram, length - 1), self.min_ngram - 1, -1):
            tail = tokens[length - n :]
            # windows ending before the tail itself, newest first
            windows = np.lib.stride_tricks.sliding_window_view(tokens[: length - 1], n)
            hits = np.flatnonzero((windows == tail).all(axis=1))
            for start in hits[::-1]:
                period = length - n - int(start)  # how far back the match lies (>= 1)
                follow = tokens[length - period + np.arange(k) % period].tolist()
                take = walk_allowed(context.matcher, follow, context.eos_ids)
                if take:
                    self._matched = n
                    return Draft(follow[:take], None, self.rates[n].current(take))
        return Draft()

    def observe(self, inputs: Sequence[int], logits: torch.Tensor | None, accepted: int,
                path: Sequence[int] | None = None) -> None:
        self.rates[self._matched].update(len(inputs) - 1, accepted)


class TokenRecycling(Drafter):
    """Token Recycling (Luo et al. 2024, "Turning Trash into Treasure"): an adjacency
    matrix ``M`` keeps, for every token, the top-``k`` successors the target predicted
    the last time it read that token; drafts follow ``M`` from the last token.

    Every verification forward refreshes ``M`` for every token it read, so candidate
    tokens the target computed but did not emit are recycled as future drafts.

    The draft is a token tree grown best-first: a node's children are its token's
    successors in ``M`` (those the grammar allows on that path), and the next node
    added is the candidate with the highest predicted survival, the product along
    its path of acceptance rates estimated online per (depth, rank among siblings).
    ``max_children=1`` drafts a chain along the top-1 successors.
    """

    name = "recycling"
    wants_logits = True

    def __init__(self, vocab_size: int | None = None, top_k: int = 8, max_children: int | None = None) -> None:
        max_children = min(4, top_k) if max_children is None else max_children
        if not 1 <= max_children <= top_k:
            raise ValueError(f"max_children must be in 1..top_k ({top_k}), not {max_children}")
        self.top_k, self.max_children = top_k, max_children
        self.M: torch.Tensor | None = None if vocab_size is None else self._empty(vocab_size)
        #: acceptance estimates per (depth, rank): rank-r child accepted once its parent was
        self.rates = [[0.5 * 0.5**r for r in range(max_children)] for _ in range(16)]
        #: (sequence length, its last tokens, draft, ranks): the last tree, to learn from
        self._last: tuple[int, list[int], Draft, list[int]] | None = None
        self._verified = 0

    def _empty(self, vocab_size: int) -> torch.Tensor:
        return torch.full((vocab_size, self.top_k), -1, dtype=torch.long)

    def _rate(self, depth: int, rank: int) -> float:
        return self.rates[min(depth, len(self.rates) - 1)][rank]

    def propose(self, context: DraftContext, k: int) -> Draft:
        self._learn(context.tokens)
        if self.M is None or not context.tokens or k < 1:
            return Draft()
        import heapq

        M, matcher, eos = self.M, context.matcher, context.eos_ids
        tokens: list[int] = []
        parents: list[int] = []
        confidence: list[float] = []
        ranks: list[int] = []
        paths: list[list[int]] = []
        candidates: list[tuple[float, int, int, int, int]] = []  # (-survival, order, parent, token, rank)
        counter = 0

        def expand(node: int, token: int, survival: float, depth: int) -> None:
            nonlocal counter
            if token in eos or not 0 <= token < M.shape[0]:
                return
            seen: set[int] = set()
            for child in M[token].tolist():
                if len(seen) >= self.max_children:
                    break
                if child < 0 or child in seen:
                    continue
                seen.add(child)
                rank = len(seen) - 1
                heapq.heappush(candidates, (-survival * self._rate(depth, rank), counter, node, child, rank))
                counter += 1

        expand(-1, int(context.tokens[-1]), 1.0, 0)
        while candidates and len(tokens) < k:
            neg, _, parent, token, rank = heapq.heappop(candidates)
            path = (paths[parent] if parent >= 0 else []) + [token]
            if walk_allowed(matcher, path, eos) < len(path):
                continue  # outside the grammar on this path
            depth = len(path) - 1
            tokens.append(token)
            parents.append(parent)
            confidence.append(self._rate(depth, rank))
            ranks.append(rank)
            paths.append(path)
            expand(len(tokens) - 1, token, -neg, depth + 1)
        draft = Draft(tokens, None, confidence, parents)
        self._last = (len(context.tokens), list(context.tokens[-8:]), draft, ranks)
        return draft

    def _learn(self, sequence: Sequence[int]) -> None:
        """Update the (depth, rank) estimates from the last tree's verified part and what
        followed it: the accepted path is the tree walked along the actual tokens."""
        if self._last is None:
            return
        start, before, draft, ranks = self._last
        self._last = None
        if list(sequence[max(0, start - len(before)) : start]) != before:
            return  # the draft was proposed after tokens that were not kept (a chain's rejected head)
        verified = min(self._verified, len(draft))
        node, depth = -1, 0
        for token in list(sequence[start:]):
            children = [i for i in range(verified) if draft.parent(i) == node]
            if not children:
                break
            hit = next((i for i in children if draft.tokens[i] == token), None)
            row = self.rates[min(depth, len(self.rates) - 1)]
            for i in children:
                r = ranks[i]
                row[r] = 0.9 * row[r] + 0.1 * (1.0 if i == hit else 0.0)
            if hit is None:
                break
            node, depth = hit, depth + 1

    def observe(self, inputs: Sequence[int], logits: torch.Tensor | None, accepted: int,
                path: Sequence[int] | None = None) -> None:
        self._verified = len(inputs) - 1
        if logits is None:
            return
        if self.M is None or self.M.shape[0] < logits.shape[-1]:
            self.M = self._empty(logits.shape[-1])
        # every row the target computed, rejected draft positions included: their
        # candidates are the "trash" this drafter recycles
        top = torch.topk(logits.float(), self.top_k, dim=-1).indices.cpu()
        self.M[torch.as_tensor(list(inputs), dtype=torch.long)] = top


class TrigramTable(Drafter):
    """Adaptive trigram tables after ADED (Liu et al. 2024, "Adaptive Draft-Verification
    for Efficient Large Language Model Decoding"): counts of the token that follows
    each pair of tokens, seeded from the prompt and updated from every accepted
    token and from the target's top prediction at each verified position, so the
    table adapts to the text being written. Drafts follow the most frequent successor
    (bigram counts when the pair was never seen)."""

    name = "trigram"
    wants_logits = True

    def __init__(self) -> None:
        self.trigrams: defaultdict[tuple[int, int], defaultdict[int, float]] = defaultdict(lambda: defaultdict(float))
        self.bigrams: defaultdict[int, defaultdict[int, float]] = defaultdict(lambda: defaultdict(float))
        self.rate = AcceptanceRate()
        self._context: list[int] = []  # the context of the last proposal
        self._counted = 0  # how much of this generation's context the tables have seen

    def reset(self, prompt: Sequence[int]) -> None:
        self._context = []
        self._counted = 0  # the tables themselves carry over: they adapt across generations

    def _add(self, prefix: Sequence[int], token: int, weight: float) -> None:
        if prefix:
            self.bigrams[prefix[-1]][token] += weight
        if len(prefix) >= 2:
            self.trigrams[(prefix[-2], prefix[-1])][token] += weight

    def _next(self, tokens: Sequence[int]) -> int | None:
        table = self.trigrams.get((tokens[-2], tokens[-1])) if len(tokens) >= 2 else None
        if not table:
            table = self.bigrams.get(tokens[-1])
        if not table:
            return None
        return max(table.items(), key=lambda item: item[1])[0]

    def propose(self, context: DraftContext, k: int) -> Draft:
        tokens = [int(t) for t in context.tokens]
        for end in range(max(self._counted, 1), len(tokens)):  # text written since the last call
            self._add(tokens[max(0, end - 2) : end], tokens[end], 1.0)
        self._counted = len(tokens)
        self._context = tokens
        if not tokens:
            return Draft()
        out: list[int] = []
        while len(out) < k:
            c = self._next(tokens[-2:] + out[-2:] if out else tokens[-2:])
            if c is None:
                break
            out.append(c)
        take = walk_allowed(context.matcher, out, context.eos_ids)
        return Draft(out[:take], None, self.rate.current(take))

    def observe(self, inputs: Sequence[int], logits: torch.Tensor | None, accepted: int,
                path: Sequence[int] | None = None) -> None:
        self.rate.update(len(inputs) - 1, accepted)
        if logits is None:
            return
        # the target's own predictions, weighted below observed text; row i follows context + draft[:i]
        predicted = torch.argmax(logits.float(), dim=-1).tolist()
        for i, token in enumerate(predicted):
            self._add(self._context[-2:] + [int(t) for t in inputs[1 : i + 1]], int(token), 0.5)


#: How a node's sampled children are drawn from the draft distribution ``q``: ``"iid"``
#: (with replacement, SpecInfer) or ``"without_replacement"`` (RSD).
SiblingSampling = Literal["iid", "without_replacement"]


def sibling_rows(q: torch.Tensor, drawn: Sequence[int], siblings: SiblingSampling) -> torch.Tensor:
    """The law each of the ``drawn`` siblings came from, given the earlier ones (``Draft.q``'s rows):
    ``q`` itself for i.i.d. draws; for draws without replacement, ``q`` with the earlier
    siblings removed and renormalized (Jeon et al. 2024, "Recursive Speculative Decoding")."""
    if siblings == "iid":
        return q.expand(len(drawn), -1).clone()
    rows: list[torch.Tensor] = []
    remaining = q.clone()
    for token in drawn:
        rows.append(remaining / remaining.sum())
        remaining[token] = 0
    return torch.stack(rows) if rows else q.new_zeros((0, q.shape[-1]))


def sample_siblings(
    q: torch.Tensor, n: int, siblings: SiblingSampling, generator: torch.Generator | None
) -> tuple[list[int], torch.Tensor]:
    """``n`` children drawn from ``q`` (fewer without replacement when ``q``'s support is
    smaller) and their rows for ``Draft.q``. Without replacement the draws are the
    Gumbel-Top-k trick RSD uses: the ``n`` largest ``log q + Gumbel noise``, in order,
    which is drawing one token at a time from ``q`` with the earlier ones removed."""
    q_cpu = q.detach().float().cpu()
    if siblings == "iid":
        drawn = [int(t) for t in torch.multinomial(q_cpu, n, replacement=True, generator=generator).tolist()]
    else:
        uniform = torch.rand(q_cpu.shape, generator=generator).clamp_(min=torch.finfo(torch.float32).tiny)
        keys = q_cpu.log() - torch.log(-torch.log(uniform))
        drawn = [int(t) for t in torch.topk(keys, min(n, int((q_cpu > 0).sum()))).indices.tolist()]
    return drawn, sibling_rows(q, drawn, siblings)


class DraftModel(Drafter):
    """A smaller causal LM with the same tokenizer drafts ``k`` tokens, masked by the grammar.

    Greedy decoding drafts its argmax (a deterministic draft); sampling drafts from
    its masked, temperature-scaled distribution and reports ``q`` (a stochastic
    draft). The drafter keeps its own KV cache and crops it to what it shares with
    the context.

    ``branching > 1`` drafts a token tree: each expanded node gets ``branching``
    children at once, sampled from its masked distribution (``siblings="iid"``:
    SpecInfer's i.i.d. candidates, Miao et al. 2024; ``"without_replacement"``: RSD's,
    Jeon et al. 2024, which never repeats a token), or, when greedy, its
    ``branching`` most likely tokens. Nodes are expanded best-first by the product of
    the draft's probabilities along their path, one draft forward per expanded node.
    A repeated i.i.d. sibling is kept (the verifier must see it: it moves the
    residual) but never expanded, since it is always rejected.
    """

    name = "model"

    def __init__(self, model: Any, *, branching: int = 1, siblings: SiblingSampling = "without_replacement") -> None:
        if isinstance(branching, bool) or not isinstance(branching, int) or branching < 1:
            raise ValueError(f"branching must be an integer >= 1, not {branching!r}")
        if siblings not in get_args(SiblingSampling):
            raise ValueError(f"siblings must be one of {', '.join(get_args(SiblingSampling))}, not {siblings!r}")
        self.model = model
        self.branching = branching
        self.siblings: SiblingSampling = siblings
        self._cache: Any = None
        self._cached: list[int] = []  # tokens whose keys/values are in the cache

    def reset(self, prompt: Sequence[int]) -> None:
        self._cache = None
        self._cached = []

    def _logits_after(self, tokens: Sequence[int]) -> torch.Tensor:
        """Next-token logits after ``tokens``, reusing the cache for the shared prefix."""
        shared = 0
        limit = min(len(self._cached), len(tokens) - 1)
        while shared < limit and self._cached[shared] == tokens[shared]:
            shared += 1
        if self._cache is not None and shared < len(self._cached):
            crop_cache(self._cache, shared)
            del self._cached[shared:]
        if self._cache is None:
            self._cache = self._new_cache()
        device = next(self.model.parameters()).device
        feed = torch.tensor([list(tokens[shared:])], dtype=torch.long, device=device)
        logits, self._cache = cached_forward(self.model, feed, self._cache, last=1)
        self._cached.extend(int(t) for t in tokens[shared:])
        return logits[0, -1].float()

    def _new_cache(self) -> Any:
        """A fresh KV cache for the draft model (None: the model makes its own)."""
        return None

    def _masked_logits(self, context: DraftContext, path: Sequence[int]) -> torch.Tensor:
        """The draft's logits after the context and ``path``, masked by the grammar there."""
        logits = self._logits_after([int(t) for t in context.tokens] + list(path))
        matcher = context.matcher
        if matcher is None:
            return logits
        taken = matcher.advance_many(path) if path else 0
        try:
            if taken != len(path):
                raise AssertionError(f"draft path {list(path)} passed the mask but the matcher rejected it")
            bitmask = np.zeros(mask_words(matcher.grammar.vocab.size), dtype=np.int32)
            matcher.fill_mask(bitmask)
        finally:
            if taken:
                matcher.rollback(taken)
        return apply_token_bitmask(logits, bitmask)

    def propose(self, context: DraftContext, k: int) -> Draft:
        if self.branching > 1:
            return self._propose_tree(context, k)
        return self._propose_chain(context, k)

    def _propose_chain(self, context: DraftContext, k: int) -> Draft:
        tokens = [int(t) for t in context.tokens]
        matcher = context.matcher
        drafted: list[int] = []
        q_rows: list[torch.Tensor] = []
        confidence: list[float] = []
        survival = 1.0
        words = None if matcher is None else mask_words(matcher.grammar.vocab.size)
        try:
            with torch.inference_mode():
                while len(drafted) < k:
                    logits = self._logits_after(tokens + drafted)
                    if matcher is not None:
                        bitmask = np.zeros(words, dtype=np.int32)  # type: ignore[arg-type]
                        matcher.fill_mask(bitmask)
                        logits = apply_token_bitmask(logits, bitmask)
                    if not bool(torch.isfinite(logits).any()):
                        break
                    if context.greedy:
                        probs = torch.softmax(logits, dim=-1)
                        token = int(torch.argmax(logits))
                    else:
                        probs = torch.softmax(logits / max(context.temperature, 1e-6), dim=-1)
                        token = int(torch.multinomial(probs.cpu(), 1, generator=context.generator))
                        q_rows.append(probs)
                    confidence.append(float(probs[token]))
                    drafted.append(token)
                    survival *= confidence[-1]
                    if matcher is not None and not matcher.advance(token):
                        raise AssertionError(f"draft token {token} passed the mask but the matcher rejected it")
                    if token in context.eos_ids or survival < context.min_survival:
                        break
        finally:
            if matcher is not None and drafted:
                matcher.rollback(len(drafted))
        q = torch.stack(q_rows) if q_rows else None
        return Draft(drafted, q, confidence)

    def _propose_tree(self, context: DraftContext, k: int) -> Draft:
        """A tree grown best-first; all of a node's children are added when it is expanded,
        so which siblings the draft holds never depends on the tokens drawn for them."""
        import heapq

        tokens: list[int] = []
        parents: list[int] = []
        rows: list[torch.Tensor] = []
        confidence: list[float] = []
        survival: list[float] = []
        paths: list[list[int]] = []
        frontier: list[tuple[float, int]] = [(-1.0, -1)]  # (-survival, node) still to expand; -1: the root
        with torch.inference_mode():
            while frontier and len(tokens) < k:
                neg, node = heapq.heappop(frontier)
                if node >= 0 and -neg < context.min_survival:
                    break  # every node left is less likely still
                path = paths[node] if node >= 0 else []
                logits = self._masked_logits(context, path)
                if not bool(torch.isfinite(logits).any()):
                    continue
                n = min(self.branching, k - len(tokens))
                if context.greedy:
                    probs = torch.softmax(logits, dim=-1)
                    top = torch.topk(probs, min(n, int((probs > 0).sum())))
                    drawn = [int(t) for t in top.indices.tolist()]
                else:
                    probs = torch.softmax(logits / max(context.temperature, 1e-6), dim=-1)
                    drawn, q_rows = sample_siblings(probs, n, self.siblings, context.generator)
                    rows.extend(q_rows.to(probs.device))
                seen: set[int] = set()
                for token in drawn:
                    repeated = token in seen
                    seen.add(token)
                    chance = 0.0 if repeated else float(probs[token])
                    tokens.append(token)
                    parents.append(node)
                    paths.append([*path, token])
                    confidence.append(chance)
                    survival.append(chance * (survival[node] if node >= 0 else 1.0))
                    if not repeated and token not in context.eos_ids:
                        heapq.heappush(frontier, (-survival[-1], len(tokens) - 1))
        q = torch.stack(rows) if rows else None
        return Draft(tokens, q, confidence, parents)

    def __repr__(self) -> str:
        options = f", branching={self.branching}, siblings={self.siblings!r}" if self.branching > 1 else ""
        return f"DraftModel({type(self.model).__name__}{options})"


class LayerSkip(DraftModel):
    """Self-speculation without training: the target itself, with some decoder layers
    skipped, drafts for the full target (the layer-skipping idea of SWIFT, Xia et al.
    2024, and Kangaroo, Liu et al. 2024, without their adapters or layer search).

    ``keep`` lists the decoder layers the draft runs (default: the first, the last and
    every other one between them). The draft shares the target's weights; only its KV
    cache is its own. Works with decoder-only models that keep their layers in
    ``model.model.layers`` (Llama, Mistral, Qwen2, Gemma, Phi-3 and similar).
    """

    name = "layerskip"

    def __init__(
        self,
        model: Any,
        keep: Sequence[int] | None = None,
        *,
        branching: int = 1,
        siblings: SiblingSampling = "without_replacement",
    ) -> None:
        base = getattr(model, "model", None)
        layers = getattr(base, "layers", None)
        if not isinstance(layers, torch.nn.ModuleList) or not len(layers):
            raise ValueError(f"layer skipping needs a model with its decoder layers in model.model.layers; "
                             f"{type(model).__name__} has none")
        n = len(layers)
        keep = sorted(set(range(0, n, 2)) | {n - 1}) if keep is None else sorted(set(keep))
        if not keep or keep[0] != 0 or keep[-1] >= n or keep[0] < 0:
            raise ValueError(f"keep must list layers of 0..{n - 1} and include layer 0 (the cache's length is read there)")
        self.keep = keep
        super().__init__(_shallow_copy(model, keep), branching=branching, siblings=siblings)

    def _new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache()  # grows per layer index, so the skipped layers' slots stay empty

    def __repr__(self) -> str:
        return f"LayerSkip(keep {len(self.keep)} layers)"


def _shallow_copy(model: Any, keep: Sequence[int]) -> Any:
    """``model`` running only the decoder layers in ``keep`` (weights shared, nothing copied)."""
    import copy

    draft = copy.copy(model)
    draft._modules = dict(model._modules)
    base = copy.copy(model.model)
    base._modules = dict(model.model._modules)
    base._modules["layers"] = torch.nn.ModuleList([model.model.layers[i] for i in keep])
    config = copy.copy(model.config)
    config.num_hidden_layers = len(keep)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[i] for i in keep]
    base.config = config
    draft.config = config
    draft._modules["model"] = base
    return draft


class Chain(Drafter):
    """Several drafters in turn: each continues the draft where the previous one stopped.

    A deterministic tree part is merged in whole (siblings stay distinct tokens) and
    the next source continues after its first chain (nodes 0, 1, ... while each is
    the previous one's child: :class:`GrammarForced`'s spine). The result holds the
    ``k`` nodes with the best predicted survival, the sources' chains first.
    Deterministic sources only after the first stochastic one would mix laws, so a
    stochastic draft (one with ``q``) ends the chain, hung after the chains so far.
    """

    def __init__(self, drafters: Sequence[Drafter]) -> None:
        if not drafters:
            raise ValueError("a chain needs at least one drafter")
        self.drafters = tuple(drafters)
        self.name = "+".join(d.name for d in self.drafters)
        self.wants_logits = any(d.wants_logits for d in self.drafters)
        #: per source of the last draft: the draft index it hung from (-1: the root) and
        #: the indices of its chain's nodes
        self._parts: list[tuple[int, list[int]]] = []

    def reset(self, prompt: Sequence[int]) -> None:
        for drafter in self.drafters:
            drafter.reset(prompt)

    def propose(self, context: DraftContext, k: int) -> Draft:
        tree = TreeBuilder()
        line: list[int] = []  # the sources' chains, one after the other, as tree nodes
        parts: list[tuple[int, list[int]]] = []
        matcher = context.matcher
        advanced = 0
        try:
            for drafter in self.drafters:
                anchor = line[-1] if line else -1
                tokens = [tree.tokens[node] for node in line]
                if len(line) >= k or (tokens and tokens[-1] in context.eos_ids):
                    parts.append((anchor, []))
                    continue
                sub = dataclasses.replace(context, tokens=list(context.tokens) + tokens)
                part = drafter.propose(sub, k - len(line))
                if part.q is not None:  # stochastic: hung after the chains, other branches dropped
                    head = tree.draft(len(line), first=line)
                    self._parts = [(a if a < 0 else line.index(a), [line.index(n) for n in nodes]) for a, nodes in parts]
                    self._parts.append((len(line) - 1, [len(line) + i for i in range(_chain_length(part))]))
                    return _continue(head, part)
                nodes = tree.graft(anchor, part)
                chain = nodes[: _chain_length(part)]
                parts.append((anchor, chain))
                line += chain
                if matcher is not None:
                    for node in chain:
                        if not matcher.advance(tree.tokens[node]):
                            raise AssertionError(f"drafter {drafter!r} proposed token {tree.tokens[node]} outside the grammar")
                        advanced += 1
            draft = tree.draft(k, first=line)
            self._parts = [(tree.place.get(a, -2) if a >= 0 else -1, [tree.place[n] for n in nodes if n in tree.place])
                           for a, nodes in parts]
            return draft
        finally:
            if matcher is not None and advanced:
                matcher.rollback(advanced)

    def observe(self, inputs: Sequence[int], logits: torch.Tensor | None, accepted: int,
                path: Sequence[int] | None = None) -> None:
        # each source is told about its own chain, as a chain: the token it hung from, then its nodes
        taken = set(range(accepted) if path is None else path)
        size = len(inputs) - 1  # the draft may have been cut after it was proposed
        for drafter, (anchor, nodes) in zip(self.drafters, self._parts):
            if anchor < -1 or anchor >= size:
                continue  # hung from a node that was cut: never verified
            nodes = [node for node in nodes if node < size]
            reached = anchor == -1 or anchor in taken  # the verifier got to this source's first token
            rows_at = [anchor + 1] + ([i + 1 for i in nodes] if reached else [])  # unreached: not tested
            hits = next((i for i, node in enumerate(nodes) if node not in taken), len(nodes)) if reached else 0
            if (nodes and reached) or drafter.wants_logits:
                rows = None if logits is None else logits[rows_at]
                drafter.observe([inputs[i] for i in rows_at], rows, hits)

    def __repr__(self) -> str:
        return f"Chain({', '.join(map(repr, self.drafters))})"


def _chain_length(draft: Draft) -> int:
    """How many of ``draft``'s first nodes form a chain from the root."""
    n = 0
    while n < len(draft) and draft.parent(n) == n - 1:
        n += 1
    return n


def _continue(head: Draft, tail: Draft) -> Draft:
    """``tail`` drafted after the deterministic chain ``head``: one-hot ``q`` rows for the
    head's tokens when the tail is stochastic, the tail's roots hung off the head's end."""
    n = len(head)
    q = tail.q
    if q is not None and n:
        q = torch.cat([torch.nn.functional.one_hot(torch.tensor(head.tokens), q.shape[-1]).to(q), q])
    parents = None
    if tail.parents is not None:
        parents = list(range(-1, n - 1)) + [n - 1 if p < 0 else p + n for p in tail.parents]
    return Draft(head.tokens + tail.tokens, q, head.confidence + tail.confidence, parents)


def cached_forward(
    model: Any,
    input_ids: torch.Tensor,
    cache: Any,
    *,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    last: int | None = None,
) -> tuple[torch.Tensor, Any]:
    """``model``'s logits for ``input_ids`` after what ``cache`` holds, and the cache after them.

    ``attention_mask`` (4D, additive) and ``position_ids`` serve tree attention.
    ``last``: only the last ``last`` rows of logits are needed (transformers'
    ``logits_to_keep``, where the model takes it: a long prompt's other rows cost
    a vocabulary-sized projection each). transformers 5 names the cache argument
    and output ``cache`` (``past_key_values`` is deprecated there); earlier versions
    and other causal LMs use ``past_key_values``.
    """
    extra: dict[str, Any] = {
        k: v for k, v in (("attention_mask", attention_mask), ("position_ids", position_ids)) if v is not None
    }
    if last is not None and _takes_keyword(type(model), "logits_to_keep"):
        extra["logits_to_keep"] = last
    if _takes_keyword(type(model), "cache"):
        out = model(input_ids=input_ids, cache=cache, use_cache=True, **extra)
        return out.logits, out.cache
    out = model(input_ids=input_ids, past_key_values=cache, use_cache=True, **extra)
    return out.logits, out.past_key_values


_KEYWORDS: dict[tuple[type, str], bool] = {}


def _takes_keyword(cls: type, name: str) -> bool:
    """Whether ``cls.forward`` has a parameter ``name`` (cached per class)."""
    key = (cls, name)
    if key not in _KEYWORDS:
        import inspect

        try:
            _KEYWORDS[key] = name in inspect.signature(cls.forward).parameters  # type: ignore[attr-defined]
        except (AttributeError, TypeError, ValueError):
            _KEYWORDS[key] = False
    return _KEYWORDS[key]


def crop_cache(cache: Any, length: int) -> None:
    """Keep the first ``length`` positions of a transformers KV cache."""
    current = cache.get_seq_length()
    if length >= current:
        return
    import inspect

    if "tokens_to_remove" in inspect.signature(cache.crop).parameters:
        cache.crop(length - current)  # transformers >= 5: a negative count to remove
    else:
        cache.crop(length)


# -- registry ---------------------------------------------------------------

DrafterFactory = Callable[..., Drafter]
_REGISTRY: dict[str, DrafterFactory] = {}


def register_drafter(name: str, factory: DrafterFactory) -> None:
    """Make ``factory(**options)`` available as ``drafter=name`` (names must not contain ``+``)."""
    if not name or "+" in name:
        raise ValueError(f"a drafter name must be non-empty and without '+', not {name!r}")
    _REGISTRY[name] = factory


def available_drafters() -> list[str]:
    return sorted(_REGISTRY)


def make_drafter(spec: str | Drafter, **options: Any) -> Drafter:
    """A drafter from a registered name, names joined by ``+``, or an instance (returned as is).

    ``options`` go to every factory that accepts them by name (``draft_model`` for ``"model"``).
    """
    if isinstance(spec, Drafter):
        return spec
    parts = [part.strip() for part in spec.split("+")]
    drafters: list[Drafter] = []
    for part in parts:
        factory = _REGISTRY.get(part)
        if factory is None:
            raise ValueError(f"unknown drafter {part!r}; available: {', '.join(available_drafters())}")
        import inspect

        accepted = inspect.signature(factory).parameters
        drafters.append(factory(**{k: v for k, v in options.items() if k in accepted}))
    return drafters[0] if len(drafters) == 1 else Chain(drafters)


def _layer_skip_factory(target_model: Any = None) -> Drafter:
    if target_model is None:
        raise ValueError("drafter 'layerskip' needs target_model=<the model being decoded>")
    return LayerSkip(target_model)


def _draft_model_factory(
    draft_model: Any = None, branching: int = 1, siblings: SiblingSampling = "without_replacement"
) -> Drafter:
    if draft_model is None:
        raise ValueError("drafter 'model' needs draft_model=<a causal LM with the target's tokenizer>")
    return DraftModel(draft_model, branching=branching, siblings=siblings)


def _draft_model_tree_factory(draft_model: Any = None, branching: int = 2,
                              siblings: SiblingSampling = "without_replacement") -> Drafter:
    if draft_model is None:
        raise ValueError("drafter 'model-tree' needs draft_model=<a causal LM with the target's tokenizer>")
    return DraftModel(draft_model, branching=branching, siblings=siblings)


register_drafter("grammar", GrammarForced)
register_drafter("ngram", PromptLookup)
register_drafter("recycling", TokenRecycling)
register_drafter("trigram", TrigramTable)
register_drafter("model", _draft_model_factory)
register_drafter("model-tree", _draft_model_tree_factory)
register_drafter("layerskip", _layer_skip_factory)
