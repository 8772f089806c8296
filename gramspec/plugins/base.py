"""The plugin protocol and the pipeline that composes plugins.

A plugin transforms one position's next-token scores (a 1-D tensor of
logits) into new scores. It is a deterministic function of the prefix and of
its own explicit state, which moves with :meth:`Plugin.advance` and
:meth:`Plugin.rollback`; that is what lets a verifier evaluate every position
of a draft in one call (:meth:`Plugin.process_positions`) and then undo it.

No plugin modifies the scores it is given (only methods whose names end in
``_inplace`` may); tests check it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from gramspec.errors import MatcherError
from gramspec.grammars.compiled import Matcher


class Plugin:
    """Base class: a stateless transform. Stateful plugins override the state methods."""

    #: Whether applying a token mask before or after this plugin gives the
    #: same result (true for monotone rescalings such as temperature). The
    #: pipeline's opportunistic masking needs every plugin after the mask to commute.
    commutes_with_mask: bool = False

    def process(self, scores: torch.Tensor) -> torch.Tensor:
        """New scores for the current position (``scores`` is 1-D, one entry per token id)."""
        raise NotImplementedError

    def reset(self, prefix: Sequence[int] = ()) -> None:
        """Start over at ``prefix`` (the prompt); stateless plugins ignore it."""

    def advance(self, token: int) -> bool:
        """Take ``token``; False when the plugin rejects it (state unchanged)."""
        return True

    def rollback(self, n: int = 1) -> None:
        """Undo the last ``n`` advanced tokens."""

    def finish(self) -> None:
        """The current sample is over (plugins that learn across samples commit here)."""

    def process_positions(self, scores: torch.Tensor, draft: Sequence[int]) -> torch.Tensor:
        """Scores at every position of a draft: row ``i`` of ``scores`` (``len(draft) + 1``
        rows) is transformed in the state after ``draft[:i]``. The state is left as found.

        If the plugin rejects ``draft[i]``, rows after ``i`` are all ``-inf``.
        """
        _check_draft_shape(scores, draft)
        rows: list[torch.Tensor] = []
        taken = 0
        try:
            for i in range(scores.shape[0]):
                rows.append(self.process(scores[i]))
                if i < len(draft):
                    if not self.advance(draft[i]):
                        rows.extend(torch.full_like(scores[0], -torch.inf) for _ in range(scores.shape[0] - i - 1))
                        break
                    taken += 1
        finally:
            self.rollback(taken)
        return torch.stack(rows)


def _check_draft_shape(scores: torch.Tensor, draft: Sequence[int]) -> None:
    if scores.ndim != 2 or scores.shape[0] != len(draft) + 1:
        raise ValueError(f"scores must have shape (len(draft) + 1, V) = ({len(draft) + 1}, V), not {tuple(scores.shape)}")


class TokenHistory:
    """The prefix as a growing list of token ids (for plugins that read the prefix)."""

    def __init__(self) -> None:
        self.tokens: list[int] = []

    def reset(self, prefix: Sequence[int]) -> None:
        self.tokens = [int(t) for t in prefix]
        self._base = len(self.tokens)

    def advance(self, token: int) -> None:
        self.tokens.append(int(token))

    def rollback(self, n: int) -> None:
        base = getattr(self, "_base", 0)
        if n < 0 or n > len(self.tokens) - base:
            raise MatcherError(f"cannot roll back {n} tokens: {len(self.tokens) - base} were advanced")
        if n:
            del self.tokens[-n:]


class Pipeline:
    """Plugins applied in order: the single definition of the constrained target
    distribution, ``softmax(plugin_n(... plugin_1(logits)))``.

    Sampling is Gumbel-max (``argmax(scores + Gumbel noise)``), so greedy and
    sampled decoding share one exact fast path, *opportunistic masking*: when
    the pipeline's last non-commuting plugin is a :class:`GrammarMask`, the
    argmax of the unmasked (perturbed) scores is checked with a single-token
    grammar test first, and the full mask is computed only when that token is
    rejected. The argmax over all tokens, when allowed, is also the argmax over
    the allowed ones, so the result is identical to full masking, draw for
    draw (same seed, same token).
    """

    def __init__(self, plugins: Sequence[Plugin], *, opportunistic: bool = True) -> None:
        self.plugins: tuple[Plugin, ...] = tuple(plugins)
        self.opportunistic = opportunistic
        self._mask_index = self._find_fast_path_mask()
        #: How many tokens needed the full mask (opportunistic misses), for measurements.
        self.full_masks = 0
        self.fast_path_hits = 0

    def __repr__(self) -> str:
        return f"Pipeline({', '.join(type(p).__name__ for p in self.plugins)})"

    def _find_fast_path_mask(self) -> int | None:
        from gramspec.plugins.mask import GrammarMask

        masks = [i for i, p in enumerate(self.plugins) if isinstance(p, GrammarMask)]
        if len(masks) != 1:
            return None
        i = masks[0]
        return i if all(p.commutes_with_mask for p in self.plugins[i + 1 :]) else None

    # -- state -------------------------------------------------------------

    def reset(self, prefix: Sequence[int] = ()) -> None:
        for plugin in self.plugins:
            plugin.reset(prefix)
        self.full_masks = self.fast_path_hits = 0

    def advance(self, token: int) -> bool:
        """Advance every plugin; if one rejects the token, the others are rolled back."""
        for i, plugin in enumerate(self.plugins):
            if not plugin.advance(token):
                for earlier in self.plugins[:i]:
                    earlier.rollback(1)
                return False
        return True

    def rollback(self, n: int = 1) -> None:
        for plugin in self.plugins:
            plugin.rollback(n)

    def finish(self) -> None:
        """The sample is over: plugins that learn across samples (ASAp) commit what they saw."""
        for plugin in self.plugins:
            plugin.finish()

    @property
    def matcher(self) -> Matcher | None:
        """The grammar matcher of the constraint plugin (GrammarMask, ASAp, CARS), if there is one."""
        for plugin in self.plugins:
            found = getattr(plugin, "matcher", None)
            if isinstance(found, Matcher):
                return found
        return None

    # -- scores and distributions ---------------------------------------------

    def process(self, scores: torch.Tensor) -> torch.Tensor:
        for plugin in self.plugins:
            scores = plugin.process(scores)
        return scores

    def process_positions(self, scores: torch.Tensor, draft: Sequence[int]) -> torch.Tensor:
        """Target scores at every position of a draft (see :meth:`Plugin.process_positions`)."""
        for plugin in self.plugins:
            scores = plugin.process_positions(scores, draft)
        return scores

    def distribution(self, scores: torch.Tensor) -> torch.Tensor:
        """The target next-token distribution (probabilities) for the current position."""
        return torch.softmax(self.process(scores).float(), dim=-1)

    def choose(self, scores: torch.Tensor, *, generator: torch.Generator | None = None, greedy: bool = False) -> int:
        """The next token: the argmax (``greedy``) or a sample of the target distribution."""
        noise = None if greedy else _gumbel_like(scores, generator)
        if self._mask_index is None or not self.opportunistic:
            return _argmax(self.process(scores), noise)
        mask = self.plugins[self._mask_index]
        head = scores
        for plugin in self.plugins[: self._mask_index]:
            head = plugin.process(head)
        tail = head
        for plugin in self.plugins[self._mask_index + 1 :]:
            tail = plugin.process(tail)
        candidate = _argmax(tail, noise)
        if torch.isfinite(tail[candidate]) and mask.is_allowed(candidate):  # type: ignore[attr-defined]
            self.fast_path_hits += 1
            return candidate
        self.full_masks += 1
        full = mask.process(head)
        for plugin in self.plugins[self._mask_index + 1 :]:
            full = plugin.process(full)
        return _argmax(full, noise)


def _gumbel_like(scores: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    uniform = torch.rand(scores.shape, generator=generator, device=generator.device if generator else "cpu")
    uniform = uniform.to(scores.device).clamp_(min=torch.finfo(torch.float32).tiny)
    return -torch.log(-torch.log(uniform))


def argmax_index(scores: torch.Tensor) -> torch.Tensor | np.ndarray:
    """The argmax along the last dimension (the first on ties, NaN counting as
    the largest); on the CPU by numpy, which is ~20x faster than torch's
    single-threaded argmax over one row of a vocabulary."""
    if scores.device.type == "cpu" and scores.dtype in (torch.float32, torch.float64):
        return scores.detach().numpy().argmax(axis=-1)
    return torch.argmax(scores, dim=-1)


def _argmax(scores: torch.Tensor, noise: torch.Tensor | None) -> int:
    index = int(argmax_index(scores if noise is None else scores.float() + noise))
    if not math.isfinite(float(scores[index])):  # the best is -inf (or NaN): no score is usable
        raise MatcherError("no token has a finite score: no token can come next")
    return index
