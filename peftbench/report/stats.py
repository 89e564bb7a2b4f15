"""The statistics engine every report uses -- leaderboard rows, exports, plots and claims' quantities: a
statistic of methods' scores on one task (a score, a difference, a ratio such as a share of full fine-tuning's
gain) with its 95 % CI and a line saying how it was computed (docs/statistics.md).

Which interval, by what the runs hold:

* per-example results (``eval.samples``) on the same examples in every run: the two-level bootstrap of
  ``bootstrap.py`` -- seeds, then examples, paired across methods on both (one seed: over examples only);
* several seeds without them: Student t over the seeds' values of the statistic (misses the variation from
  the choice of test examples, so it is narrower than it should be -- named so);
* one seed without them: normal, from the recorded standard errors (delta method; unpaired, so wider).

A method with one run among methods with several (the zero-shot base) is taken as fixed: its one evaluation
serves every resampled seed.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from peftbench.report.bootstrap import DRAWS, Interval, hierarchical_bootstrap, mcnemar, normal_delta

Z95 = 1.959964
# two-sided 95 % Student-t quantiles by degrees of freedom (1..30); beyond: the normal 1.96
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042]


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


def separable(comparison: dict[str, Any] | None) -> bool | None:
    """Whether a difference's 95 % CI excludes 0 (None: no interval)."""
    if not comparison or comparison.get("ci95") is None:
        return None
    lo, hi = comparison["ci95"]
    return not lo <= 0.0 <= hi


# ---- one evaluation as the engine reads it -------------------------------------------------------------------
@dataclass(frozen=True)
class Scored:
    """One evaluation of one seed: its score, standard error and per-example values (doc id -> value)."""

    seed: int
    score: float
    stderr: float | None
    per_example: dict[Any, float] | None


def scored(run: dict[str, Any], metric: str) -> Scored | None:
    """A run file's evaluation of ``metric`` (its first metric when it lacks that one); None: not scored."""
    ev = run.get("eval") or {}
    metrics = ev.get("metrics") or {}
    if metric not in metrics and metrics:
        metric = next(iter(metrics))
    if metrics.get(metric) is None:
        return None
    samples = ev.get("samples") or {}
    per = (dict(zip(samples["doc_id"], samples[metric], strict=True))
           if metric in samples and "doc_id" in samples else None)
    return Scored(run.get("seed", 0), float(metrics[metric]), (ev.get("stderr") or {}).get(metric), per)


def _by_method(runs_per_method: Sequence[Sequence[dict[str, Any]]], metric: str) -> list[list[Scored]]:
    return [[s for s in (scored(r, metric) for r in runs) if s is not None] for runs in runs_per_method]


# ---- the engine --------------------------------------------------------------------------------------------
def estimate(runs_per_method: Sequence[Sequence[dict[str, Any]]], statistic: Callable[..., Any],
             metric: str = "acc", draws: int = DRAWS) -> Interval:
    """``statistic(*means)`` of each method's mean ``metric`` over its runs (one list of runs per method, one
    run per seed, all on one task and scored on test), with its 95 % CI (module docstring). ``statistic``
    takes numpy arrays (NaN where undefined: ``bootstrap.ratio``)."""
    return estimate_scored(_by_method(runs_per_method, metric), statistic, draws)


def estimate_scored(groups: Sequence[Sequence[Scored]], statistic: Callable[..., Any],
                    draws: int = DRAWS) -> Interval:
    """``estimate`` for evaluations already read (a merge check's, say): one list of ``Scored`` per method."""
    if not groups or any(not g for g in groups):
        return Interval(None, None, "not measured", 0, None)
    groups, note = _align_seeds([list(g) for g in groups])
    seeds = max(len(g) for g in groups)
    arrays = _per_example_arrays(groups)
    if arrays is not None and arrays[0].shape[1] >= 2:
        out = hierarchical_bootstrap(arrays, statistic, draws=draws)
        return _noted(out, note)
    means = [statistics.fmean(s.score for s in g) for g in groups]
    with np.errstate(divide="ignore", invalid="ignore"):
        value = float(statistic(*means))
    value_or_none = value if math.isfinite(value) else None
    if seeds >= 2:
        with np.errstate(divide="ignore", invalid="ignore"):
            per_seed = [float(statistic(*(g[i if len(g) > 1 else 0].score for g in groups))) for i in range(seeds)]
        if value_or_none is None or not all(map(math.isfinite, per_seed)):
            return Interval(value_or_none, None, f"undefined for some of {seeds} seeds", seeds, None)
        half = t95(seeds - 1) * statistics.stdev(per_seed) / math.sqrt(seeds)
        how = f"t over {seeds} seeds (no per-example results: the test examples' variation is not included)"
        return _noted(Interval(value, [value - half, value + half], how, seeds, None, half / t95(seeds - 1),
                               float(seeds - 1)), note)
    ses = [g[0].stderr for g in groups]
    if value_or_none is None or any(se is None for se in ses):
        return Interval(value_or_none, None, "one seed, no per-example results or standard errors recorded", 1, None)
    value, se = normal_delta(means, ses, statistic)  # type: ignore[arg-type]
    how = "normal from the recorded standard errors (one seed, no per-example results; unpaired)"
    return _noted(Interval(value, [value - Z95 * se, value + Z95 * se], how, 1, None, se, math.inf), note)


