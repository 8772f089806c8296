"""The usual score warpers as plugins, reusing transformers' implementations.

Temperature, top-k, top-p and min-p depend only on the scores, so they
evaluate every draft position in one call; the repetition penalty reads the
prefix and keeps it as explicit state.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers.generation.logits_process import (
    LogitsProcessor,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from gramspec.plugins.base import Plugin, TokenHistory, _check_draft_shape

_NO_IDS = torch.zeros((1, 0), dtype=torch.long)


class _ScoresOnly(Plugin):
    """A transformers warper that reads only the scores."""

    _warper: LogitsProcessor

    def process(self, scores: torch.Tensor) -> torch.Tensor:
        return self._warper(_NO_IDS.to(scores.device), scores.unsqueeze(0))[0]

    def process_positions(self, scores: torch.Tensor, draft: Sequence[int]) -> torch.Tensor:
        _check_draft_shape(scores, draft)
        ids = _NO_IDS.to(scores.device).expand(scores.shape[0], 0)
        return self._warper(ids, scores)


class Temperature(_ScoresOnly):
    """Divides the scores by ``temperature`` (> 0; use greedy decoding for 0)."""

    commutes_with_mask = True

    def __init__(self, temperature: float) -> None:
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, not {temperature!r}")
        self.temperature = float(temperature)
        self._warper = TemperatureLogitsWarper(self.temperature)

    def __repr__(self) -> str:
        return f"Temperature({self.temperature})"


class TopK(_ScoresOnly):
    """Keeps the ``top_k`` highest scores."""

    def __init__(self, top_k: int) -> None:
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive int, not {top_k!r}")
        self.top_k = top_k
        self._warper = TopKLogitsWarper(top_k)

    def __repr__(self) -> str:
        return f"TopK({self.top_k})"


class TopP(_ScoresOnly):
    """Keeps the smallest set of tokens whose probability reaches ``top_p`` (nucleus sampling)."""

    def __init__(self, top_p: float) -> None:
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], not {top_p!r}")
        self.top_p = float(top_p)
        self._warper = TopPLogitsWarper(self.top_p)

    def __repr__(self) -> str:
        return f"TopP({self.top_p})"


class MinP(_ScoresOnly):
    """Keeps tokens whose probability is at least ``min_p`` times the top token's."""

    def __init__(self, min_p: float) -> None:
        if not 0 <= min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], not {min_p!r}")
        self.min_p = float(min_p)
        self._warper = MinPLogitsWarper(self.min_p)

    def __repr__(self) -> str:
        return f"MinP({self.min_p})"


class RepetitionPenalty(Plugin):
    """CTRL's repetition penalty over the prefix (prompt included, as transformers does)."""

    def __init__(self, penalty: float) -> None:
        if not penalty > 0:
            raise ValueError(f"penalty must be > 0, not {penalty!r}")
        self.penalty = float(penalty)
        self._warper = RepetitionPenaltyLogitsProcessor(self.penalty)
        self.history = TokenHistory()

    def __repr__(self) -> str:
        return f"RepetitionPenalty({self.penalty})"

    def reset(self, prefix: Sequence[int] = ()) -> None:
        self.history.reset(prefix)

    def advance(self, token: int) -> bool:
        self.history.advance(token)
        return True

    def rollback(self, n: int = 1) -> None:
        self.history.rollback(n)

    def process(self, scores: torch.Tensor) -> torch.Tensor:
        if not self.history.tokens:
            return scores.clone()
        ids = torch.tensor([self.history.tokens], dtype=torch.long, device=scores.device)
        return self._warper(ids, scores.unsqueeze(0))[0]
