"""The runner's policies, each small and on its own: which cells this process runs (``--shard``), which it
keeps from an earlier run (``--resume``) and which it leaves for later (``--time-budget``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from peftbench.api.records import RunSpec

BUDGET_REASON = "time budget"  # how a cell left for later by --time-budget starts its reason


def shard_share(cells: list[RunSpec], shard: tuple[int, int] | None) -> list[RunSpec]:
    """This process's cells: every n-th of the plan from the k-th; the other shards run the rest."""
    if shard is None:
        return cells
    k, n = shard
    return [spec for i, spec in enumerate(cells) if i % n == k]


def kept(done: dict[str, dict[str, Any]], spec: RunSpec) -> dict[str, Any] | None:
    """The finished run file a continued session keeps for ``spec`` (None: run it)."""
    run = done.get(spec.key)
    return run if run is not None and run.get("status") == "ok" else None


class CellBudget:
    """``--time-budget``: whether a cell can still finish before the budget (counted from the session's
    creation, so model loading and data preparation count too) runs out, judged by how long
    the cells of the same method took (the same task first, then any task; with no such cell, the longest
    cell so far; with no cell at all, it runs). A 10 % margin and 5 s are added to the estimate."""

    MARGIN, SLACK_S = 1.10, 5.0

    def __init__(self, seconds: float | None, clock: Any, start: float) -> None:
        self.seconds, self.clock = seconds, clock
        self.end = None if seconds is None else start + seconds
        self.took: dict[tuple[str, str], list[float]] = {}

    def record(self, method: str, task: str, seconds: float) -> None:
        if seconds > 0:
            self.took.setdefault((method, task), []).append(seconds)

    def record_kept(self, runs: Any) -> None:
        """Learn from the finished cells a continued session keeps: their phases' total time."""
        for r in runs:
            if r.get("status") == "ok":
                self.record(r["method"], r["task"], sum(v for v in (r.get("timings") or {}).values()
                                                        if isinstance(v, (int, float))))

    def estimate(self, spec: RunSpec) -> float | None:
        same = self.took.get((spec.method, spec.task)) or \
            [s for (m, _), v in self.took.items() if m == spec.method for s in v]
        if same:
            return sum(same) / len(same)
        every = [s for v in self.took.values() for s in v]
        return max(every) if every else None

    def too_long(self, spec: RunSpec) -> str | None:
        """Why ``spec`` should not start now (None: start it)."""
        if self.end is None:
            return None
        est, left = self.estimate(spec), self.end - self.clock()
        if left <= 0:
            return f"{BUDGET_REASON}: the {self.seconds:g} s of --time-budget were used up; --resume runs it"
        if est is not None and est * self.MARGIN + self.SLACK_S > left:
            return (f"{BUDGET_REASON}: about {est:.0f} s needed, {left:.0f} s of --time-budget left; "
                    "--resume runs it")
        return None


def folder_status(own: str, shard: tuple[int, int] | None, cells: list[RunSpec], output: Path) -> str:
    """This process's status, except that a shard that finished its share leaves the session
    'interrupted' (for --resume) while any cell of the plan has no final result yet: another shard is
    still at work or was stopped."""
    if own != "finished" or shard is None:
        return own
    for spec in cells:
        path = output / "runs" / f"{spec.key}.json"
        try:
            if json.loads(path.read_text()).get("status") == "cancelled":
                return "interrupted"
        except (OSError, ValueError):
            return "interrupted"
    return "finished"
