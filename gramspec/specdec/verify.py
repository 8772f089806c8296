"""Lossless verification of a draft against the constrained target distribution.

Both rules return the accepted draft tokens followed by one more token (the
correction at the first rejection, or a bonus token after a fully accepted
draft), and the law of that output equals sampling the target one token at a
time.

* :func:`verify_stochastic` — a draft sampled from ``q``: accept ``x`` with
  probability ``min(1, pi(x) / q(x))``; on rejection sample the residual
  ``norm(max(pi - q, 0))`` (speculative sampling: Leviathan et al. 2023,
  Chen et al. 2023).
* :func:`verify_deterministic` — a draft that is a function of the context
  (prompt lookup, token recycling, trigram tables, grammar-forced tokens, a
  greedy draft model): draw ``y ~ pi`` and accept when ``y == x``, else emit
  ``y``. That is the rule "accept ``x`` with probability ``pi(x)``, else
  sample ``pi`` with ``x`` removed" (same law: ``P(y) = pi(y)`` for every
  ``y``), and with Gumbel-max draws it keeps the opportunistic-masking fast
  path and matches plain decoding draw for draw under the same seed. Greedy
  decoding is the special case where the draw is the argmax.
* :func:`verify_stochastic_tree` — a token tree whose siblings were *sampled*
  (several candidates per position): at each node its children are tried in
  order with the rule above, the target ``p`` replaced by the residual
  ``norm(max(p - q_i, 0))`` after each rejected child ``i``, and the final
  residual sampled when all are rejected (SpecInfer's multi-step speculative
  sampling, Miao et al. 2024, for siblings drawn i.i.d.; recursive rejection
  sampling, Jeon et al. 2024 "Recursive Speculative Decoding", for siblings
  drawn without replacement). One-hot rows of ``q`` make deterministic tokens
  a special case (accept ``x`` with probability ``p(x)``, else remove it).

Never "truncate the draft at the first invalid token and sample afresh":
for a stochastic draft that is biased (tests check that it fails).
"""

from __future__ import annotations

from collections.abc import Callable, Container, Sequence

import torch


def verify_stochastic(
    probs: torch.Tensor,
    tokens: Sequence[int],
    q: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    stop: Container[int] = (),
) -> list[int]:
    """Speculative sampling: ``probs`` is ``(k + 1, V)`` target probabilities (row ``i`` after
    ``tokens[:i]``), ``q`` is ``(k, V)`` the draft's; returns accepted tokens + one, or
    fewer when an accepted token is in ``stop`` (EOS: nothing follows it)."""
    k = len(tokens)
    if probs.shape[0] != k + 1 or q.shape[0] != k:
        raise ValueError(f"need {k + 1} target rows and {k} draft rows, got {probs.shape[0]} and {q.shape[0]}")
    out: list[int] = []
    for i, x in enumerate(tokens):
        p_row, q_row = probs[i].float(), q[i].to(probs.device).float()
        px, qx = float(p_row[x]), float(q_row[x])
        u = float(torch.rand((), generator=generator))
        if qx > 0 and u * qx < px:
            out.append(int(x))
            if x in stop:
                return out
            continue
        residual = (p_row - q_row).clamp_(min=0)
        if float(residual.sum()) <= 0:  # only when pi == q up to rounding: any draw of pi is exact
            residual = p_row
        out.append(_sample(residual, generator))
        return out
    out.append(_sample(probs[k].float(), generator))
    return out


def verify_deterministic(
    tokens: Sequence[int],
    draw: Callable[[int], int],
    *,
    stop: Container[int] = (),
    parents: Sequence[int] | None = None,
) -> list[int]:
    """Accepted tokens + one, for a deterministic draft (fewer when a token in ``stop`` is accepted).

    ``draw(i)`` samples the target at position ``i`` (after ``tokens[:i]``); the caller
    moves its state past each drawn token, so ``draw(i)`` is only called after
    ``draw(i - 1)`` returned ``tokens[i - 1]``.

    With ``parents``, the draft is a token tree (:attr:`Draft.parents`): at each node
    the draw is accepted when it is one of the node's children, which are distinct
    tokens, so every token still comes out with the target's probability (trying
    deterministic siblings in turn, each removed once rejected, has the same law).
    ``draw(i)`` is then called with ``i`` = 1 + the index of the last accepted token,
    0 at the root.
    """
    links = range(-1, len(tokens) - 1) if parents is None else parents
    children: dict[int, dict[int, int]] = {}
    for i, (token, parent) in enumerate(zip(tokens, links)):
        siblings = children.setdefault(parent, {})
        if token in siblings:
            raise ValueError(f"token {token} is drafted twice under the same parent")
        siblings[token] = i
    out: list[int] = []
    node = -1
    while True:
        token = draw(node + 1)
        out.append(token)
        child = children.get(node, {}).get(token)
        if child is None or token in stop:
            return out
        node = child


