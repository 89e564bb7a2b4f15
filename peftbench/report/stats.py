"""Uncertainty for leaderboards and claims: CIs over seeds, paired differences, bootstrap over examples.

Which interval a comparison gets depends on what the runs hold:

* several seeds of both methods (the same seeds): the **paired difference over seeds**, with a
  Student-t 95 % CI (seed-to-seed variation is the variation a rerun shows);
* one seed each, with per-example results (``eval.samples``): a **paired bootstrap over the evaluation
  examples** (both methods scored the same examples);
* otherwise: a normal approximation from the two standard errors (unpaired, so conservative).
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from typing import Any

# two-sided 95 % Student-t quantiles by degrees of freedom (1..30); beyond: the normal 1.96
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042]
Z95 = 1.959964


def t95(df: int) -> float:
    if df < 1:
        raise ValueError("a t interval needs at least 2 values")
    return _T95[df - 1] if df <= len(_T95) else Z95


def mean_ci(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation and the t-based 95 % CI of the mean (n >= 2; else no interval)."""
    vals = [float(v) for v in values]
    n = len(vals)
    m = statistics.fmean(vals)
    if n < 2:
        return {"mean": m, "sd": None, "n": n, "ci95": None}
    sd = statistics.stdev(vals)
    half = t95(n - 1) * sd / math.sqrt(n)
    return {"mean": m, "sd": sd, "n": n, "ci95": [m - half, m + half]}


def paired_seeds(a: dict[int, float], b: dict[int, float]) -> dict[str, Any] | None:
    """a - b over the seeds both have: mean difference and its t 95 % CI (None with fewer than 2)."""
    common = sorted(set(a) & set(b))
    if len(common) < 2:
        return None
    out = mean_ci([a[s] - b[s] for s in common])
    return {"diff": out["mean"], "ci95": out["ci95"], "n": len(common), "method": "paired over seeds"}


def paired_bootstrap(a: Sequence[float], b: Sequence[float], n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """mean(a) - mean(b) for per-example results of the same examples; percentile bootstrap 95 % CI."""
    if len(a) != len(b) or not a:
        raise ValueError("paired bootstrap needs two equally long, non-empty per-example lists")
    n = len(a)
    d = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    rng = random.Random(seed)
    boots = sorted(sum(d[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    return {"diff": sum(d) / n, "ci95": [boots[int(0.025 * (n_boot - 1))], boots[int(0.975 * (n_boot - 1))]],
            "n": n, "method": "paired bootstrap over examples"}


def normal_diff(a: float, se_a: float, b: float, se_b: float) -> dict[str, Any]:
    """a - b with a normal 95 % CI from two independent standard errors."""
    half = Z95 * math.sqrt(se_a ** 2 + se_b ** 2)
    return {"diff": a - b, "ci95": [a - b - half, a - b + half], "n": None, "method": "normal approximation"}


def separable(comparison: dict[str, Any] | None) -> bool | None:
    """Whether a difference's 95 % CI excludes 0 (None: no interval)."""
    if not comparison or comparison.get("ci95") is None:
        return None
    lo, hi = comparison["ci95"]
    return not lo <= 0.0 <= hi


# ---- comparing two methods' runs on one task --------------------------------------------------------------
def _metric(run: dict[str, Any], metric: str) -> tuple[float | None, float | None]:
    ev = run.get("eval") or {}
    return (ev.get("metrics") or {}).get(metric), (ev.get("stderr") or {}).get(metric)


def _samples(run: dict[str, Any], metric: str) -> dict[int, float] | None:
    s = (run.get("eval") or {}).get("samples") or {}
    if metric not in s or "doc_id" not in s:
        return None
    return dict(zip(s["doc_id"], s[metric], strict=True))


def compare_runs(a: list[dict[str, Any]], b: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """Method A's score minus method B's on one task, from their ok runs (one per seed): paired over seeds
    when both have 2+ common seeds, else a paired bootstrap over examples when one seed each logged them,
    else a normal approximation."""
    sa = {r["seed"]: _metric(r, metric) for r in a if _metric(r, metric)[0] is not None}
    sb = {r["seed"]: _metric(r, metric) for r in b if _metric(r, metric)[0] is not None}
    if not sa or not sb:
        return None
    paired = paired_seeds({k: v[0] for k, v in sa.items()}, {k: v[0] for k, v in sb.items()})
    if paired is not None:
        return paired
    if len(sa) == 1 and len(sb) == 1:
        xa, xb = _samples(a[0], metric), _samples(b[0], metric)
        if xa and xb and set(xa) == set(xb):
            ids = sorted(xa)
            return paired_bootstrap([xa[i] for i in ids], [xb[i] for i in ids])
    ma, mb = statistics.fmean(v[0] for v in sa.values()), statistics.fmean(v[0] for v in sb.values())
    ses_a = [v[1] for v in sa.values() if v[1] is not None]
    ses_b = [v[1] for v in sb.values() if v[1] is not None]
    if not ses_a or not ses_b:
        return {"diff": ma - mb, "ci95": None, "n": None, "method": "no uncertainty recorded"}
    return normal_diff(ma, statistics.fmean(ses_a), mb, statistics.fmean(ses_b))
