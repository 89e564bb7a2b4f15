"""Leaderboard rows computed from run files (pure data; ``leaderboard_table.py`` renders them)."""

from __future__ import annotations

import statistics
from typing import Any

from peftbench.latency.summary import latency_headline, sanity_failures
from peftbench.report.bootstrap import ratio
from peftbench.report.doubts import beside_cells
from peftbench.report.stats import compare_runs, estimate, mean_ci, score, separable
from peftbench.results.record import scored_on_test
from peftbench.system.memory import neighbour_flags


def _score(run: dict[str, Any], metric: str) -> tuple[float | None, float | None]:
    ev = run.get("eval") or {}
    metrics, stderr = ev.get("metrics") or {}, ev.get("stderr") or {}
    if metric not in metrics and metrics:
        metric = next(iter(metrics))
    return metrics.get(metric), stderr.get(metric)


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def rows_for_task(runs: list[dict[str, Any]], task: str, metric: str = "acc") -> list[dict[str, Any]]:
    """One row per method (seeds averaged), the base row first, then by score. Cells scored on a validation
    split (a tuning grid's) are left out: rows hold test scores only. Every interval is ``stats``'s."""
    by_method: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        if r["task"] == task and scored_on_test(r):
            by_method.setdefault(r["method"], []).append(r)
    base_runs = [r for r in by_method.get("base", []) if r["status"] == "ok"]
    base_score = _mean([_score(r, metric)[0] for r in base_runs])
    rows = []
    for method, cells in by_method.items():
        ok = [r for r in cells if r["status"] == "ok"]
        statuses = sorted({r["status"] for r in cells})
        scores = [_score(r, metric) for r in ok]
        mean = _mean([s for s, _ in scores])
        se = _mean([e for _, e in scores])
        train = [r.get("train") or {} for r in ok]
        lat = [_latency_headline(r.get("latency") or {}) for r in ok]
        reason = next((r.get("reason") or (r.get("error") or {}).get("message") for r in cells
                       if r["status"] != "ok"), None)
        scored = [s for s, _ in scores if s is not None]  # none when the cells were not scored (evaluate=off)
        interval = score(ok, metric) if scored else None
        rows.append({
            "method": method, "seeds": len(ok), "status": ",".join(statuses), "reason": reason,
            "score": mean, "stderr": se, "score_ci": interval.ci95 if interval else None,
            "score_how": interval.how if interval else None,
            "score_sd": mean_ci(scored)["sd"] if len(scored) >= 2 else None, "_runs": ok,
            "tuning": next((r["tuning"] for r in ok + cells if r.get("tuning")), None),
            "delta": (mean - base_score) if mean is not None and base_score is not None and method != "base" else None,
            "trainable": _mean([(r.get("params") or {}).get("trainable") for r in ok]),
            "trainable_pct": _mean([(r.get("params") or {}).get("trainable_pct") for r in ok]),
            "peak_memory": _mean([t.get("peak_memory_bytes") for t in train]),
            "train_time": _mean([t.get("wall_time_s") for t in train]),
            "tokens_per_s": _mean([t.get("tokens_per_s") for t in train]),
            "artifact_bytes": _mean([(r.get("artifact") or {}).get("bytes") for r in ok]),
            "latency_unmerged": _mean([x.get("unmerged") for x in lat]),
            "latency_merged": _mean([x.get("merged") for x in lat]),
            "retention": _retention(ok, base_runs if method != "base" else ()),
            "merge_ok": all((r.get("merge") or {}).get("ok", True) for r in ok) if ok else None,
            "reload_ok": all((r.get("reload") or {}).get("ok", True) for r in ok) if ok else None,
            # judged again from each stored entry: older files stored the lenient verdict (CI spanning 0 passed)
            "latency_sane": not any(sanity_failures(r.get("latency") or {}) for r in ok) if ok else None,
            "gpu_shared": any("GPU shared" in neighbour_flags(r) for r in ok),
            "host_busy": any("host busy" in neighbour_flags(r) for r in ok),
            "beside_cells": any(beside_cells(r) for r in ok),
            # --jobs: tok/s and latency taken from the cost phase (measured alone), train s and memory not
            "costs_alone": bool(ok) and all(str(t.get("tokens_per_s_measured_in", "")).startswith("cost/")
                                            for t in train),
        })
    full = next((r for r in rows if r["method"] == "full"), None)
    for row in rows:
        gain_full = full["delta"] if full else None
        row["pct_of_full_gain"] = (100.0 * row["delta"] / gain_full
                                   if row["delta"] is not None and gain_full not in (None, 0) else None)
        row["pct_of_full_gain_ci"] = _gain_share_ci(row, full, base_runs, metric)
    rows.sort(key=lambda r: (r["method"] != "base", -(r["score"] if r["score"] is not None else -1e9)))
    _mark_ties(rows, metric)
    return rows


