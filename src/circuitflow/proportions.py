"""Confidence intervals for a share of successes (a fail rate) out of n trials."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np


def wilson_interval(successes, trials, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """The Wilson score interval (low, high) as fractions, elementwise; NaN where trials is 0.

    Unlike the normal approximation p ± z·sqrt(p(1-p)/n), it stays inside [0, 1] and does not
    shrink to nothing at 0 or n successes, which is where few-example fail rates sit.
    """
    k = np.asarray(successes, dtype=float)
    n = np.asarray(trials, dtype=float)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k / n
        shrink = 1 + z**2 / n
        centre = (p + z**2 / (2 * n)) / shrink
        half = z / shrink * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    # The interval always holds p; rounding can put a bound a hair past it (low 1e-17 above 0
    # at no successes), which would make error bars negative.
    low = np.minimum(np.clip(centre - half, 0, 1), p)
    high = np.maximum(np.clip(centre + half, 0, 1), p)
    return np.where(n > 0, low, np.nan), np.where(n > 0, high, np.nan)
