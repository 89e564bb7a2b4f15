"""The measured quantities the claims are checked against (``claims.yaml``'s ``quantity:``), each with its
95 % CI and a line saying how it was computed. Every score-based interval is the statistics engine's
(``stats.estimate``: a two-level bootstrap over seeds and examples when per-example results were logged;
docs/statistics.md) -- the same function that gives the leaderboard its intervals.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from peftbench.latency.summary import headline_regime
from peftbench.report.bootstrap import Interval, ratio
from peftbench.report.doubts import SUSPECT, runs_timing_doubts, timing_doubts
from peftbench.report.leaderboard import merge_variant
from peftbench.report.stats import Scored, estimate, estimate_scored
from peftbench.results.record import scored_on_test


# ---- the evidence: runs by task and method, latency by method --------------------------------------------
class Evidence:
    """Ok runs scored on test (a tuning grid's validation cells are left out), by task and method."""

    def __init__(self, runs: list[dict[str, Any]], latency: dict[str, dict[str, Any]]) -> None:
        self.by_task: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for r in runs:
            if r.get("status") == "ok" and scored_on_test(r):
                self.by_task.setdefault(r["task"], {}).setdefault(r["method"], []).append(r)
        self.latency = latency  # method -> latency section (``peftbench latency`` or run files)
        self.metric = "acc"

    def runs(self, task: str, method: str) -> list[dict[str, Any]]:
        return self.by_task.get(task, {}).get(method, [])


def _triple(out: Interval) -> tuple[Any, Any, str]:
    return out.value, out.ci95, out.how


def _of_scores(ev: Evidence, task: str, methods: list[str], fn: Callable[..., Any]) -> tuple[Any, Any, str]:
    runs = [ev.runs(task, m) for m in methods]
    if any(not rs for rs in runs):
        return None, None, ""
    return _triple(estimate(runs, fn, ev.metric))


def share_of_full(ev: Evidence, task: str, method: str, definition: str) -> tuple[Any, Any, str]:
    """``gain``: (method - base) / (full - base); else method / full."""
    if definition == "gain":
        return _of_scores(ev, task, [method, "full", "base"], lambda m, f, b: ratio(m - b, f - b))
    return _of_scores(ev, task, [method, "full"], lambda m, f: ratio(m, f))


def relative_gap(ev: Evidence, task: str, method: str, reference: str) -> tuple[Any, Any, str]:
    """(reference - method) / reference."""
    return _of_scores(ev, task, [method, reference], lambda m, r: ratio(r - m, r))


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
    flags = runs_timing_doubts(runs_a + runs_b) if field == "train_time" else []
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


def merge_score_change(ev: Evidence, task: str, method: str, path: str) -> tuple[Any, Any, str]:
    """The merged model's lm-eval score relative to the unmerged one's, (merged - unmerged) / unmerged of the
    seed-averaged scores. ``path``: ``merged`` (the run's own merge, in its dtype) or a ``merge.precision``
    study (``merge_in_bf16``, ``merge_fp32_then_cast``: against the unmerged model in bf16).

    CI: the engine's (``stats.estimate_scored``), the merged and unmerged evaluations of each seed taken as two
    methods paired on seeds and examples -- the two scores differ only where the merge changed an answer, so
    the paired bootstrap is the test the claim needs; without per-example results, t over the seeds' changes,
    or with one seed normal from the two standard errors (wider: unpaired)."""
    merged, unmerged = [], []
    for r in ev.runs(task, method):
        e = merge_variant(r, path).get("eval") or {}
        if e.get("score") is None or not e.get("reference"):
            continue
        ref_eval = (r.get("eval") or {}) if path == "merged" else merge_variant(r, "unmerged")
        ref_se = ((ref_eval.get("stderr") or {}).get(e.get("metric")) if path == "merged" else ref_eval.get("stderr"))
        seed = r.get("seed", 0)
        merged.append(Scored(seed, e["score"], e.get("stderr"), _values(e.get("samples"), e.get("metric"))))
        unmerged.append(Scored(seed, e["reference"], ref_se, _values(ref_eval.get("samples"), e.get("metric"))))
    if not merged:
        return None, None, ""
    return _triple(estimate_scored([merged, unmerged], lambda m, u: ratio(m - u, u)))


def _values(samples: dict[str, Any] | None, metric: str | None) -> dict[Any, float] | None:
    if not samples or metric not in samples or "doc_id" not in samples:
        return None
    return dict(zip(samples["doc_id"], samples[metric], strict=True))


QUANTITIES: dict[str, Callable[..., tuple[Any, Any, str]]] = {
    "share_of_full": share_of_full, "relative_gap": relative_gap, "ratio_to": ratio_to,
    "artifact_ratio": artifact_ratio, "trainable_pct": trainable_pct, "latency_overhead": latency_overhead,
    "merge_score_change": merge_score_change,
}
LATENCY_QUANTITIES = {"latency_overhead"}


