"""The measured quantities the claims are checked against (``claims.yaml``'s ``quantity:``), each with its
95 % CI and a line saying how it was computed.

How score ratios get their CI: when the runs involved each logged per-example results for the same
examples (one seed), a paired bootstrap over the examples; otherwise independent normal draws from each
score's standard error (over seeds: the standard error of the mean) -- 4,000 draws, percentile interval.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable
from typing import Any

from peftbench.latency.summary import headline_regime
from peftbench.report.doubts import SUSPECT, timing_doubts
from peftbench.report.leaderboard import merge_variant
from peftbench.report.stats import Z95, mean_ci
from peftbench.system.memory import neighbour_flags

DRAWS = 4000


# ---- the evidence: runs by task and method, latency by method --------------------------------------------
class Evidence:
    def __init__(self, runs: list[dict[str, Any]], latency: dict[str, dict[str, Any]]) -> None:
        self.by_task: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for r in runs:
            if r.get("status") == "ok":
                self.by_task.setdefault(r["task"], {}).setdefault(r["method"], []).append(r)
        self.latency = latency  # method -> latency section (``peftbench latency`` or run files)
        self.metric = "acc"

    def runs(self, task: str, method: str) -> list[dict[str, Any]]:
        return self.by_task.get(task, {}).get(method, [])


def _score_draws(runs: list[dict[str, Any]], metric: str, rng: random.Random) -> list[float] | None:
    scores = [(r.get("eval") or {}).get("metrics", {}).get(metric) for r in runs]
    ses = [(r.get("eval") or {}).get("stderr", {}).get(metric) for r in runs]
    if not scores or any(s is None for s in scores):
        return None
    mean = statistics.fmean(scores)
    if len(scores) >= 2:
        se = statistics.stdev(scores) / len(scores) ** 0.5
    elif ses[0] is not None:
        se = ses[0]
    else:
        return None
    return [rng.gauss(mean, se) for _ in range(DRAWS)]


def _per_example(runs_list: list[list[dict[str, Any]]], metric: str) -> list[list[float]] | None:
    """Per-example values of single-seed runs that all logged the same examples, aligned by doc id."""
    if any(len(rs) != 1 for rs in runs_list):
        return None
    maps = []
    for rs in runs_list:
        s = (rs[0].get("eval") or {}).get("samples") or {}
        if metric not in s or "doc_id" not in s:
            return None
        maps.append(dict(zip(s["doc_id"], s[metric], strict=True)))
    ids = sorted(maps[0])
    if any(set(m) != set(ids) for m in maps):
        return None
    return [[m[i] for i in ids] for m in maps]


def _ratio_ci(ev: Evidence, task: str, methods: list[str], fn: Callable[..., float | None]
              ) -> tuple[float | None, list[float] | None, str]:
    """fn(*scores) with a CI: paired bootstrap over examples when possible, else normal draws."""
    runs_list = [ev.runs(task, m) for m in methods]
    if any(not rs for rs in runs_list):
        return None, None, ""
    means = [statistics.fmean((((r.get("eval") or {}).get("metrics") or {}).get(ev.metric) or 0.0) for r in rs)
             for rs in runs_list]
    point = fn(*means)
    rng = random.Random(0)
    per = _per_example(runs_list, ev.metric)
    values = []
    if per is not None:
        n = len(per[0])
        for _ in range(DRAWS):
            idx = [rng.randrange(n) for _ in range(n)]
            v = fn(*(sum(p[i] for i in idx) / n for p in per))
            if v is not None:
                values.append(v)
        how = "paired bootstrap over examples"
    else:
        draws = [_score_draws(rs, ev.metric, rng) for rs in runs_list]
        if any(d is None for d in draws):
            return point, None, "no standard errors recorded"
        for vals in zip(*draws, strict=True):
            v = fn(*vals)
            if v is not None:
                values.append(v)
        how = "normal draws from the standard errors"
    if len(values) < DRAWS // 2:
        return point, None, "undefined for most draws"
    values.sort()
    return point, [values[int(0.025 * (len(values) - 1))], values[int(0.975 * (len(values) - 1))]], how


def share_of_full(ev: Evidence, task: str, method: str, definition: str) -> tuple[Any, Any, str]:
    if definition == "gain":
        def gain(m: float, f: float, b: float) -> float | None:
            return (m - b) / (f - b) if abs(f - b) > 1e-9 else None

        return _ratio_ci(ev, task, [method, "full", "base"], gain)
    return _ratio_ci(ev, task, [method, "full"], lambda m, f: m / f if f else None)


def relative_gap(ev: Evidence, task: str, method: str, reference: str) -> tuple[Any, Any, str]:
    return _ratio_ci(ev, task, [method, reference], lambda m, r: (r - m) / r if r else None)


def _field(runs: list[dict[str, Any]], field: str) -> list[float]:
    get = {"peak_memory": lambda r: (r.get("train") or {}).get("peak_memory_bytes"),
           "train_time": lambda r: (r.get("train") or {}).get("wall_time_s"),
           "artifact": lambda r: (r.get("artifact") or {}).get("bytes"),
           "trainable_pct": lambda r: (r.get("params") or {}).get("trainable_pct")}[field]
    return [float(v) for v in (get(r) for r in runs) if v is not None]


def ratio_to(ev: Evidence, task: str, method: str, reference: str, field: str) -> tuple[Any, Any, str]:
    """``field``'s mean over the method's runs / over the reference's. A training time measured while other
    processes shared the GPU or kept the host busy (either side) decides nothing: it is marked suspect, as a
    latency figure would be. Peak memory is the process's own allocator peak and stands."""
    runs_a, runs_b = ev.runs(task, method), ev.runs(task, reference)
    a, b = _field(runs_a, field), _field(runs_b, field)
    if not a or not b:
        return None, None, ""
    how = f"one measurement each ({len(a)} and {len(b)} runs)"
    flags = sorted({f for r in runs_a + runs_b for f in neighbour_flags(r)}) if field == "train_time" else []
    return statistics.fmean(a) / statistics.fmean(b), None, how + (f"; {SUSPECT}: {', '.join(flags)}" if flags else "")