def _align_seeds(groups: list[list[Scored]]) -> tuple[list[list[Scored]], str]:
    """Methods with several runs keep the seeds they all have (sorted, so seed s pairs with seed s); with
    fewer than two in common, their first run each. A method with one run is kept as it is."""
    multi = [g for g in groups if len(g) > 1]
    if not multi:
        return groups, ""
    common = sorted(set.intersection(*({s.seed for s in g} for g in multi)))
    if len(common) < 2:
        return [g[:1] for g in groups], "; seeds not shared: one seed each"
    dropped = any(len(g) != len(common) for g in multi)
    aligned = [sorted((s for s in g if s.seed in common), key=lambda s: s.seed) if len(g) > 1 else g for g in groups]
    return aligned, f"; on the {len(common)} seeds all have" if dropped else ""


def _per_example_arrays(groups: list[list[Scored]]) -> list[np.ndarray] | None:
    """Per method an array (seeds, examples) aligned by doc id; None unless every evaluation logged the same
    examples."""
    per = [s.per_example for g in groups for s in g]
    if any(p is None for p in per) or any(set(p) != set(per[0]) for p in per[1:]):  # type: ignore[arg-type]
        return None
    ids = sorted(per[0])  # type: ignore[arg-type]
    return [np.array([[float(s.per_example[i]) for i in ids] for s in g]) for g in groups]  # type: ignore[index]


def _noted(out: Interval, note: str) -> Interval:
    if not note:
        return out
    return Interval(out.value, out.ci95, out.how + note, out.n_seeds, out.n_examples, out.se, out.df)


# ---- what the leaderboard asks ----------------------------------------------------------------------------------
def score(runs: Sequence[dict[str, Any]], metric: str = "acc") -> Interval:
    """One method's mean score over its runs, with its 95 % CI."""
    return estimate([runs], lambda m: m, metric)


def compare_runs(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """Method A's score minus method B's on one task (``estimate``, paired on seeds and examples), as the
    leaderboard's ``vs_best``: diff, ci95, how (also as ``method``), n_seeds, n_examples, and McNemar's exact
    test per seed both scored (``mcnemar``) when the metric is right/wrong per example."""
    out = estimate([a, b], lambda x, y: x - y, metric)
    if out.value is None:
        return None
    return {"diff": out.value, "ci95": out.ci95, "method": out.how, "how": out.how, "n": out.n_seeds,
            "n_seeds": out.n_seeds, "n_examples": out.n_examples, "mcnemar": mcnemar_runs(a, b, metric)}


def mcnemar_runs(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """McNemar's exact test of A against B on the same examples, one per seed both have (a single run on either
    side, the base say, pairs with every seed of the other). Several seeds' tests are reported apart, not
    pooled: the same example answered under several seeds is not an independent pair. Empty when the
    per-example values are not 0/1 or not on the same examples."""
    sa, sb = _by_method([a, b], metric)
    if not sa or not sb:
        return []
    pairs = ([(x, y) for x in sa for y in sb if x.seed == y.seed] if len(sa) > 1 and len(sb) > 1
             else [(x, sb[0]) for x in sa] if len(sb) == 1 else [(sa[0], y) for y in sb])
    out = []
    for x, y in pairs:
        if x.per_example is None or y.per_example is None or set(x.per_example) != set(y.per_example):
            return []
        ids = sorted(x.per_example)
        try:
            test = mcnemar([x.per_example[i] for i in ids], [y.per_example[i] for i in ids])
        except ValueError:
            return []
        out.append({"seed": x.seed if len(sa) > 1 else y.seed, **test})
    return out
