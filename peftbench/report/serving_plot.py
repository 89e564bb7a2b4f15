"""The serving plot: decode overhead vs base against K, the adapters one batch asks for, per method and batch
size, with the bootstrap 95 % CI of each point, and dotted the line a linear cost would follow (each adapter
beyond the first costing what the second did: the serving claims' "linear"). PNG or SVG (matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peftbench.latency.serving_config import mixed_k
from peftbench.latency.summary import headline_regime


def overhead_curves(lat: dict[str, Any]) -> dict[int, list[tuple[int, float, float, float]]]:
    """batch size -> [(K, overhead, CI low, CI high)] of the mixed modes at the section's first prompt
    length in its headline regime, by K."""
    regime = headline_regime(lat)
    curves: dict[int, list[tuple[int, float, float, float]]] = {}
    first_prompt = (lat.get("plan") or {}).get("prompt_lengths", [None])[0]
    for cell in (lat.get("regimes") or {}).get(regime, []):
        if first_prompt is not None and cell["prompt_tokens"] != first_prompt:
            continue
        points = sorted((mixed_k(m), o["ratio"], o["ci95"][0], o["ci95"][1])
                        for m, o in cell["overhead"].items() if mixed_k(m))
        if points:
            curves[cell["batch_size"]] = points
    return curves


def serving_plot(sections: dict[str, dict[str, Any]], path: Path, title: str = "") -> Path:
    """Write the plot to ``path`` (its suffix picks the format): a panel per method, a line per batch size."""
    try:
        import matplotlib
    except ImportError:
        from peftbench.errors import UsageError

        raise UsageError("plots need matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (matplotlib.ticker.ScalarFormatter below)

    plt.rcParams["svg.hashsalt"] = "peftbench"  # stable ids: the same results give the same SVG
    fig, axes = plt.subplots(1, max(1, len(sections)), figsize=(4.2 * max(1, len(sections)), 3.8), dpi=150,
                             squeeze=False)
    for ax, (method, lat) in zip(axes[0], sections.items(), strict=False):
        lines = []
        for batch, points in overhead_curves(lat).items():
            ks = [p[0] for p in points]
            ys = [100 * p[1] for p in points]
            err = [[100 * (p[1] - p[2]) for p in points], [100 * (p[3] - p[1]) for p in points]]
            line = ax.errorbar(ks, ys, yerr=err, marker="o", capsize=3, label=f"batch {batch}")
            if len(points) > 2 and ks[:2] == [1, 2]:  # linear in K: every adapter costs what the second did
                lines.append((ks, [ys[0] + (k - 1) * (ys[1] - ys[0]) for k in ks], line[0].get_color()))
        limits = ax.get_ylim()  # the measurements set the axis; a linear line leaving it is cut off
        for ks, ys, color in lines:
            ax.plot(ks, ys, linestyle=":", color=color, linewidth=1)
        ax.set_ylim(limits)
        ax.set_xscale("log", base=2)
        ax.set_xticks(lat.get("serving", {}).get("plan", {}).get("adapters") or [1, 2, 4, 8, 16, 32])
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("K: adapters one batch asks for")
        ax.set_ylabel("decode overhead vs base (%, 95% CI)")
        ax.set_title(method, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle((title + " — " if title else "") + "dotted: linear in K (every adapter costs what the second did)",
                 fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Date": None} if path.suffix == ".svg" else None)
    plt.close(fig)
    return path
