"""A causal LM in miniature, for evaluations and tests that need exact laws.

A :class:`ToyLM` returns, after each prefix, logits that are a fixed function
of the whole prefix (prompt included): pseudo-random by default, or given. It
takes microseconds per call, so distribution checks can draw thousands of
samples, and the law of any generation can be enumerated exactly. Its "KV
cache" is the list of tokens read, croppable like transformers' caches, so a
decode loop that crops its cache wrong, or reads the wrong row, samples from
the wrong law. It has the calling convention of a transformers causal LM
(``model(input_ids=..., past_key_values=..., use_cache=True).logits``).
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch


class ToyCacheLayer:
    """One layer of a :class:`ToyCache`: keys and values are the token ids read, shape ``(1, 1, T, 1)``."""

    def __init__(self) -> None:
        self.keys = torch.zeros(1, 1, 0, 1)
        self.values = torch.zeros(1, 1, 0, 1)


class ToyCache:
    """The tokens a :class:`ToyLM` has read, laid out like a transformers KV cache
    (``layers[0].keys``), so the decode loop's cache surgery applies to it as it
    does to a real model's."""

    def __init__(self) -> None:
        self.layers = [ToyCacheLayer()]

    @property
    def tokens(self) -> list[int]:
        return [int(t) for t in self.layers[0].keys[0, 0, :, 0].tolist()]

    def extend(self, tokens: list[int]) -> None:
        layer = self.layers[0]
        new = torch.tensor(tokens, dtype=torch.float32).view(1, 1, -1, 1)
        layer.keys = torch.cat([layer.keys, new], dim=2)
        layer.values = torch.cat([layer.values, new], dim=2)

    def get_seq_length(self) -> int:
        return self.layers[0].keys.shape[2]

    def crop(self, tokens_to_remove: int) -> None:  # transformers >= 5 signature: a negative count
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative count of tokens to remove, not {tokens_to_remove}")
        if tokens_to_remove:
            layer = self.layers[0]
            layer.keys = layer.keys[:, :, :tokens_to_remove]
            layer.values = layer.values[:, :, :tokens_to_remove]


class ToyLM(torch.nn.Module):
    """``logits_fn(prefix)`` gives the logits after ``prefix``; without it they are
    ``scale`` times standard normals seeded by ``(seed, *prefix)``. ``calls`` counts forwards."""

    def __init__(
        self,
        seed: int,
        vocab_size: int,
        scale: float = 1.5,
        logits_fn: Callable[[tuple[int, ...]], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)  # for .parameters()
        self.seed, self.vocab_size, self.scale = seed, vocab_size, scale
        self.logits_fn = logits_fn
        self._memo: dict[tuple[int, ...], torch.Tensor] = {}
        self.calls = 0

    def logits_after(self, prefix: tuple[int, ...]) -> torch.Tensor:
        found = self._memo.get(prefix)
        if found is None:
            if self.logits_fn is not None:
                found = self.logits_fn(prefix).float()
            else:
                rng = np.random.default_rng([self.seed, *prefix])
                found = torch.from_numpy(rng.normal(size=self.vocab_size) * self.scale).float()
            self._memo[prefix] = found
        return found

    def forward(
        self,
        input_ids: torch.Tensor,
        past_key_values: ToyCache | None = None,
        use_cache: bool = True,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> Any:
        """Logits after each input token. A 4D ``attention_mask`` (``(1, 1, q, cached + q)``,
        0 where attending) gives each row its own prefix, as tree attention does; the
        cache then holds every input, as a real KV cache would, until it is cropped."""
        self.calls += 1
        cache = past_key_values if past_key_values is not None else ToyCache()
        inputs = [int(t) for t in input_ids[0].tolist()]
        cached = list(cache.tokens)
        rows = []
        for j, token in enumerate(inputs):
            if attention_mask is None:
                prefix = cached + inputs[: j + 1]
            else:
                allowed = (attention_mask[0, 0, j] == 0).tolist()
                past = [t for t, ok in zip(cached, allowed) if ok]
                prefix = past + [t for t, ok in zip(inputs, allowed[len(cached) :]) if ok]
            rows.append(self.logits_after(tuple(prefix)))
        cache.extend(inputs)
        return SimpleNamespace(logits=torch.stack(rows)[None], past_key_values=cache)
