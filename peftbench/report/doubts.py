"""Why a timing cannot back a verdict: too few rounds, a failed sanity check, or neighbours on the machine
(or no record of them).

The claims (``claims.py``) and their quantities (``quantities.py``) ask here; a figure this module doubts is
reported with its doubts and decides nothing. The tables show ``neighbour_flags`` (what was measured); a
verdict needs more: a timing whose file does not say who shared the machine counts as contended.
"""

from __future__ import annotations

from typing import Any

from peftbench.latency.summary import MIN_ROUNDS_TO_JUDGE, sanity_failures
from peftbench.system.memory import NEIGHBOUR_KEYS, neighbour_flags

SUSPECT = "timing suspect"
NOT_RECORDED = "neighbours not recorded"


def contention(record: dict[str, Any]) -> list[str]:
    """Why ``record``'s timings (a run file, or a latency section) may not be the method's alone: the
    neighbour flags it earned, other cells beside it (``--jobs``), or that it lacks a neighbour field (``gpu_others_bytes``,
    ``host_others_cores``: written before they were measured), which for a verdict counts as contended. A
    field present but ``None`` was looked at and could not be measured there (no GPU): not a doubt."""
    missing = [k for k in NEIGHBOUR_KEYS if k not in record]
    return neighbour_flags(record) + beside_cells(record) + \
        ([f"{NOT_RECORDED} ({', '.join(missing)} absent)"] if missing else [])


def beside_cells(record: dict[str, Any]) -> list[str]:
    """A run file of a ``--jobs`` session whose cell ran while other cells shared the device: its training
    time was not the method's alone, whether or not the sibling workers crossed the neighbour thresholds
    (its tok/s and latency come from the cost phase, ``alone_costs``)."""
    beside = ((record.get("env") or {}).get("jobs") or {}).get("beside_workers") or 0
    return [f"beside {beside} other cell{'s' if beside != 1 else ''} (--jobs)"] if beside > 0 else []


def runs_timing_doubts(runs: list[dict[str, Any]]) -> list[str]:
    """Why training times of ``runs`` cannot back a verdict (``ratio_to`` of ``train_time``): each doubt of
    ``contention`` any of them has, once."""
    return sorted({d for r in runs for d in contention(r)})


def rounds_taken(lat: dict[str, Any], regime: str) -> int | None:
    """The fewest timed rounds a shape of ``regime`` took: shapes stop early once their medians are tight
    (each cell records its ``rounds``); files written before that timed every shape the plan's ``rounds``."""
    taken = [c["rounds"] for c in (lat.get("regimes") or {}).get(regime) or [] if isinstance(c.get("rounds"), int)]
    return min(taken) if taken else (lat.get("plan") or {}).get("rounds")


def timing_doubts(lat: dict[str, Any], regime: str) -> list[str]:
    """Why a latency section's figures in ``regime`` cannot back a verdict: too few rounds for a CI, its own
    sanity check failed (merged or full fine-tuning did not time like base: judged again here from each
    entry's overhead and tolerance, so files that stored the earlier, lenient verdict read the same way), or it
    was timed on a shared GPU or a busy host, or without a record of either. Too few rounds: the fewest any of
    its shapes took (``rounds_taken``)."""
    doubts = []
    rounds = rounds_taken(lat, regime)
    if rounds is not None and rounds < MIN_ROUNDS_TO_JUDGE:
        doubts.append(f"{rounds} timed round{'s' if rounds != 1 else ''}: too few for a CI")
    if sanity_failures(lat, regime):
        doubts.append("its sanity check failed")
    return doubts + contention(lat)
