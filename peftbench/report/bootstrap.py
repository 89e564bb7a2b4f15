"""The numeric core of the statistics engine: a two-level bootstrap over seeds and test examples, a Student-t
quantile for any degrees of freedom, and McNemar's exact test. ``stats.py`` feeds it from run files; what it
computes and why is docs/statistics.md.

Data: one array per method, shape (seeds, examples), every row scored on the same examples in the same
order. A method with one row (the zero-shot base: no training, so no seed) is reused for every resampled
seed. The others share their seeds: a bootstrap draw resamples seed indices once for all of them (paired over
seeds) and example indices once for every seed and method (paired over examples: all seeds scored the same
test set, so the test set is drawn once -- drawing it anew per seed would shrink the example term by the
number of seeds).

The interval: the bootstrap splits the statistic's variance into a seed part (seeds resampled, examples
kept), an example part (examples resampled, seeds kept) and their interaction (what both resampled adds
beyond the two); each of the first two holds one copy of the interaction, so

    V = V_seeds * S/(S-1) + V_examples * n/(n-1) - V_interaction * S n / ((S-1)(n-1))

(the unbiased two-way random-effects variance of the mean, for any smooth statistic of the means), and the
95 % CI is value +- t(df) sqrt(V), df about S-1 when seeds dominate and large when the examples do
(``_degrees_of_freedom``). A plain percentile bootstrap under-covers with 3-5 seeds (it takes the seed
variance as known).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

DRAWS = 2000
SEED = 0
UNDEFINED_SHARE = 0.05   # more bootstrap draws than this undefined (a denominator at 0): no interval


@dataclass(frozen=True)
class Interval:
    """A statistic's value, its 95 % CI (None: not measurable) and how it was computed."""

    value: float | None
    ci95: list[float] | None
    how: str
    n_seeds: int
    n_examples: int | None
    se: float | None = None
    df: float | None = None

    def as_dict(self) -> dict[str, object]:
        return {"value": self.value, "ci95": self.ci95, "how": self.how, "n_seeds": self.n_seeds,
                "n_examples": self.n_examples, "se": self.se, "df": self.df}


