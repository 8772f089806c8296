"""Grammar-aligned sampling: ASAp (Park et al. 2024) and CARS (Parys et al. 2025).

Masking samples from a distorted distribution: it renormalizes over the tokens
that *can* still lead to a grammatical string, ignoring how likely each one is
to get there. The aligned target is ``P(w | w in L(G)) ∝ P(w)·1[w in L(G)]``,
which per token is ``P(w_i | w_<i)·EFG(w_≤i)`` normalized, with ``EFG(u)``
the expected future grammaticality of the prefix ``u``.

**ASAp** (Adaptive Sampling with Approximate expected futures, Park, Wang,
Berg-Kirkpatrick, Polikarpova, D'Antoni, NeurIPS 2024) keeps a trie of the
prefixes of past samples. For a prefix ``u`` in the trie,
``EFG~(u) = sum_v P(v | u)·EFG~(uv)``: masked tokens count 0, a finished
string 1, and a next token never seen counts 1 (the mask's bound). Off the
trie the estimate is the mask's 0/1. The estimates only go down, toward the
truth, as samples accumulate; sampling uses ``P(v | u)·EFG~(uv)``.

**CARS** (constrained adaptive rejection sampling, Parys et al. 2025) uses the
same trie for an exact sampler: tokens are drawn from the model with the
probability mass already *known* to be dead removed; a token the grammar
rejects ends the attempt, the mass the grammar rules out at that prefix (the
whole mask there, computed once) is recorded as dead, and the attempt restarts.
Every accepted sample is exactly from ``P(· | L(G))``.

The trie is read frozen during a sample: updates are buffered and committed by
:meth:`finish` when the sample ends, so speculative verification (which
evaluates draft positions that may be rejected) never changes the
distribution it is verifying against. Tries live in an :class:`AlignedStore`
the caller holds, keyed by (prompt, constraint, model and sampling settings),
so independent requests never share estimates.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from gramspec.errors import GramspecError
from gramspec.grammars.compiled import CompiledGrammar, Matcher, mask_words
from gramspec.plugins.base import Plugin
from gramspec.plugins.mask import unpack_bitmask

#: How many processed positions keep their full scores (a rollback never goes further back).
_SCORES_KEPT = 256


class RejectedSample(GramspecError):
    """A CARS attempt drew a token the grammar rejects: the sample is discarded and retried."""


@dataclass
class Node:
    """One prefix in the trie."""

    #: ``log P(v | u)`` of the next tokens seen here, and their nodes
    children: dict[int, Node] = field(default_factory=dict)
    logp: dict[int, float] = field(default_factory=dict)
    #: ``sum of P(v | u)`` over the tokens the grammar allows here (None until visited)
    allowed: float | None = None
    #: the estimate ``EFG~(u)`` (1.0: nothing known yet)
    efg: float = 1.0
    #: CARS: an attempt failed here, so the grammar's mask here is known (and applied)
    masked: bool = False


class AlignedStore:
    """The tries of aligned sampling, one per key; hold one to let later calls reuse estimates.

    Memory policy: at most ``max_nodes`` nodes across all tries. Past the bound no
    node is added (estimates already in the trie keep improving along known
    prefixes; new prefixes fall back to the mask's bound, new keys start from an
    empty trie each time), and ``full`` says so.
    """

    def __init__(self, max_nodes: int = 1_000_000) -> None:
        if max_nodes < 1:
            raise ValueError(f"max_nodes must be at least 1, not {max_nodes}")
        self.max_nodes = max_nodes
        self.nodes = 0
        self._roots: dict[Hashable, Node] = {}

    @property
    def full(self) -> bool:
        return self.nodes >= self.max_nodes

    def root(self, key: Hashable) -> Node:
        """The trie for ``key`` (past the bound, a new key gets a trie that is not kept)."""
        found = self._roots.get(key)
        if found is None:
            found = Node()
            if not self.full:
                self._roots[key] = found
                self.nodes += 1
        return found

    def child(self, node: Node, token: int) -> Node | None:
        found = node.children.get(token)
        if found is None and not self.full:
            found = node.children[token] = Node()
            self.nodes += 1
        return found

    def __len__(self) -> int:
        return len(self._roots)


@dataclass
class _Position:
    """What the plugin saw at one prefix of the current sample (buffered until :meth:`finish`)."""

    log_z: float  # logsumexp of the incoming scores (the model's distribution)
    scores: torch.Tensor | None  # the incoming scores, kept while a rollback may come back here
    allowed: float  # the next-token mass not known to be dead here
    logp: dict[int, float] = field(default_factory=dict)  # log P(v | u) of the tokens taken here


class _TrieSampler(Plugin):
    """What ASAp and CARS share: the matcher, the frozen trie path, the buffered positions,
    the reweighting by known children's estimates and the bottom-up commit.

    ``node.allowed`` is the next-token mass not known to be dead at a node (ASAp, and CARS
    once an attempt failed there: the mass the grammar allows; CARS before that: 1) and
    ``node.efg = allowed - sum over known children c of P(c | u)·(1 - efg(c))`` (computed as the
    unexplored mass plus ``sum P(c | u)·efg(c)``, in float64, to keep small estimates accurate).
    Sampling weights next tokens by ``P(v | u)·efg(uv)``, so a sample path's
    normalizers telescope: that is what makes CARS exact and ASAp's estimates bounds.
    """

    def __init__(
        self, grammar: CompiledGrammar, store: AlignedStore | None = None, key: Hashable = None, *, learn: bool = True
    ) -> None:
        """``store``: where the tries live (a private one by default); ``key``: what, besides the
        prompt and the vocabulary, must match for two samples to share a trie (model, constraint,
        sampling settings); ``learn=False`` reads the trie without ever updating it."""
        self.grammar = grammar
        self.learn = learn
        self.matcher: Matcher = grammar.matcher()
        self.store = store if store is not None else AlignedStore()
        self.key = key
        self._words = mask_words(grammar.vocab.size)
        self._root: Node = Node()
        self._nodes: list[Node | None] = [self._root]  # frozen-trie node of each position (None: off the trie)
        self._tokens: list[int] = []
        # what each prefix saw, keyed by a hash of the prefix: entries from draft positions a
        # verifier later rejects stay harmlessly unused, and accepted ones survive rollbacks
        self._prefix_keys: list[int] = [0]
        self._seen: dict[int, _Position] = {}
        self._window: deque[int] = deque()
        self._dead: tuple[int, float] | None = None  # CARS: (position, allowed mass) where an attempt failed

    def reset(self, prefix: Sequence[int] = ()) -> None:
        self.finish()
        prompt = tuple(int(t) for t in prefix)
        key = self.key if self.key is not None else id(self.grammar)
        self._root = self.store.root((key, self.grammar.vocab.fingerprint, prompt))
        self._nodes = [self._root]

    @property
    def position(self) -> int:
        return len(self._tokens)

    @property
    def node(self) -> Node | None:
        return self._nodes[-1]

    def _restrict(self, scores: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Scores with the tokens known to be dead here removed, and the live mass (subclasses)."""
        raise NotImplementedError

    def _masked(self, scores: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Scores with the tokens the grammar rules out here at ``-inf``, and the mass it allows."""
        bitmask = np.zeros(self._words, dtype=np.int32)
        self.matcher.fill_mask(bitmask)
        allowed = unpack_bitmask(torch.from_numpy(bitmask).to(scores.device), scores.shape[-1])
        out = scores.masked_fill(~allowed, -math.inf)
        live = float(torch.exp(torch.logsumexp(out.double(), -1) - torch.logsumexp(scores.double(), -1)))
        return out, live

    def process(self, scores: torch.Tensor) -> torch.Tensor:
        out, live = self._restrict(scores)
        log_z = float(torch.logsumexp(scores.double(), -1))
        self._seen[self._prefix_keys[-1]] = _Position(log_z, scores, live)
        self._window.append(self._prefix_keys[-1])
        while len(self._window) > _SCORES_KEPT:  # bounded memory: old positions' scores are dropped
            old = self._seen.get(self._window.popleft())
            if old is not None:
                old.scores = None
        node = self.node
        if node is not None and node.children:
            tokens = [t for t, child in node.children.items() if child.allowed is not None and t < out.shape[-1]]
            if tokens:
                efg = torch.tensor([node.children[t].efg for t in tokens], dtype=torch.float64, device=out.device)
                index = torch.tensor(tokens, dtype=torch.long, device=out.device)
                out = out.clone() if out is scores else out
                out[index] = out[index] + torch.log(efg).to(out.dtype)
        return out

    def _note_logp(self, token: int) -> None:
        seen = self._seen.get(self._prefix_keys[-1])
        if seen is not None and seen.scores is not None:
            seen.logp[int(token)] = float(seen.scores[token].double()) - seen.log_z

    def advance(self, token: int) -> bool:
        if not self.matcher.advance(token):
            return False
        self._note_logp(token)
        node = self.node
        self._nodes.append(None if node is None else node.children.get(token))
        self._tokens.append(int(token))
        self._prefix_keys.append(hash((self._prefix_keys[-1], int(token))))
        return True

    def rollback(self, n: int = 1) -> None:
        self.matcher.rollback(n)
        if n:
            del self._tokens[-n:]
            del self._nodes[-n:]
            del self._prefix_keys[-n:]

    def finish(self) -> None:
        """The sample ended: commit what it taught to the trie. Idempotent; :meth:`reset` calls it."""
        if self.learn and (self._tokens or self._seen):
            self._commit()
        self._tokens, self._seen, self._dead = [], {}, None
        self._window.clear()
        self._nodes, self._prefix_keys = [self._root], [0]
        self.matcher.reset()

    def _commit(self) -> None:
        path: list[Node] = [self._root]
        for token in self._tokens:
            child = self.store.child(path[-1], token)
            if child is None:  # the store is full
                break
            path.append(child)
        for i, node in enumerate(path):
            seen = self._seen.get(self._prefix_keys[i])
            if seen is None:
                continue
            node.logp.update(seen.logp)
            if self._dead is not None and self._dead[0] == i:
                node.masked, node.allowed = True, self._dead[1]
            elif not node.masked:
                node.allowed = seen.allowed
        terminated = self.matcher.is_terminated() and len(path) == len(self._tokens) + 1
        if terminated:  # the node after EOS: a finished string
            path[-1].allowed, path[-1].efg = 1.0, 1.0
        for node in reversed(path[:-1] if terminated else path):
            if node.allowed is None:
                continue
            known = [(math.exp(node.logp[t]), child.efg) for t, child in node.children.items()
                     if t in node.logp and child.allowed is not None]
            unexplored = max(0.0, node.allowed - sum(p for p, _ in known))  # children not seen: bound 1
            node.efg = min(1.0, unexplored + sum(p * efg for p, efg in known))

class ASAp(_TrieSampler):
    """Mask plus ASAp reweighting; use it instead of :class:`GrammarMask` in a pipeline.

    The scores coming in are the model's (after the warpers before it): ``P(v | u)``
    is their softmax. The output is ``log P(v | u) + log EFG~(uv)`` on allowed
    tokens, ``-inf`` elsewhere.
    """

    def _restrict(self, scores: torch.Tensor) -> tuple[torch.Tensor, float]:
        return self._masked(scores)


class CARS(_TrieSampler):
    """Exact grammar-aligned sampling by adaptive rejection; use it instead of :class:`GrammarMask`.

    At a prefix where no attempt has failed yet, tokens are drawn from the model
    unmasked (only ids past the vocabulary are removed); :meth:`advance` raises
    :class:`RejectedSample` for a token the grammar rejects, after noting the mass
    the grammar allows there. From then on that prefix is masked. Call :meth:`finish`
    and draw again (``gramspec.generate(aligned="cars")`` does).
    """

    def _restrict(self, scores: torch.Tensor) -> tuple[torch.Tensor, float]:
        node = self.node
        if node is not None and node.masked:
            return self._masked(scores)
        out = scores
        if scores.shape[-1] > self.grammar.vocab.size:
            out = scores.clone()
            out[self.grammar.vocab.size :] = -math.inf
        return out, 1.0

    def advance(self, token: int) -> bool:
        if super().advance(token):
            return True
        seen = self._seen.get(self._prefix_keys[-1])
        if seen is not None and seen.scores is not None:
            self._note_logp(token)
            self._dead = (self.position, self._masked(seen.scores)[1])
        raise RejectedSample(f"token {token} leaves the grammar after {self.position} tokens")
