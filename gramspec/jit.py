"""Kernels compiled with numba, where it is installed.

A kernel is a plain Python function over numpy arrays; :func:`kernel` returns
it compiled (cached on disk, no GIL held), or None where numba is missing or
``GRAMSPEC_JIT=0`` is set, and the caller runs its numpy code instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency; this is the fallback where it fails to install
    numba_found = False
else:
    numba_found = True

#: Whether kernels are compiled in this process.
ENABLED = numba_found and os.environ.get("GRAMSPEC_JIT", "1") != "0"


def kernel(function: Callable[..., Any]) -> Callable[..., Any] | None:
    """``function`` compiled in nopython mode, or None when :data:`ENABLED` is false."""
    if not ENABLED:
        return None
    compiled: Callable[..., Any] = numba.njit(cache=True, nogil=True)(function)
    return compiled
