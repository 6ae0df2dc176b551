"""Intervals for benchmark cells that average over seeds (`hybrid bench recall`, `hybrid bench code-memory`)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, centre - half), min(1.0, centre + half))


def interval(per_seed: list[float], n_per_seed: int) -> tuple[float, float]:
    """A 95 % interval for the mean over seeds: the Wilson interval of all examples pooled (the sampling error of
    the test sets), widened to the Student-t interval of the seed means when that is wider (the variation between
    seeds, i.e. between trained models) — the larger of the two half-widths around the mean."""
    mean = sum(per_seed) / len(per_seed)
    lo, hi = wilson(mean * n_per_seed * len(per_seed), n_per_seed * len(per_seed))
    if len(per_seed) > 1:
        half = T975.get(len(per_seed) - 1, 1.96) * statistics.stdev(per_seed) / math.sqrt(len(per_seed))
        lo, hi = min(lo, max(0.0, mean - half)), max(hi, min(1.0, mean + half))
    return (lo, hi)


def mean_interval(per_seed: Sequence[float], pooled_sd: float = 0.0, n_pooled: int = 0) -> tuple[float, float]:
    """A 95 % interval for the mean of a continuous cell (a loss) over seeds: the larger of the Student-t half-width
    over the seed means (between trained models) and the normal half-width of `n_pooled` pooled observations with
    standard deviation `pooled_sd` (the test set's sampling error)."""
    mean = sum(per_seed) / len(per_seed)
    half = 1.96 * pooled_sd / math.sqrt(n_pooled) if n_pooled else 0.0
    if len(per_seed) > 1:
        half = max(half, T975.get(len(per_seed) - 1, 1.96) * statistics.stdev(per_seed) / math.sqrt(len(per_seed)))
    return (mean - half, mean + half)
