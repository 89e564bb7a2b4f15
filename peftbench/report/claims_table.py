"""The claims table: each claim's measured value and 95 % CI against its claimed range, with the verdict."""

from __future__ import annotations

from typing import Any

from peftbench.report.calculated import BY_CALCULATION
from peftbench.report.cell_text import DASH

VERDICT_COLORS = {"holds": "green", "does not hold": "red", "inconclusive": "yellow", "excluded": "dim"}

CAPTION = ("verdict: holds = the 95% CI lies inside the claimed range; does not hold = entirely outside; "
           "inconclusive = it straddles a bound; (no CI) = one measurement, judged by its value; (timing suspect) = "
           "the timing cannot decide (a failed sanity check, too few rounds, a shared GPU, a busy host, or a file "
           "that does not record its neighbours); excluded (uninformative) = a score claim on a task where no "
           "method's 95% CI clears chance and the majority class: no verdict. Definitions "
           "and sources: docs/claims.md and peftbench/report/claims.yaml.")
CALCULATED_CAPTION = ("(by calculation) = computed by peftbench estimate from the model's published config, in the "
                      "setting the claim's source trains in, not measured: no CI, judged by the value; the same in "
                      "every peftbench claims output. Settings and formulas: peftbench estimate --claims, "
                      "docs/estimate.md, peftbench/report/calculated_claims.yaml.")


def claims_table(results: list[dict[str, Any]], title: str = "", calculated: bool = False) -> Any:
    """A row per result of ``peftbench.report.claims.check`` (of one model: ``claims_tables`` splits them), or
    of ``peftbench.report.calculated.check_by_calculation`` (``calculated``: its value column says so)."""
    from rich.table import Table

    from peftbench.report.claims import load_claims

    quantity = {c["id"]: c["quantity"] for c in load_claims()}
    what = ("scale claims checked by calculation (peftbench estimate), not against these results" if calculated
            else "claims checked against these results")
    value_column = "calculated" if calculated else "measured"
    t = Table(title=f"{title}{what}", title_justify="left", header_style="bold")
    for col in ("claim", "on", value_column, "95% CI", "claimed", "verdict"):
        t.add_column(col, justify="right" if col in (value_column, "95% CI", "claimed") else "left")
    for r in results:
        q, unit = quantity.get(r["id"], ""), r.get("unit")
        lo, hi = (_claim_value(q, v, unit) for v in r["range"])
        claimed = f">= {lo}" if r["range"][1] is None else f"<= {hi}" if r["range"][0] is None else f"{lo} to {hi}"
        ci = DASH if not r["ci95"] else f"[{_claim_value(q, r['ci95'][0], unit)}, {_claim_value(q, r['ci95'][1], unit)}]"
        color = VERDICT_COLORS.get(r["verdict"].split(" (")[0], "white")
        t.add_row(r["claim"], r["task"], _claim_value(q, r["value"], unit), ci, claimed, f"[{color}]{r['verdict']}[/]")
    t.caption = CALCULATED_CAPTION if calculated else CAPTION
    return t


def claims_tables(results: list[dict[str, Any]]) -> list[Any]:
    """One claims table per base model of ``results`` (``check_models``), each titled with its model and a
    count of its verdicts; the claims checked by calculation (model ``by calculation``) in a table of their own,
    last, so a calculated verdict is never counted among a model's measured ones."""
    models = list(dict.fromkeys(r.get("model") or "?" for r in results))
    models.sort(key=lambda m: m == BY_CALCULATION)
    tables = []
    for model in models:
        mine = [r for r in results if (r.get("model") or "?") == model]
        tables.append(claims_table(mine, title=f"{model} ({verdict_counts(mine)}) — ", calculated=model == BY_CALCULATION))
    return tables


def verdict_counts(results: list[dict[str, Any]]) -> str:
    """``3 hold, 2 do not, 5 inconclusive, 4 excluded``: only verdicts that hold or do not count as decided."""
    kinds = [r["verdict"].split(" (")[0] for r in results]
    parts = [(kinds.count("holds"), "hold"), (kinds.count("does not hold"), "do not hold"),
             (kinds.count("inconclusive"), "inconclusive"), (kinds.count("excluded"), "excluded")]
    return ", ".join(f"{n} {word}" for n, word in parts if n) or "no claim measured"


def _claim_value(quantity: str, value: float | None, unit: str | None = None) -> str:
    """A value in the claim's own unit: a row's ``unit`` when it has one (the calculated claims: GPUs, GiB, a
    share), else by quantity: a share or a change in percent, a ratio as a multiple. None (an open bound, a
    calculation that found no answer): a dash."""
    if value is None:
        return DASH
    if unit == "GPUs":
        return f"{value:.0f} GPUs"
    if unit == "GiB":
        return f"{value:.1f} GiB"
    if unit == "share":
        return f"{value * 100:.1f}%"
    if quantity in ("share_of_full", "relative_gap", "latency_overhead"):
        return f"{value * 100:.1f}%" if quantity == "share_of_full" else f"{value * 100:+.1f}%"
    if quantity == "trainable_pct":
        return f"{value:.2f}%"
    if quantity == "merge_score_change":
        return f"{value * 100:+.2f}%"
    return f"{value:,.2f}x" if value < 10 else f"{value:,.0f}x"