def artifact_ratio(ev: Evidence, task: str, method: str, reference: str) -> tuple[Any, Any, str]:
    a, b = _field(ev.runs(task, method), "artifact"), _field(ev.runs(task, reference), "artifact")
    if not a or not b:
        return None, None, ""
    return statistics.fmean(b) / statistics.fmean(a), None, f"{reference} bytes / {method} bytes"


def trainable_pct(ev: Evidence, task: str, method: str) -> tuple[Any, Any, str]:
    vals = _field(ev.runs(task, method), "trainable_pct")
    return (statistics.fmean(vals), None, "trainable / total parameters, %") if vals else (None, None, "")


def latency_overhead(ev: Evidence, task: str, method: str, mode: str) -> tuple[Any, Any, str]:
    lat = ev.latency.get(method)
    if not lat:
        return None, None, ""
    regime = headline_regime(lat)
    cells = [c for c in (lat.get("regimes") or {}).get(regime, []) if mode in c.get("overhead", {})]
    if not cells:
        return None, None, ""
    c = cells[0]
    o = c["overhead"][mode]
    spread = [x["overhead"][mode]["ratio"] for x in cells]
    how = (f"{regime} regime, batch {c['batch_size']} x prompt {c['prompt_tokens']}; over "
           f"{len(cells)} shapes {min(spread) * 100:+.1f}% to {max(spread) * 100:+.1f}%")
    suspect = timing_doubts(lat, regime)
    return o["ratio"], o["ci95"], how + (f"; {SUSPECT}: {', '.join(suspect)}" if suspect else "")


