"""The ``latency`` section of a serve-bench file: the points of the sweep (one timer section per batch size)
joined into one section the latency tables and the claims read like a grid's, with the serving figures
(memory, operations, correctness checks, the K not timed per batch) under ``serving``. Torch-free."""

from __future__ import annotations

from typing import Any

from peftbench.latency.summary import latency_headline
from peftbench.system.memory import NEIGHBOUR_KEYS


def join_points(points: dict[str, dict[str, Any]], serving: dict[str, Any]) -> dict[str, Any]:
    """One section from the points' sections (``points``: point key -> timer section, in sweep order): every
    regime's cells in point order, the modes in the order first seen, sanity entries and errors together,
    wall time summed per regime and mode, the most any neighbour used, and ``serving``."""
    sections = list(points.values())
    first = sections[0]
    out: dict[str, Any] = {"plan": {**first["plan"], "batch_sizes": [s["plan"]["batch_sizes"][0] for s in sections]},
                           "timer": first.get("timer"), "modes": [], "regimes": {}, "sanity": [], "errors": [],
                           "wall_s": {}, "dtype": first.get("dtype")}
    for section in sections:
        out["modes"] += [m for m in section["modes"] if m not in out["modes"]]
        for regime, cells in section["regimes"].items():
            out["regimes"].setdefault(regime, []).extend(cells)
        out["sanity"] += section.get("sanity", [])
        out["errors"] += section.get("errors", [])
        for regime, walls in (section.get("wall_s") or {}).items():
            mine = out["wall_s"].setdefault(regime, {})
            for mode, seconds in walls.items():
                mine[mode] = round(mine.get(mode, 0.0) + seconds, 3)
        for key in NEIGHBOUR_KEYS:
            if key in section:  # present but None: looked at, not measurable there
                values = [v for v in (out.get(key), section[key]) if v is not None]
                out[key] = max(values) if values else None
    out["sanity_ok"] = not any(s.get("ok") is False for s in out["sanity"])
    out["summary"] = latency_headline(out)
    out["serving"] = serving
    return out


def kept_points(earlier: dict[str, Any] | None, method_config: Any, plan: dict[str, Any]) -> dict[str, Any]:
    """The finished points (``serving.points``) of an earlier, interrupted run of this method (its partial
    file) that ``--resume`` keeps: only when it timed the same method configuration and sweep (anything else
    would mix sweeps)."""
    if not earlier or earlier.get("method_config") != method_config:
        return {}
    serving = earlier.get("serving") or {}
    if serving.get("plan") != plan:
        return {}
    return dict(serving.get("points") or {})
