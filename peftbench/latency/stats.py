"""The statistics a latency cell reports: median with p10/p90 over rounds, and a mode's overhead vs base
with a bootstrap 95 % CI that resamples rounds in pairs (a round's base and mode timings were taken side
by side, so pairing cancels the drift they share)."""

from __future__ import annotations

import random
import statistics
from typing import Any


def summarize(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=10, method="inclusive") if len(values) >= 2 else [values[0]] * 9
    return {"median": round(statistics.median(values), 4), "p10": round(q[0], 4), "p90": round(q[-1], 4)}


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
