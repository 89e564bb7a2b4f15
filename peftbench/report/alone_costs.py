"""The run files of a ``peftbench run --jobs`` session with their cost figures taken from its cost phase
(``OUTPUT/cost/<method>--<task>.json``, measured with the device to itself), so every table and claim reads
costs that were never measured beside other cells.

A cell that ran beside others timed no latency (``env.jobs.latency``); its run gets the cost phase's latency
section for its method and task (its first seed holds it, the others name that cell in ``measured_in``, as
``latency_once`` does). Its ``train.tokens_per_s`` becomes the cost phase's, and the figure measured beside
the other cells is kept as ``train.tokens_per_s_beside_others``. The training wall time and peak memory
stay the cell's own (the run's neighbour fields say who shared the machine then).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peftbench.session.cost import COST_DIR, load_costs


def with_alone_costs(output: Path, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``runs`` (a folder's run files), those that ran beside other cells with the cost phase's figures."""
    costs = load_costs(output) if (output / COST_DIR).is_dir() else {}
    takes = [r for r in runs if _takes_cost(r, costs)]
    holder: dict[tuple[str, str], str] = {}  # (method, task) -> the run that holds the latency section
    for r in sorted(takes, key=lambda r: r.get("seed", 0)):
        holder.setdefault((r["method"], r["task"]), r["key"])
    chosen = {id(r) for r in takes}
    return [_with_cost(r, costs[(r["method"], r["task"])], holder) if id(r) in chosen else r for r in runs]


def _takes_cost(run: dict[str, Any], costs: dict[tuple[str, str], dict[str, Any]]) -> bool:
    """Whether ``run`` ran beside other cells and its method and task have a cost file."""
    return bool((run.get("env") or {}).get("jobs")) and run.get("status") == "ok" and \
        (run.get("tuning") or {}).get("role") != "grid" and (run.get("method"), run.get("task")) in costs


def _with_cost(run: dict[str, Any], cost: dict[str, Any], holder: dict[tuple[str, str], str]) -> dict[str, Any]:
    name = f"{COST_DIR}/{run['method']}--{run['task']}.json"
    run = dict(run)
    lat = cost.get("latency") or {}
    if run["env"]["jobs"].get("latency") and lat.get("regimes"):
        first = holder[(run["method"], run["task"])]
        run["latency"] = {**lat, "measured_in": lat.get("measured_in") or name} if first == run["key"] \
            else {**lat, "measured_in": first}
    speed = (cost.get("train") or {}).get("tokens_per_s")
    if speed is not None and run.get("train"):
        run["train"] = {**run["train"], "tokens_per_s": speed, "tokens_per_s_measured_in": name,
                        "tokens_per_s_beside_others": run["train"].get("tokens_per_s")}
    return run
