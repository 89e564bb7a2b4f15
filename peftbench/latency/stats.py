"""The statistics a latency cell reports: median with p10/p90 over rounds, and a mode's overhead vs base
with a bootstrap 95 % CI that resamples rounds in pairs (a round's base and mode timings were taken side
by side, so pairing cancels the drift they share)."""

from __future__ import annotations

import math
import random
import statistics
from typing import Any


def summarize(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=10, method="inclusive") if len(values) >= 2 else [values[0]] * 9
    return {"median": round(statistics.median(values), 4), "p10": round(q[0], 4), "p90": round(q[-1], 4)}


def median_ci(values: list[float]) -> tuple[float, float]:
    """A distribution-free interval for the median: the order statistics ``x(k)`` and ``x(n+1-k)`` with the
    largest ``k`` that still covers it with 95 % (binomial, as in Conover's tables). Below 6 values no pair
    reaches 95 %: the interval is then [min, max], which covers the median with 1 - 2**(1-n) (75 % at 3)."""
    xs, n = sorted(values), len(values)
    k = 1
    while k + 1 <= n // 2 and 2 * _binomial_tail(n, k) <= 0.05:  # P(X <= k) for X ~ Binomial(n, 1/2)
        k += 1
    return xs[k - 1], xs[n - k]


def rel_half_width(values: list[float]) -> float:
    """Half the width of ``median_ci`` relative to the median (inf for one value: no interval yet)."""
    if len(values) < 2:
        return math.inf
    lo, hi = median_ci(values)
    mid = statistics.median(values)
    return (hi - lo) / 2 / mid if mid > 0 else math.inf


def _binomial_tail(n: int, k: int) -> float:
    return sum(math.comb(n, i) for i in range(k + 1)) / 2**n


def overhead(mode: list[float], base: list[float], n_boot: int, seed: int) -> dict[str, Any]:
    """Ratio of medians - 1, and a bootstrap 95 % CI that resamples rounds in pairs (one round: the CI is
    the point)."""
    point = _median_ratio(mode, base) - 1.0
    boots = _paired_bootstrap(mode, base, n_boot, seed) if len(mode) > 1 else []
    if boots:
        lo, hi = boots[int(0.025 * (len(boots) - 1))], boots[int(0.975 * (len(boots) - 1))]
    else:
        lo = hi = point
    return {"ratio": round(point, 4), "ci95": [round(lo, 4), round(hi, 4)]}


def _median_ratio(mode: list[float], base: list[float]) -> float:
    return statistics.median(mode) / statistics.median(base)


def _paired_bootstrap(mode: list[float], base: list[float], n_boot: int, seed: int) -> list[float]:
    """``n_boot`` overheads of resampled rounds, sorted; a round's mode and base values are drawn together."""
    rng = random.Random(seed)
    n = len(mode)
    boots = []
    for _ in range(n_boot):
        idx = [rng.randrange(n) for _ in range(n)]
        boots.append(_median_ratio([mode[i] for i in idx], [base[i] for i in idx]) - 1.0)
    return sorted(boots)
