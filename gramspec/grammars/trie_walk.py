"""The trie walk compiled with numba: tokens classified depth-first, node by node.

:meth:`CompiledGrammar._trie_walk <gramspec.grammars.compiled.CompiledGrammar._trie_walk>`
classifies the tokens under some trie nodes from one lexer state. Its numpy
form steps a whole depth per round, so it pays numpy's per-call overhead at
every depth of every walk; this kernel visits each node once at a few
nanoseconds, with the same rules and the same results:

* a node whose byte kills the lexeme settles its subtree: it crosses a
  lexeme boundary there if the state before the byte has a complete terminal,
  otherwise it is dead;
* a live node whose remaining bytes all loop on its state (up to the horizon's
  equivalence) settles its subtree as inside; otherwise its exact tokens are
  inside and its children are walked on.

The lexer and its horizon grow lazily in Python, so the kernel stops at the
first state whose loop bits are not known yet and returns it; the caller
computes them and calls again, and the kernel resumes from its stack.

Without numba (see :mod:`gramspec.jit`) :data:`walk_kernel` is None and the
numpy walk runs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gramspec.jit import kernel

#: Cursor slots of the kernel's resumable state.
STACK, RANGES, CROSSINGS = 0, 1, 2


def _kernel(
    byte: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    exact: np.ndarray,
    child_lo: np.ndarray,
    child_hi: np.ndarray,
    below: np.ndarray,
    table: np.ndarray,
    has_accept: np.ndarray,
    representative: np.ndarray,
    loops: np.ndarray,
    has_loops: np.ndarray,
    stack_node: np.ndarray,
    stack_state: np.ndarray,
    cursor: np.ndarray,
    range_lo: np.ndarray,
    range_hi: np.ndarray,
    cross_node: np.ndarray,
    cross_state: np.ndarray,
) -> int:
    """Walk the stack's (node, state before the node's byte) entries to the end.

    Nodes are indexed across all depths (see :class:`FlatTrie`). Inside tokens
    come out as ranges ``[range_lo, range_hi)`` of the trie's order, crossings
    as (node, state whose lexeme ends). Returns -1 when done, or the lexer
    state (as the table has it, not yet a representative) whose loop bits are
    needed: the entry on top of the stack is kept, so a later call resumes."""
    sp = cursor[STACK]
    n_ranges = cursor[RANGES]
    n_cross = cursor[CROSSINGS]
    known = has_loops.shape[0]
    missing = -1
    while sp > 0:
        node = stack_node[sp - 1]
        before = stack_state[sp - 1]
        after = table[before, byte[node]]
        if after < 0:
            sp -= 1
            if has_accept[before]:
                cross_node[n_cross] = node
                cross_state[n_cross] = before
                n_cross += 1
            continue
        if after >= known or representative[after] < 0:
            missing = after
            break
        after = representative[after]
        if not has_loops[after]:
            missing = after
            break
        sp -= 1
        settled = True
        for word in range(4):
            if below[node, word] & ~loops[after, word]:
                settled = False
                break
        start = lo[node]
        end = hi[node] if settled else start + exact[node]
        if end > start:
            range_lo[n_ranges] = start
            range_hi[n_ranges] = end
            n_ranges += 1
        if not settled:
            for child in range(child_hi[node] - 1, child_lo[node] - 1, -1):
                stack_node[sp] = child
                stack_state[sp] = after
                sp += 1
    cursor[STACK] = sp
    cursor[RANGES] = n_ranges
    cursor[CROSSINGS] = n_cross
    return missing


#: The compiled kernel, or None where numba is missing or disabled.
walk_kernel: Callable[..., int] | None = kernel(_kernel)


@dataclass(frozen=True)
class FlatTrie:
    """A :class:`~gramspec.grammars.compiled.TokenTrie`'s levels in single arrays:
    node ``offsets[d] + i`` is node ``i`` of depth ``d``; children are global indices."""

    offsets: np.ndarray  # int64 [depths + 1]
    byte: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    exact: np.ndarray
    child_lo: np.ndarray
    child_hi: np.ndarray
    below: np.ndarray
    _local: threading.local = field(default_factory=threading.local, compare=False, repr=False)

    @classmethod
    def of(cls, levels: Any) -> FlatTrie:
        sizes = [level.parent.size for level in levels]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        below_level = offsets[1:]  # the first node of the next depth
        return cls(
            offsets,
            np.concatenate([level.byte for level in levels]),
            np.concatenate([level.lo for level in levels]),
            np.concatenate([level.hi for level in levels]),
            np.concatenate([level.exact for level in levels]),
            np.concatenate([level.child_lo.astype(np.int64) + below_level[d] for d, level in enumerate(levels)]),
            np.concatenate([level.child_hi.astype(np.int64) + below_level[d] for d, level in enumerate(levels)]),
            np.concatenate([level.below for level in levels]),
        )

    @property
    def size(self) -> int:
        return int(self.offsets[-1])

    def scratch(self) -> Scratch:
        """This thread's kernel buffers for walks of this trie (reused: a walk copies its results out)."""
        found: Scratch | None = getattr(self._local, "scratch", None)
        if found is None:
            found = self._local.scratch = Scratch(self.size)
        return found

    def depth_of(self, nodes: np.ndarray) -> np.ndarray:
        """The depth of each global node index."""
        return (np.searchsorted(self.offsets, nodes, side="right") - 1).astype(np.int32)


class Scratch:
    """The kernel's stack and output buffers for one trie: a walk from disjoint
    subtrees visits each node at most once, so ``nodes`` entries bound each."""

    def __init__(self, nodes: int) -> None:
        self.stack_node = np.empty(nodes, dtype=np.int64)
        self.stack_state = np.empty(nodes, dtype=np.int32)
        self.cursor = np.zeros(3, dtype=np.int64)
        self.range_lo = np.empty(nodes, dtype=np.int32)
        self.range_hi = np.empty(nodes, dtype=np.int32)
        self.cross_node = np.empty(nodes, dtype=np.int64)
        self.cross_state = np.empty(nodes, dtype=np.int32)
