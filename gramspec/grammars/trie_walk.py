"""The trie walk compiled with numba: tokens classified in one pass over the trie.

:meth:`CompiledGrammar._trie_walk <gramspec.grammars.compiled.CompiledGrammar._trie_walk>`
classifies the tokens under some trie nodes from one lexer state. Its numpy
form steps a whole depth per round, so it pays numpy's per-call overhead at
every depth of every walk; this kernel visits each node once, with the same
rules and the same results:

* a node whose byte kills the lexeme settles its subtree: it crosses a
  lexeme boundary there if the state before the byte has a complete terminal,
  otherwise it is dead;
* a live node whose remaining bytes all loop on its state (up to the horizon's
  equivalence) settles its subtree as inside, and so does one whose remaining
  bytes are ASCII bytes that loop and whole UTF-8 characters (a last one may
  be cut short), where every character loops on the state (the body of a
  string); otherwise its exact tokens are inside and its children are walked
  on.

The nodes are laid out in preorder (:class:`FlatTrie`), so a walk reads them
forwards: a settled node skips to the end of its subtree, any other goes on
to its first child, and the state before a node's byte is its parent's, kept
per depth. No stack, and memory is read in order.

The lexer and its horizon grow lazily in Python, so the kernel stops at the
first state whose loop bits are not known yet and returns it; the caller
computes them and calls again, and the kernel resumes where it stopped.

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

#: Cursor slots of the kernel's resumable state: the start node being walked
#: (an index into the starts), the node reached in its subtree (-1: its
#: start), and how many ranges and crossings are written.
START, AT, RANGES, CROSSINGS = 0, 1, 2, 3


def _kernel(
    byte: np.ndarray,
    depth: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    exact: np.ndarray,
    end: np.ndarray,
    below: np.ndarray,
    utf8: np.ndarray,
    table: np.ndarray,
    has_accept: np.ndarray,
    representative: np.ndarray,
    loops: np.ndarray,
    has_loops: np.ndarray,
    loops_on_characters: np.ndarray,
    starts: np.ndarray,
    start_state: int,
    state_at: np.ndarray,
    cursor: np.ndarray,
    range_lo: np.ndarray,
    range_hi: np.ndarray,
    cross_node: np.ndarray,
    cross_state: np.ndarray,
) -> int:
    """Walk the subtrees of ``starts`` (preorder nodes with disjoint
    subtrees) from ``start_state`` to the end.

    ``state_at[d]`` is the state after the node ``d`` bytes below the current
    start on the path to the node being visited. Inside tokens come out as
    ranges ``[range_lo, range_hi)`` of the trie's order, crossings as
    (preorder node, state whose lexeme ends). Returns -1 when done, or the
    lexer state (as the table has it, not yet a representative) whose loop
    bits are needed: the cursor keeps the node, so a later call resumes."""
    n_ranges = cursor[RANGES]
    n_cross = cursor[CROSSINGS]
    known = has_loops.shape[0]
    for s in range(cursor[START], starts.shape[0]):
        first = starts[s]
        node = first if cursor[AT] < 0 else cursor[AT]
        stop = end[first]
        top = depth[first]
        while node < stop:
            below_start = depth[node] - top
            before = start_state if below_start == 0 else state_at[below_start - 1]
            after = table[before, byte[node]]
            if after < 0:
                if has_accept[before]:
                    cross_node[n_cross] = node
                    cross_state[n_cross] = before
                    n_cross += 1
                node = end[node]
                continue
            if after >= known or representative[after] < 0 or not has_loops[representative[after]]:
                cursor[START] = s
                cursor[AT] = node
                cursor[RANGES] = n_ranges
                cursor[CROSSINGS] = n_cross
                return after
            after = representative[after]
            # the bytes below loop (ASCII ones, then the others, or instead
            # whole characters: well-formed UTF-8 below, and every character
            # leads back to an equivalent state)
            settled = not (below[node, 0] & ~loops[after, 0] or below[node, 1] & ~loops[after, 1])
            if settled and (below[node, 2] & ~loops[after, 2] or below[node, 3] & ~loops[after, 3]):
                settled = utf8[node] and loops_on_characters[after]
            start = lo[node]
            last = hi[node] if settled else start + exact[node]
            if last > start:
                range_lo[n_ranges] = start
                range_hi[n_ranges] = last
                n_ranges += 1
            if settled:
                node = end[node]
            else:
                state_at[below_start] = after
                node += 1
        cursor[AT] = -1
    cursor[START] = starts.shape[0]
    cursor[RANGES] = n_ranges
    cursor[CROSSINGS] = n_cross
    return -1


#: The compiled kernel, or None where numba is missing or disabled.
walk_kernel: Callable[..., int] | None = kernel(_kernel)


@dataclass(frozen=True)
class FlatTrie:
    """A :class:`~gramspec.grammars.compiled.TokenTrie`'s levels as single
    arrays in preorder: a node comes before its subtree, which ends (one past
    its last node) at ``end``. ``node[p]`` is preorder node ``p``'s index in
    the levels laid end to end (``offsets[d] + i`` for node ``i`` of depth
    ``d``), ``position`` the inverse."""

    offsets: np.ndarray  # int64 [depths + 1]
    node: np.ndarray  # int64
    position: np.ndarray  # int64
    byte: np.ndarray
    depth: np.ndarray  # int32
    lo: np.ndarray
    hi: np.ndarray
    exact: np.ndarray
    end: np.ndarray  # int64
    below: np.ndarray
    utf8: np.ndarray
    _local: threading.local = field(default_factory=threading.local, compare=False, repr=False)

    @classmethod
    def of(cls, levels: Any) -> FlatTrie:
        sizes = [level.parent.size for level in levels]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        depth = np.repeat(np.arange(len(levels), dtype=np.int32), sizes)
        lo = np.concatenate([level.lo for level in levels])
        hi = np.concatenate([level.hi for level in levels])
        # every prefix's tokens are a range of the order starting at its own
        # first token, and an ancestor's range holds its descendants': so
        # preorder is by first token, then depth, and a subtree ends at the
        # first node whose range starts past its own
        node = np.lexsort((depth, lo)).astype(np.int64)
        position = np.empty_like(node)
        position[node] = np.arange(node.size)
        return cls(
            offsets,
            node,
            position,
            np.concatenate([level.byte for level in levels])[node],
            depth[node],
            lo[node],
            hi[node],
            np.concatenate([level.exact for level in levels])[node],
            np.searchsorted(lo[node], hi[node], side="left").astype(np.int64),
            np.ascontiguousarray(np.concatenate([level.below for level in levels])[node]),
            np.concatenate([level.utf8 for level in levels])[node],
        )

    @property
    def size(self) -> int:
        return int(self.offsets[-1])

    def scratch(self) -> Scratch:
        """This thread's kernel buffers for walks of this trie (reused: a walk copies its results out)."""
        found: Scratch | None = getattr(self._local, "scratch", None)
        if found is None:
            found = self._local.scratch = Scratch(self.size, len(self.offsets))
        return found


class Scratch:
    """The kernel's buffers for one trie: a walk from disjoint subtrees
    visits each node at most once, so ``nodes`` entries bound each output."""

    def __init__(self, nodes: int, depths: int) -> None:
        self.starts = np.empty(nodes, dtype=np.int64)
        self.state_at = np.empty(depths, dtype=np.int32)
        self.cursor = np.zeros(4, dtype=np.int64)
        self.range_lo = np.empty(nodes, dtype=np.int32)
        self.range_hi = np.empty(nodes, dtype=np.int32)
        self.cross_node = np.empty(nodes, dtype=np.int64)
        self.cross_state = np.empty(nodes, dtype=np.int32)