def _gain_share_ci(row: dict[str, Any], full: dict[str, Any] | None, base_runs: list[dict[str, Any]],
                   metric: str) -> list[float] | None:
    """The 95 % CI of a row's % of full fine-tuning's gain over the base (the claims' share_of_full)."""
    if row["pct_of_full_gain"] is None or full is None or row["method"] in ("base", "full"):
        return None
    out = estimate([row["_runs"], full["_runs"], base_runs], lambda m, f, b: 100.0 * ratio(m - b, f - b), metric)
    return out.ci95


def _mark_ties(rows: list[dict[str, Any]], metric: str) -> None:
    """Compare every method with the best-scoring one (``stats.compare_runs``: paired on seeds and examples);
    a method whose difference has a 95 % CI containing 0 is tied with the best, not ranked below it."""
    ranked = [r for r in rows if r["method"] != "base" and r["score"] is not None]
    for r in rows:
        r["vs_best"], r["tied_with_best"] = None, None
    if not ranked:
        return
    best = ranked[0]
    best["vs_best"] = {"diff": 0.0, "ci95": None, "method": "best"}
    for r in ranked[1:]:
        cmp = compare_runs(r["_runs"], best["_runs"], metric)
        r["vs_best"] = cmp
        sep = separable(cmp)
        r["tied_with_best"] = None if sep is None else not sep


def _retention(runs: list[dict[str, Any]], base_runs: list[dict[str, Any]] = ()) -> dict[str, dict[str, float | None]]:
    """Per retention task: mean score and mean change vs the base model over the seeds (forgetting < 0). A
    cell that ran beside its base row (another shard) has no base score to subtract: it is taken from the
    base row's own retention score of that task."""
    names = list(dict.fromkeys(n for r in runs for n in (r.get("retention") or {})))
    out = {}
    for name in names:
        entries = [(r.get("retention") or {}).get(name) or {} for r in runs]
        base = _mean([((b.get("retention") or {}).get(name) or {}).get("score") for b in base_runs])
        deltas = [e.get("delta") if e.get("delta") is not None or base is None or e.get("score") is None
                  else e["score"] - base for e in entries]
        out[name] = {"score": _mean([e.get("score") for e in entries]),
                     "delta": _mean(deltas),
                     "stderr": _mean([e.get("stderr") for e in entries]),
                     "errors": sum(1 for e in entries if e.get("error"))}  # seeds whose scoring failed
    return out


def retention_tasks(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(n for r in rows for n in r.get("retention") or {}))


# which direction is better for each column (for highlighting)
BEST = {"score": max, "delta": max, "pct_of_full_gain": max, "trainable": min, "peak_memory": min,
        "train_time": min, "tokens_per_s": max, "artifact_bytes": min, "latency_unmerged": min,
        "latency_merged": min}


def best_values(rows: list[dict[str, Any]]) -> dict[str, float]:
    out = {}
    for col, pick in BEST.items():
        vals = [r[col] for r in rows if r["method"] != "base" and r[col] is not None]
        if vals:
            out[col] = pick(vals)
    return out


def skipped_studies(runs: list[dict[str, Any]]) -> list[str]:
    """What the finished cells of ``runs`` left out and why, once per reason, naming the methods (tuning grid
    cells left out: they skip by design): e.g. "merge-precision study: skipped on cpu (...) for lora"."""
    by_reason: dict[str, set[str]] = {}
    for r in runs:
        why = (r.get("merge") or {}).get("precision_skipped")
        if why and r.get("status") == "ok" and scored_on_test(r):
            by_reason.setdefault(why, set()).add(r["method"])
    return [f"merge-precision study: {why} for {', '.join(sorted(methods))}" for why, methods in by_reason.items()]


def merge_variant(run: dict[str, Any], path: str) -> dict[str, Any]:
    """A run's merge entry: ``merged`` (the merge in the run's dtype, against the unmerged model) or an entry of
    the ``merge.precision`` study (``merge_fp32_then_cast``, ``merge_in_bf16``: against its ``unmerged`` model
    in bf16)."""
    merge = run.get("merge") or {}
    return merge if path == "merged" else (merge.get("precision") or {}).get(path) or {}


def dequantization_only(runs: list[dict[str, Any]]) -> bool:
    """Whether every one of ``runs`` whose merge is beyond the logit tolerance (at least one) is a lossy merge
    within the tolerance of the unmerged model on the same dequantized base (``merge.same_base``): the gap is the
    dequantization, not the merge. The merge fidelity table and the results document's note both judge so."""
    beyond = [r for r in runs if (r.get("merge") or {}).get("ok") is False]
    return bool(beyond) and all(r["merge"].get("lossy") and (r["merge"].get("same_base") or {}).get("ok")
                                for r in beyond)


def _latency_headline(latency: dict[str, Any]) -> dict[str, Any]:
    """Decode overhead per mode at the headline shape and regime (``latency_headline``, worked out from the
    grid, so files written before it preferred the static regime read the same way; older run files: their
    stored summary or single shape)."""
    if latency.get("regimes"):
        return latency_headline(latency).get("overhead") or {}
    summary = latency.get("summary")
    if summary is not None:
        return summary.get("overhead") or {}
    return latency.get("overhead") or {}
