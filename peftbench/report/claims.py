"""``peftbench claims``: the folklore about these methods, checked against measured results.

Each claim (``claims.yaml``, shipped with the package) names a quantity, its arguments and the range the
claim states. For every task (or latency session) where the quantity can be computed, peftbench reports the
measured value, its 95 % CI and a verdict: **holds** (the CI lies inside the range), **does not hold** (the
CI lies entirely outside), **inconclusive** (it straddles a bound). A quantity measured once, without an
uncertainty (parameter counts, artifact sizes, a single timing), gets its verdict from the point value and
says "no CI".

The quantities and their intervals are ``quantities.py``'s; why a timing decides nothing is ``doubts.py``'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from peftbench.report.doubts import SUSPECT
from peftbench.report.quantities import LATENCY_QUANTITIES, QUANTITIES, Evidence


def load_claims(path: Path | None = None) -> list[dict[str, Any]]:
    path = path or Path(__file__).with_name("claims.yaml")
    claims = yaml.safe_load(path.read_text())
    for c in claims:
        missing = {"id", "claim", "source", "quantity", "args", "range"} - set(c)
        if missing or c["quantity"] not in QUANTITIES:
            raise ValueError(f"{path}: claim {c.get('id')!r} is malformed (missing {sorted(missing)} or unknown "
                             f"quantity {c.get('quantity')!r}; known: {', '.join(QUANTITIES)})")
    return claims


def verdict(value: float | None, ci: list[float] | None, rng: list[float | None]) -> str:
    if value is None:
        return "not measured"
    lo = float("-inf") if rng[0] is None else rng[0]
    hi = float("inf") if rng[1] is None else rng[1]
    if ci is None:
        return ("holds" if lo <= value <= hi else "does not hold") + " (no CI)"
    a, b = ci
    if lo <= a and b <= hi:
        return "holds"
    if b < lo or a > hi:
        return "does not hold"
    return "inconclusive"


def check(runs: list[dict[str, Any]], latency: dict[str, dict[str, Any]],
          claims: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One result per claim and task (latency claims: per latency source) where it can be measured."""
    ev = Evidence(runs, latency)
    out = []
    for c in claims or load_claims():
        where = ["latency"] if c["quantity"] in LATENCY_QUANTITIES else sorted(ev.by_task)
        for task in where:
            value, ci, how = QUANTITIES[c["quantity"]](ev, task, **c["args"])
            if value is None:
                continue
            judged = verdict(value, ci, c["range"])
            if SUSPECT in how:  # a figure the harness itself doubts decides nothing
                judged = f"inconclusive ({SUSPECT})"
            out.append({"id": c["id"], "claim": c["claim"], "source": c["source"], "task": task,
                        "value": value, "ci95": ci, "range": c["range"], "how": how, "verdict": judged})
    return out
