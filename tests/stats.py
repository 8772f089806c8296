"""Statistical checks shared by the distribution tests: Pearson's chi-square against an exact law."""

from __future__ import annotations

import math

import numpy as np


def chi_square_critical(df: int, z: float = 3.719) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile (z = 3.719: p = 1e-4)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def chi_square(counts: np.ndarray, probs: np.ndarray, *, min_expected: float = 0.0) -> tuple[float, int]:
    """Pearson's statistic and degrees of freedom; ``inf`` when an impossible outcome was seen.

    Cells expected fewer than ``min_expected`` times are pooled into one cell.
    """
    counts = np.asarray(counts, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    support = probs > 0
    if (counts[~support] > 0).any():
        return math.inf, max(int(support.sum()) - 1, 1)
    counts, probs = counts[support], probs[support]
    expected = probs * counts.sum()
    small = expected < min_expected
    if small.any():
        counts = np.append(counts[~small], counts[small].sum())
        expected = np.append(expected[~small], expected[small].sum())
    return float(((counts - expected) ** 2 / expected).sum()), max(len(expected) - 1, 1)


def fits(counts: np.ndarray, probs: np.ndarray, *, min_expected: float = 5.0) -> tuple[bool, float, int]:
    """Whether the counts are consistent with ``probs`` at p = 1e-4: (ok, statistic, df)."""
    stat, df = chi_square(counts, probs, min_expected=min_expected)
    return stat < chi_square_critical(df), stat, df
