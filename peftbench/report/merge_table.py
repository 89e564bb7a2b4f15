"""The merge fidelity table: how closely each method's merged model matches its unmerged one."""

from __future__ import annotations

from typing import Any

from peftbench.report.cell_text import DASH, or_dash
from peftbench.report.leaderboard import dequantization_only, merge_variant, skipped_studies
from peftbench.results.record import scored_on_test

# the two ways to merge for bf16 serving (``merge.precision``), in the order of their columns
BF16_MERGES = ("merge_fp32_then_cast", "merge_in_bf16")

CAPTION = ("max Δ logit: the largest absolute logit difference over the probe prompts and seeds; greedy: "
           "the share of greedy tokens that match, the lowest over seeds; Δ pts: the merged model's lm-eval "
           "score minus the unmerged one's, in points, mean over seeds (range). Merging for bf16 serving, "
           "against the unmerged model in bf16: fp32→bf16 merges in fp32 then casts, in bf16 casts then "
           "merges. lossy: QLoRA merges into its dequantized 4-bit base. mismatch: merged logits beyond "
           "the method's tolerance. dequantization > tol: beyond it from the 4-bit model, but within it "
           "from the unmerged model on the same dequantized base: the gap is the dequantization, not the "
           "merge.")


def merge_tables(runs: list[dict[str, Any]], title: str = "") -> list[Any]:
    """Merge fidelity, one row per task x mergeable method over its ok seeds: the merged model against the
    unmerged one in the run's dtype (max abs Δ logit, greedy-token agreement, lm-eval score change), and the
    two ways to merge for bf16 serving (``merge.precision``: merge in fp32 then cast, or cast then merge in
    bf16), each against the unmerged model in bf16. Empty when no run merged."""
    from rich.table import Table

    groups = _merged_runs(runs)
    if not groups:
        return []
    precision = any((r["merge"].get("precision") or {}) for rs in groups.values() for r in rs)
    t = Table(title=f"{title}merge fidelity: the merged model vs the unmerged one", title_justify="left",
              header_style="bold")
    cols = ["task", "method", "seeds", "max Δ logit", "greedy", "score Δ pts"]
    if precision:
        cols += ["fp32→bf16: Δ pts", "greedy", "in bf16: Δ pts", "greedy"]
    cols += ["status"]
    for col in cols:
        t.add_column(col, justify="left" if col in ("task", "method", "status") else "right", no_wrap=True)
    for (task, method), rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["seed"])
        t.add_row(task, method, *_fidelity_cells(rs, precision), _merge_status(rs))
    t.caption = CAPTION + "".join(f" Not measured: {why}." for why in skipped_studies(runs))
    return [t]


def _merged_runs(runs: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """(task, method) -> its ok runs that merged (tuning grid points left out: they are not the method's result)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        if r.get("status") == "ok" and (r.get("merge") or {}).get("supported") and scored_on_test(r):
            groups.setdefault((r["task"], r["method"]), []).append(r)
    return groups


def _fidelity_cells(rs: list[dict[str, Any]], precision: bool) -> list[str]:
    """Seeds, max Δ logit, then greedy agreement and score change of the merged model (and of each bf16 merge)."""
    logit = [r["merge"]["max_abs_logit_diff"] for r in rs if r["merge"].get("max_abs_logit_diff") is not None]
    d_merged, a_merged = _deltas(rs, "merged")
    cells = [", ".join(str(r["seed"]) for r in rs), or_dash(max(logit) if logit else None, ".2g"),
             _min_text(a_merged, ".3f"), _pts_over_seeds(d_merged)]
    if precision:
        for path in BF16_MERGES:
            d, a = _deltas(rs, path)
            cells += [_pts_over_seeds(d), _min_text(a, ".3f")]
    return cells


def _deltas(rs: list[dict[str, Any]], path: str) -> tuple[list[float], list[float]]:
    """The score changes and greedy agreements that the runs recorded for one way to merge."""
    ds, agree = [], []
    for r in rs:
        m = merge_variant(r, path)
        d = (m.get("eval") or {}).get("delta")
        ds += [d] if d is not None else []
        agree += [m["greedy_agreement"]] if m.get("greedy_agreement") is not None else []
    return ds, agree


def _merge_status(rs: list[dict[str, Any]]) -> str:
    status = ["lossy"] if any(r["merge"].get("lossy") for r in rs) else []
    if dequantization_only(rs):  # unmerging leaves the dequantized base by design: not flagged apart
        status += ["[yellow]dequantization > tol[/]"]
    else:
        status += ["[red]merge mismatch[/]"] if any(r["merge"].get("ok") is False for r in rs) else []
        status += ["[red]unmerge mismatch[/]"] if any(r["merge"].get("unmerge_ok") is False for r in rs) else []
    return " ".join(status) or "ok"


def _pts_over_seeds(values: list[float]) -> str:
    """Score changes (fractions) as points: the mean, and the seeds' range when there are several."""
    if not values:
        return DASH
    mean = sum(values) / len(values) * 100
    if len(values) == 1:
        return f"{mean:+.2f}"
    return f"{mean:+.2f} ({min(values) * 100:+.2f}..{max(values) * 100:+.2f})"


def _min_text(values: list[float], fmt: str) -> str:
    return format(min(values), fmt) if values else DASH
