"""The leaderboard as flat records, and those records as CSV or LaTeX (``peftbench report --format``)."""

from __future__ import annotations

from typing import Any

from peftbench.report.leaderboard import rows_for_task

EXPORT_COLUMNS = ("task", "method", "seeds", "status", "metric", "score", "stderr", "score_sd", "score_ci_low",
                  "score_ci_high", "score_how",
                  "vs_best", "vs_best_ci_low", "vs_best_ci_high", "vs_best_method", "tied_with_best", "delta_base",
                  "pct_of_full_gain", "pct_of_full_gain_ci_low", "pct_of_full_gain_ci_high", "trainable", "trainable_pct", "peak_memory_bytes", "train_time_s",
                  "tokens_per_s", "artifact_bytes", "latency_unmerged", "latency_merged")


def export_rows(session: dict[str, Any], runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The leaderboard as flat records (CSV, JSON, LaTeX)."""
    out = []
    tasks = session.get("tasks") or {r["task"]: {} for r in runs}
    for task, info in tasks.items():
        metric = info.get("metric", "acc")
        out += [_record(task, metric, r) for r in rows_for_task(runs, task, metric)]
    return out


def _record(task: str, metric: str, r: dict[str, Any]) -> dict[str, Any]:
    """One leaderboard row in ``EXPORT_COLUMNS``, then a ``retention_<task>_delta`` per task kept. Every
    interval is the statistics engine's (``stats``; ``score_how`` and ``vs_best_method`` say which procedure)."""
    ci, vs = r.get("score_ci") or [None, None], r.get("vs_best") or {}
    vci, gci = vs.get("ci95") or [None, None], r.get("pct_of_full_gain_ci") or [None, None]
    rec = {"task": task, "method": r["method"], "seeds": r["seeds"], "status": r["status"], "metric": metric,
           "score": r["score"], "stderr": r["stderr"], "score_sd": r.get("score_sd"), "score_ci_low": ci[0],
           "score_ci_high": ci[1], "score_how": r.get("score_how"),
           "vs_best": vs.get("diff"), "vs_best_ci_low": vci[0], "vs_best_ci_high": vci[1],
           "vs_best_method": vs.get("method"), "tied_with_best": r.get("tied_with_best"),
           "delta_base": r["delta"], "pct_of_full_gain": r["pct_of_full_gain"], "pct_of_full_gain_ci_low": gci[0],
           "pct_of_full_gain_ci_high": gci[1], "trainable": r["trainable"],
           "trainable_pct": r["trainable_pct"], "peak_memory_bytes": r["peak_memory"],
           "train_time_s": r["train_time"], "tokens_per_s": r["tokens_per_s"],
           "artifact_bytes": r["artifact_bytes"], "latency_unmerged": r["latency_unmerged"],
           "latency_merged": r["latency_merged"]}
    rec.update({f"retention_{k}_delta": v.get("delta") for k, v in (r.get("retention") or {}).items()})
    rec.update(_tuning_columns(r.get("tuning")))
    return rec


def _tuning_columns(tuning: dict[str, Any] | None) -> dict[str, Any]:
    """A tuned method's choice, its grid and the split it was chosen on (none for an untuned row, so exports
    of untuned sessions keep their columns)."""
    if not tuning or tuning.get("role") != "final":
        return {}
    values = tuning.get("values") or {}
    return {"tuned_values": ";".join(f"{k}={v}" for k, v in values.items()),
            "tuning_grid": ";".join(f"{k}={'|'.join(map(str, v))}" for k, v in (tuning.get("grid") or {}).items()),
            "tuned_on": "validation", "tuned_on_edge": ";".join(tuning.get("on_edge") or []) or None}


def to_csv(records: list[dict[str, Any]]) -> str:
    """The records' columns in ``EXPORT_COLUMNS`` order, any others after by name; a missing value is empty."""
    import csv
    import io

    present = list(dict.fromkeys(k for r in records for k in r))
    cols = [c for c in EXPORT_COLUMNS if c in present] + sorted(set(present) - set(EXPORT_COLUMNS))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in records:
        w.writerow({k: "" if r.get(k) is None else r[k] for k in cols})
    return buf.getvalue()


def to_latex(records: list[dict[str, Any]], model: str = "") -> str:
    """One booktabs table per task, for ``\\input`` in a paper (needs ``\\usepackage{booktabs}``)."""
    out = []
    for task in dict.fromkeys(r["task"] for r in records):
        rows = [r for r in records if r["task"] == task]
        metric = rows[0]["metric"]
        out += [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{lrrrrrr}", r"\toprule",
                f"Method & {_tex(metric)} & vs.\\ best & $\\Delta$ base & Trainable (\\%) & Peak mem. (GiB) & "
                r"Artifact (MiB) \\", r"\midrule"]
        out += [_latex_row(r) for r in rows]
        out += [r"\bottomrule", r"\end{tabular}",
                f"\\caption{{{_tex(task)}: {_tex(metric)} of each method{(' on ' + _tex(model)) if model else ''}. "
                r"vs.\ best: points behind the best method; $^{\approx}$: its 95\% CI contains 0 (a tie). "
                r"$\Delta$ base: points over the zero-shot base.}",
                f"\\label{{tab:peftbench-{_tex(task).replace(chr(92), '')}}}", r"\end{table}", ""]
    return "\n".join(out)


def _latex_row(r: dict[str, Any]) -> str:
    score = "--" if r["score"] is None else (
        f"{r['score']:.3f} [{r['score_ci_low']:.3f}, {r['score_ci_high']:.3f}]" if r["score_ci_low"] is not None
        else f"{r['score']:.3f} $\\pm$ {r['stderr']:.3f}" if r["stderr"] is not None else f"{r['score']:.3f}")
    if r["method"] == "base" or r["vs_best"] is None:
        vs = "--"
    elif r["vs_best_method"] == "best":
        vs = "best"
    else:
        vs = f"{r['vs_best'] * 100:+.1f}" + (r"$^{\approx}$" if r["tied_with_best"] else "")
    delta = "--" if r["delta_base"] is None else f"{r['delta_base'] * 100:+.1f}"
    tp = "--" if r["method"] == "base" or r["trainable_pct"] is None else f"{r['trainable_pct']:.2f}"
    mem = "--" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / 2**30:.1f}"
    art = "--" if r["artifact_bytes"] is None else f"{r['artifact_bytes'] / 2**20:.1f}"
    name = "base (zero-shot)" if r["method"] == "base" else r["method"]
    return f"{_tex(name)} & {score} & {vs} & {delta} & {tp} & {mem} & {art} \\\\"


def _tex(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("$", r"\$"), ("{", r"\{"), ("}", r"\}")):
        text = text.replace(a, b)
    return text
