"""Mirostat 2.0, a sampler that steers the surprise of sampled tokens towards a target.

Basu, Ramachandran, Keskar, Varshney, "Mirostat: A Neural Text Decoding
Algorithm that Directly Controls Perplexity", ICLR 2021 (arXiv:2007.14966),
Algorithm 2 ("Mirostat 2.0"). Variable names follow the paper: ``tau`` is the
target surprise (bits), ``eta`` the learning rate, ``mu`` the maximum surprise
(initialised to ``2 * tau``). Each step keeps the tokens whose surprise
``-log2 p`` is at most ``mu`` (always at least the most likely one); after a
token ``x`` is taken, with observed surprise ``s = -log2 p(x)`` under the
distribution the plugin was given (as in the authors' code),
``mu <- mu - eta * (s - tau)``.

``mu`` is explicit state, one value per advanced token, so rollback is exact.
Put Mirostat last in a pipeline (after the grammar mask) so that the surprise
it measures is that of the distribution actually sampled from, restricted to
valid tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from gramspec.errors import MatcherError
from gramspec.plugins.base import Plugin


class Mirostat(Plugin):
    """Mirostat 2.0 truncation with its feedback state (see the module docstring)."""

    def __init__(self, tau: float = 5.0, eta: float = 0.1, *, mu: float | None = None) -> None:
        if not tau > 0:
            raise ValueError(f"tau must be > 0, not {tau!r}")
        if not 0 < eta <= 1:
            raise ValueError(f"eta must be in (0, 1], not {eta!r}")
        self.tau = float(tau)
        self.eta = float(eta)
        self.initial_mu = 2 * self.tau if mu is None else float(mu)
        self._mu: list[float] = [self.initial_mu]  # mu after each advanced token; [0] is the start
        # -log2 p of every token at each processed position (kept while the tokens
        # advanced follow the path they were computed along), and that path
        self._surprise: dict[int, torch.Tensor] = {}
        self._path: dict[int, int] = {}
        #: Observed surprise of each advanced token (bits), for measurements.
        self.observed: list[float] = []

    def __repr__(self) -> str:
        return f"Mirostat(tau={self.tau}, eta={self.eta}, mu={self.mu:.3f})"

    @property
    def mu(self) -> float:
        return self._mu[-1]

    @property
    def position(self) -> int:
        return len(self._mu) - 1

    def reset(self, prefix: Sequence[int] = ()) -> None:
        self._mu = [self.initial_mu]
        self._surprise.clear()
        self._path.clear()
        self.observed = []

    def process(self, scores: torch.Tensor) -> torch.Tensor:
        log_probs = torch.log_softmax(scores.float(), dim=-1)
        surprise = -log_probs / math.log(2)
        self._surprise[self.position] = surprise
        self._path.pop(self.position, None)
        keep = surprise <= self.mu
        keep[int(torch.argmax(scores))] = True
        return scores.masked_fill(~keep, -torch.inf)

    def advance(self, token: int) -> bool:
        surprises = self._surprise.get(self.position)
        if surprises is None:
            raise MatcherError("Mirostat.advance needs the scores at this position: call process() first")
        s = float(surprises[token])
        if not math.isfinite(s):
            return False
        taken = self._path.get(self.position)
        if taken is not None and taken != token:  # leaving the evaluated path: later entries are stale
            for position in [p for p in self._surprise if p > self.position]:
                del self._surprise[position]
            for position in [p for p in self._path if p > self.position]:
                del self._path[position]
        self._path[self.position] = token
        mu = self.mu - self.eta * (s - self.tau)
        self._mu.append(mu)
        self.observed.append(s)
        return True

    def rollback(self, n: int = 1) -> None:
        if n < 0 or n > self.position:
            raise MatcherError(f"cannot roll back {n} tokens: {self.position} were advanced")
        if n:
            del self._mu[-n:]
            del self.observed[-n:]