def ratio(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    """num / den, NaN (undefined) where the denominator is 0 -- for statistics such as gain shares."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    safe = np.where(np.abs(den) > 1e-12, den, np.nan)
    return num / safe


# ---- Student t quantile (no scipy: report is light) ---------------------------------------------------------
@lru_cache(maxsize=512)
def _t975(df_rounded: float) -> float:
    nu = df_rounded
    # integrate the density from 0 on a grid dense near 0 and reaching far into the tail; interpolate 0.475
    x = np.sinh(np.linspace(0.0, math.asinh(400.0), 40001))
    log_c = math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - 0.5 * math.log(nu * math.pi)
    pdf = np.exp(log_c - (nu + 1) / 2 * np.log1p(x * x / nu))
    cdf = np.concatenate([[0.0], np.cumsum((pdf[1:] + pdf[:-1]) / 2 * np.diff(x))])
    return float(np.interp(0.475, cdf, x))


def t_quantile(df: float) -> float:
    """The two-sided 95 % Student-t quantile for ``df`` degrees of freedom (need not be whole; >= 1)."""
    if not df >= 1:
        raise ValueError(f"a t quantile needs df >= 1, got {df}")
    if df > 1e5:
        return 1.959964
    # rounded so repeated calls hit the cache; the quantile moves < 0.1 % within a step
    step = 0.05 if df < 10 else 0.5 if df < 100 else 10.0
    return _t975(round(float(df) / step) * step)


# ---- the bootstrap --------------------------------------------------------------------------------------------
@lru_cache(maxsize=6)
def _counts(size: int, draws: int, seed: int) -> np.ndarray:
    """How often each of ``size`` items is drawn in each of ``draws`` resamples (draws x size), cached:
    the same n gets the same resamples, so results are reproducible and repeated calls cheap."""
    rng = np.random.default_rng([seed, size])
    picks = rng.integers(0, size, size=(draws, size))
    flat = (picks + size * np.arange(draws)[:, None]).ravel()
    return np.bincount(flat, minlength=draws * size).reshape(draws, size).astype(float)


def _as_rows(groups: Sequence[np.ndarray]) -> tuple[list[np.ndarray], int, int]:
    rows = [np.atleast_2d(np.asarray(g, dtype=float)) for g in groups]
    n = rows[0].shape[1]
    seeds = {r.shape[0] for r in rows} - {1}
    if any(r.shape[1] != n for r in rows) or len(seeds) > 1 or n < 2:
        raise ValueError("bootstrap needs arrays of shape (seeds, examples), 2+ examples, the same examples and, where "
                         f"there is more than one seed, the same seeds; got {[r.shape for r in rows]}")
    return rows, (seeds.pop() if seeds else 1), n


def hierarchical_bootstrap(groups: Sequence[np.ndarray], statistic: Callable[..., np.ndarray],
                           draws: int = DRAWS, seed: int = SEED) -> Interval:
    """``statistic(*means)`` of the methods' mean scores, with its 95 % CI from the two-level bootstrap (module
    docstring). ``groups``: per method an array (seeds, examples); ``statistic``: vectorised over numpy arrays,
    NaN where undefined."""
    rows, s, n = _as_rows(groups)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_seed = [r.mean(axis=1) for r in rows]                       # method -> (seeds,)
        value = float(statistic(*(p.mean() for p in per_seed)))
        ex = _counts(n, draws, seed) / n                                # draws x n
        seed_w = _counts(s, draws, seed + 1) / s if s > 1 else np.ones((draws, 1))
        stacked = ex @ np.concatenate(rows).T                           # draws x (all methods' seeds)
        ends = np.cumsum([r.shape[0] for r in rows])
        resampled = np.split(stacked, ends[:-1], axis=1)                # method -> draws x seeds
        t_ex = statistic(*(m.mean(axis=1) for m in resampled))
        t_seed = statistic(*(_weighted(p[None, :], seed_w) for p in per_seed))
        t_both = statistic(*(_weighted(m, seed_w) for m in resampled))
    how_n = f"{s} seed{'s' if s > 1 else ''} x {n} examples"
    paired = "paired " if len(rows) > 1 else ""
    ok = np.isfinite(t_ex) & np.isfinite(t_seed) & np.isfinite(t_both)
    if not math.isfinite(value) or ok.mean() < 1 - UNDEFINED_SHARE:
        return Interval(value if math.isfinite(value) else None, None,
                        f"undefined in {100 * (1 - ok.mean()):.0f}% of bootstrap draws ({how_n})", s, n)
    v_ex = float(np.var(t_ex[ok])) * (n / (n - 1) if n > 1 else 0.0)
    if s > 1:
        v_seed = float(np.var(t_seed[ok])) * s / (s - 1)
        v_int = float(np.var((t_both - t_seed - t_ex)[ok])) * (s * n / ((s - 1) * (n - 1)) if n > 1 else 0.0)
        var = max(v_seed + v_ex - v_int, 0.0)
        df = _degrees_of_freedom(var, v_seed, v_ex, v_int, s, n)
        how = f"two-level {paired}bootstrap over {how_n}, t on {df:.0f} df"
    else:
        var, df = v_ex, float(n - 1)
        how = f"{paired}bootstrap over {n} examples (one seed: seed-to-seed variation not included)"
    se = math.sqrt(var)
    half = t_quantile(max(df, 1.0)) * se if var > 0 else 0.0
    return Interval(value, [value - half, value + half], how, s, n, se, df)


def _degrees_of_freedom(var: float, v_seed: float, v_ex: float, v_int: float, s: int, n: int) -> float:
    """Effective df of ``var``: its seed part is known to S-1 df, its example parts to n-1. Satterthwaite's
    formula weighs the seed part by its squared share of the variance; here by the share to the power 1.5,
    because the share is estimated from the same S seeds: when they happen to agree, Satterthwaite takes the
    variance as well known just when it is most underestimated (with 3 seeds where they dominate, its CI
    covers 90-92 %; this one 92-97 %; results/stats-coverage)."""
    if var <= 0:
        return math.inf
    share = min(v_seed / var, 1.0)
    return 1.0 / (share ** 1.5 / (s - 1) + (v_ex ** 2 + v_int ** 2 / (s - 1)) / (var ** 2 * (n - 1)))


def _weighted(per_seed: np.ndarray, seed_w: np.ndarray) -> np.ndarray:
    """Each draw's mean over resampled seeds; a method with one seed (the base) is the same in every draw."""
    if per_seed.shape[1] == 1:
        return np.broadcast_to(per_seed[:, 0], (seed_w.shape[0],))
    return (per_seed * seed_w).sum(axis=1)


def normal_delta(values: Sequence[float], stderrs: Sequence[float], statistic: Callable[..., np.ndarray]
                 ) -> tuple[float, float]:
    """``statistic`` of independent normal estimates: its value and delta-method standard error."""
    x = np.asarray(values, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = float(statistic(*x))
        grad = []
        for k in range(len(x)):
            h = 1e-6 * max(1.0, abs(x[k]))
            up, down = x.copy(), x.copy()
            up[k] += h
            down[k] -= h
            grad.append((float(statistic(*up)) - float(statistic(*down))) / (2 * h))
    return value, math.sqrt(sum((g * e) ** 2 for g, e in zip(grad, stderrs, strict=True)))


# ---- McNemar --------------------------------------------------------------------------------------------------
def mcnemar(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """McNemar's exact test of two methods' right/wrong (1/0) answers on the same examples: ``a_only`` /
    ``b_only`` count the examples only one got right; ``p`` is the two-sided binomial p-value of that split
    under "equally good" (min(1, 2 P[X <= min] for X ~ Bin(a_only + b_only, 1/2)))."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or not np.isin(np.concatenate([x, y]), (0.0, 1.0)).all():
        raise ValueError("McNemar needs two equally long lists of 0/1 answers on the same examples")
    a_only, b_only = int(((x == 1) & (y == 0)).sum()), int(((x == 0) & (y == 1)).sum())
    m, k = a_only + b_only, min(a_only, b_only)
    tail = sum(math.comb(m, i) for i in range(k + 1)) / 2 ** m if m else 1.0
    return {"a_only": a_only, "b_only": b_only, "p": min(1.0, 2 * tail)}
