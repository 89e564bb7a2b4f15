"""Why a timing cannot back a verdict: too few rounds, a failed sanity check, or neighbours on the machine.

The claims (``claims.py``) and their quantities (``quantities.py``) ask here; a figure this module doubts is
reported with its doubts and decides nothing.
"""

from __future__ import annotations

from typing import Any

from peftbench.latency.summary import MIN_ROUNDS_TO_JUDGE
from peftbench.system.memory import neighbour_flags

SUSPECT = "timing suspect"


def timing_doubts(lat: dict[str, Any], regime: str) -> list[str]:
    """Why a latency section's figures in ``regime`` cannot back a verdict: too few rounds for a CI, its own
    sanity check failed (merged or full fine-tuning did not time like base), or it was timed on a shared GPU
    or a busy host."""
    doubts = []
    rounds = (lat.get("plan") or {}).get("rounds")
    if rounds is not None and rounds < MIN_ROUNDS_TO_JUDGE:
        doubts.append(f"{rounds} timed round{'s' if rounds != 1 else ''}: too few for a CI")
    if any(s.get("ok") is False for s in lat.get("sanity") or [] if s.get("regime") == regime):
        doubts.append("its sanity check failed")
    return doubts + neighbour_flags(lat)