def sibling_law(p: torch.Tensor, tokens: Sequence[int], q_rows: torch.Tensor) -> tuple[list[float], torch.Tensor]:
    """Recursive rejection sampling at one node: the chance that each sampled sibling is
    accepted once all earlier ones were rejected, and the residual sampled when all are.

    ``p`` is the constrained target at the node, ``tokens[i]`` the ``i``-th sibling and
    ``q_rows[i]`` the law it was drawn from *given the earlier siblings*: the draft's
    ``q`` itself for i.i.d. siblings (SpecInfer, Miao et al. 2024), ``q``
    with the earlier siblings removed and renormalized for siblings drawn without
    replacement (RSD, Jeon et al. 2024). Sibling ``i`` is accepted with probability
    ``min(1, p_i(x_i) / q_i(x_i))``, then ``p_{i+1} = norm(max(p_i - q_i, 0))``; each
    step gives every token ``y`` the probability ``p_i(y)`` (``min(p_i, q_i)`` from an
    acceptance, ``max(p_i - q_i, 0)`` from the rejection branch), whatever the later
    siblings are, so the node emits exactly ``p``.

    A sibling with ``q_i(x_i) = 0`` (it cannot have been drawn) is rejected. The
    residual is zero only when ``p_i == q_i``, where rejection has probability zero:
    up to rounding, ``p_i`` itself is kept then.
    """
    accept: list[float] = []
    p = p.double()
    for x, q_row in zip(tokens, q_rows):
        q_row = q_row.to(p.device).double()
        px, qx = float(p[x]), float(q_row[x])
        accept.append(min(1.0, px / qx) if qx > 0 else 0.0)
        residual = (p - q_row).clamp_(min=0)
        total = float(residual.sum())
        if total > 0:
            p = residual / total
    return accept, p


def verify_stochastic_tree(
    tokens: Sequence[int],
    parents: Sequence[int],
    q: torch.Tensor,
    target: Callable[[int], torch.Tensor],
    *,
    generator: torch.Generator | None = None,
    stop: Container[int] = (),
) -> list[int]:
    """Accepted tokens + one, for a token tree of sampled siblings (fewer when a token in
    ``stop`` is accepted).

    ``parents`` as in :attr:`Draft.parents` (parents first; siblings may repeat when
    drawn i.i.d.); ``q[i]`` is the law ``tokens[i]`` was drawn from given its path and
    its earlier siblings (see :func:`sibling_law`). ``target(i)`` returns the
    constrained target probabilities at position ``i``: 0 at the root, else 1 + the
    index of the last accepted token; it is called once per node on the accepted path,
    in order, so the caller can move its state past ``tokens[i - 1]`` there.

    Which siblings a node has may depend on anything drafted before them, never on
    the values drawn for them (a draft cut by its own tokens' probabilities is biased).
    """
    n = len(tokens)
    if len(parents) != n or q.shape[0] != n or any(not -1 <= p < i for i, p in enumerate(parents)):
        raise ValueError(f"need {n} parents in topological order and {n} draft rows, got {len(parents)} and {q.shape[0]}")
    children: dict[int, list[int]] = {}
    for i, parent in enumerate(parents):
        children.setdefault(parent, []).append(i)
    out: list[int] = []
    node = -1
    while True:
        kids = children.get(node, [])
        accept, residual = sibling_law(target(node + 1), [tokens[i] for i in kids], q[kids])
        for child, chance in zip(kids, accept):
            if float(torch.rand((), generator=generator)) < chance:
                break
        else:
            out.append(_sample(residual, generator))
            return out
        out.append(int(tokens[child]))
        if tokens[child] in stop:
            return out
        node = child


def _sample(weights: torch.Tensor, generator: torch.Generator | None) -> int:
    weights = torch.nan_to_num(weights, nan=0.0).clamp_(min=0)
    total = float(weights.sum())
    if total <= 0:
        raise ValueError("no token has positive probability")
    return int(torch.multinomial((weights / total).cpu(), 1, generator=generator))
