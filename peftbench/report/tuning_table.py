"""The tuning table of a session run with ``--tune``: every grid point's validation score, and the choice."""

from __future__ import annotations

from typing import Any

from peftbench.report.cell_text import DASH

CAPTION = ("Each grid point trained once (the first seed) and was scored on the task's validation split, carved "
           "from its training data; ✓ marks the point chosen (best validation score, ties: the earlier point), "
           "with which the requested seeds were trained and scored on test. 'edge': the choice is the grid's "
           "smallest or largest value, so a better one may lie beyond it: extend the grid.")


def tuning_tables(runs: list[dict[str, Any]], title: str = "") -> list[Any]:
    """One row per task x method x grid point (empty when no run was a grid point)."""
    from rich.table import Table

    grid = [r for r in runs if (r.get("tuning") or {}).get("role") == "grid"]
    if not grid:
        return []
    chosen = _chosen(runs)
    t = Table(title=f"{title}tuning on the validation split", title_justify="left", header_style="bold")
    for col in ("task", "method", "values", "validation score", "chosen", "status"):
        t.add_column(col, justify="right" if col == "validation score" else "left", no_wrap=True)
    for r in sorted(grid, key=lambda r: (r["task"], r["method"], _order(r))):
        values = r["tuning"]["values"]
        pick = chosen.get((r["task"], r["method"]))
        mark = DASH
        if pick is not None and pick[0] == values:
            mark = "✓" + (f" (edge: {', '.join(pick[1])})" if pick[1] else "")
        t.add_row(r["task"], r["method"], _values_text(values), _score_text(r), mark,
                  r.get("status", "?") if r.get("status") == "ok" else f"[red]{r.get('status')}[/]")
    t.caption = CAPTION
    return [t]


def _chosen(runs: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[dict[str, Any], list[str]]]:
    """(task, method) -> the values its final cells trained with, and the keys on the grid's edge."""
    out = {}
    for r in runs:
        tuning = r.get("tuning") or {}
        if tuning.get("role") == "final" and tuning.get("values"):
            out.setdefault((r["task"], r["method"]), (tuning["values"], tuning.get("on_edge") or []))
    return out


def _order(run: dict[str, Any]) -> list[Any]:
    values = run["tuning"]["values"]
    grid = run["tuning"].get("grid") or {}
    return [grid.get(k, []).index(v) if v in grid.get(k, []) else 0 for k, v in values.items()]


def _values_text(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def _score_text(run: dict[str, Any]) -> str:
    metrics = (run.get("eval") or {}).get("metrics") or {}
    if not metrics:
        return DASH
    name, value = next(iter(metrics.items()))
    return f"{value:.3f} {name}"