def _aligned(a: dict[str, Any] | None, b: dict[str, Any] | None, metric: str) -> tuple[list[float], list[float]] | None:
    """Two evaluations' per-example values of ``metric`` on the same examples, aligned by doc id."""
    if not a or not b or metric not in a or metric not in b:
        return None
    ma, mb = dict(zip(a["doc_id"], a[metric], strict=True)), dict(zip(b["doc_id"], b[metric], strict=True))
    if set(ma) != set(mb) or not ma:
        return None
    ids = sorted(ma)
    return [float(ma[i]) for i in ids], [float(mb[i]) for i in ids]


def merge_score_change(ev: Evidence, task: str, method: str, path: str) -> tuple[Any, Any, str]:
    """The merged model's lm-eval score relative to the unmerged one's, (merged - unmerged) / unmerged, mean
    over seeds. ``path``: ``merged`` (the run's own merge, in its dtype) or a ``merge.precision`` study
    (``merge_in_bf16``, ``merge_fp32_then_cast``: against the unmerged model in bf16).

    CI: when every seed logged both evaluations per example, a paired bootstrap over the examples (the same
    resampled examples for both models of a seed; seeds kept as they are) -- the two scores differ only where
    the merge changed an answer, so this is the test the claim needs. Otherwise Student t over the per-seed
    changes; with one seed, normal from the two scores' standard errors taken as independent (which
    overstates it)."""
    pairs, aligned = [], []
    for r in ev.runs(task, method):
        e = merge_variant(r, path).get("eval") or {}
        if e.get("score") is None or not e.get("reference"):
            continue
        ref_eval = (r.get("eval") or {}) if path == "merged" else merge_variant(r, "unmerged")
        ref_se = ((ref_eval.get("stderr") or {}).get(e.get("metric")) if path == "merged" else ref_eval.get("stderr"))
        pairs.append((e["score"], e["reference"], e.get("stderr"), ref_se))
        aligned.append(_aligned(e.get("samples"), ref_eval.get("samples"), e.get("metric", "")))
    if not pairs:
        return None, None, ""
    changes = [(s - ref) / ref for s, ref, _, _ in pairs]
    value = statistics.fmean(changes)
    if all(a is not None for a in aligned):
        import numpy as np

        rng = np.random.default_rng(0)
        draws = np.zeros(DRAWS)
        for merged_vals, ref_vals in aligned:  # type: ignore[misc]
            a, b = np.asarray(merged_vals), np.asarray(ref_vals)
            idx = rng.integers(0, len(a), size=(DRAWS, len(a)))
            ref_means = b[idx].mean(axis=1)
            draws += np.divide(a[idx].mean(axis=1) - ref_means, ref_means, out=np.zeros(DRAWS), where=ref_means > 0)
        draws = np.sort(draws / len(aligned))
        return value, [float(draws[int(0.025 * (DRAWS - 1))]), float(draws[int(0.975 * (DRAWS - 1))])], \
            f"mean over {len(changes)} seed(s), paired bootstrap over the examples"
    if len(changes) >= 2:
        out = mean_ci(changes)
        return value, out["ci95"], f"mean over {len(changes)} seeds, t CI from their paired changes " \
                                   "(per-example results not logged)"
    s, ref, s_se, ref_se = pairs[0]
    if s_se is None or ref_se is None:
        return value, None, "one seed, no standard errors recorded"
    # d/ds (s/ref - 1) = 1/ref, d/dref = -s/ref^2
    half = Z95 * ((s_se / ref) ** 2 + (s * ref_se / ref ** 2) ** 2) ** 0.5
    return value, [value - half, value + half], \
        "one seed: CI from the two scores' standard errors taken as independent (wider than paired)"


QUANTITIES: dict[str, Callable[..., tuple[Any, Any, str]]] = {
    "share_of_full": share_of_full, "relative_gap": relative_gap, "ratio_to": ratio_to,
    "artifact_ratio": artifact_ratio, "trainable_pct": trainable_pct, "latency_overhead": latency_overhead,
    "merge_score_change": merge_score_change,
}
LATENCY_QUANTITIES = {"latency_overhead"}


