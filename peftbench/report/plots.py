"""Pareto plots: score vs each cost (trainable parameters, peak training memory, training time, inference
overhead), one point per method with its 95 % CI bar (the leaderboard row's, from the statistics engine),
and the frontier -- the methods no other method beats on both score and that cost -- drawn as a step line.
PNG and SVG (matplotlib; ``pip install matplotlib``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peftbench.latency.summary import headline_regime
from peftbench.report.leaderboard import rows_for_task

COSTS = (  # (row field or latency, axis label, log scale, file suffix)
    ("trainable", "trainable parameters", True, "params"),
    ("peak_memory", "peak training memory (GiB)", False, "memory"),
    ("train_time", "training time (s)", False, "time"),
    ("latency", "decode overhead vs base (unmerged, %)", False, "latency"),
)


def frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The Pareto frontier of (cost, score) points, lower cost and higher score better, by cost: a point is
    on it when no other point has a cost <= and a score >= with one of them strictly better."""
    out = []
    for c, s in sorted(points, key=lambda p: (p[0], -p[1])):
        if not out or s > out[-1][1]:
            out.append((c, s))
    return out


def _cost(row: dict[str, Any], field: str, latency: dict[str, dict[str, Any]]) -> float | None:
    if field == "latency":
        lat = latency.get(row["method"])
        if not lat:
            return None
        cells = (lat.get("regimes") or {}).get(headline_regime(lat), [])
        o = cells[0]["overhead"].get("unmerged") if cells else None
        return None if o is None else 100.0 * o["ratio"]
    value = row.get(field)
    if value is None:
        return None
    return value / 2**30 if field == "peak_memory" else float(value)


def _label(ax: Any, points: list[tuple[str, float, float]]) -> None:
    """Name each point beside it, on the first side (upper right, lower right, upper left, lower left) where the
    label's box does not overlap one placed before: methods with close cost and score (QLoRA and a small adapter
    on memory) would otherwise print over each other."""
    fig = ax.figure
    fig.canvas.draw()  # autoscales to the axes' final limits, so the boxes measured are where the labels end up
    renderer = fig.canvas.get_renderer()
    placed: list[Any] = []
    sides = (((5, 4), "left", "bottom"), ((5, -4), "left", "top"), ((-5, 4), "right", "bottom"),
             ((-5, -4), "right", "top"))
    for name, x, y in sorted(points, key=lambda p: (-p[2], p[1])):
        for i, (offset, ha, va) in enumerate(sides):
            text = ax.annotate(name, (x, y), textcoords="offset points", xytext=offset, fontsize=8, ha=ha, va=va)
            box = text.get_window_extent(renderer).expanded(1.05, 1.1)
            if not any(box.overlaps(b) for b in placed) or i == len(sides) - 1:
                placed.append(box)
                break
            text.remove()


def pareto_plots(session: dict[str, Any], runs: list[dict[str, Any]], latency: dict[str, dict[str, Any]],
                 out_dir: Path, formats: tuple[str, ...] = ("png", "svg")) -> list[Path]:
    """Write one figure per task and cost; return the files written."""
    try:
        import matplotlib
    except ImportError:
        from peftbench.errors import UsageError

        raise UsageError("plots need matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "peftbench"  # stable ids: the same results give the same SVG
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    model = (session.get("model") or {}).get("source", "")
    for task, info in (session.get("tasks") or {r["task"]: {} for r in runs}).items():
        metric = info.get("metric", "acc")
        rows = [r for r in rows_for_task(runs, task, metric) if r["method"] != "base" and r["score"] is not None]
        base = next((r for r in rows_for_task(runs, task, metric) if r["method"] == "base"), None)
        for field, label, log, suffix in COSTS:
            pts = [(r, _cost(r, field, latency)) for r in rows]
            pts = [(r, c) for r, c in pts if c is not None]
            if len(pts) < 2:
                continue
            fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=150)
            for r, c in pts:  # the leaderboard's CI (the statistics engine's); none measurable: a bare point
                lo, hi = r.get("score_ci") or (r["score"], r["score"])
                ax.errorbar([c], [r["score"]], yerr=[[max(r["score"] - lo, 0.0)], [max(hi - r["score"], 0.0)]],
                            fmt="o", capsize=3)
            front = frontier([(c, r["score"]) for r, c in pts])
            ax.step([c for c, _ in front], [s for _, s in front], where="post", color="grey", linestyle="--",
                    linewidth=1, label="Pareto frontier")
            if base is not None and base["score"] is not None:
                ax.axhline(base["score"], color="lightgrey", linewidth=1, label="zero-shot base")
            if log:
                ax.set_xscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel(f"{metric} (95% CI)")
            ax.set_title(f"{task}: {metric} vs {label.split(' (')[0]}" + (f"\n{model}" if model else ""), fontsize=9)
            fig.tight_layout()
            _label(ax, [(r["method"], c, r["score"]) for r, c in pts])  # with every artist in: the final limits
            ax.legend(fontsize=7, loc="lower right")
            fig.tight_layout()
            for fmt in formats:
                path = out_dir / f"{task}-{suffix}.{fmt}"
                fig.savefig(path, metadata={"Date": None} if fmt == "svg" else None)
                written.append(path)
            plt.close(fig)
    return written
