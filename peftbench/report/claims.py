"""``peftbench claims``: the folklore about these methods, checked against measured results.

Each claim (``claims.yaml``, shipped with the package) names a quantity, its arguments and the range the
claim states. For every task (or latency session) where the quantity can be computed, peftbench reports the
measured value, its 95 % CI and a verdict: **holds** (the CI lies inside the range), **does not hold** (the
CI lies entirely outside), **inconclusive** (it straddles a bound). A quantity measured once, without an
uncertainty (parameter counts, artifact sizes, a single timing), gets its verdict from the point value and
says "no CI".

Claims are checked per base model (``check_models``): one model's figures never stand in for another's. A
score claim on a task where no method's 95 % CI clears chance and the majority class is **excluded
(uninformative: ...)**, no verdict (``baselines.py``). A timing (training time, latency) decides only when it
was measured alone and its file says so.

The quantities and their intervals are ``quantities.py``'s; why a timing decides nothing is ``doubts.py``'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from peftbench.report.baselines import informative
from peftbench.report.doubts import SUSPECT
from peftbench.report.leaderboard import rows_for_task
from peftbench.report.quantities import LATENCY_QUANTITIES, QUANTITIES, Evidence
from peftbench.report.serving_claims import SERVING_QUANTITIES

ALL_QUANTITIES = {**QUANTITIES, **SERVING_QUANTITIES}  # serve-bench's claims are judged on its sections ("serving")

SCORE_QUANTITIES = {"share_of_full", "relative_gap", "merge_score_change"}  # what an uninformative task cannot decide
EXCLUDED = "excluded"


def load_claims(path: Path | None = None) -> list[dict[str, Any]]:
    path = path or Path(__file__).with_name("claims.yaml")
    claims = yaml.safe_load(path.read_text())
    for c in claims:
        missing = {"id", "claim", "source", "quantity", "args", "range"} - set(c)
        if missing or c["quantity"] not in ALL_QUANTITIES:
            raise ValueError(f"{path}: claim {c.get('id')!r} is malformed (missing {sorted(missing)} or unknown "
                             f"quantity {c.get('quantity')!r}; known: {', '.join(ALL_QUANTITIES)})")
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
          claims: list[dict[str, Any]] | None = None, tasks: dict[str, dict[str, Any]] | None = None,
          model: str | None = None) -> list[dict[str, Any]]:
    """One result per claim and task (latency claims: per latency source) where it can be measured, for the
    runs and latency sections (method -> section) of **one** base model; each result names it (``model``:
    the runs' own, else ``model``). Runs of several models are refused: ``check_models`` keeps them apart.

    ``tasks`` (a session's ``tasks``: each task's metric and ``baselines``): a score claim on a task that no
    method lifts above its baselines (``report.baselines.informative``) is *excluded* and decides nothing."""
    models = sorted({r["model"] for r in runs if r.get("model")})
    if len(models) > 1:
        raise ValueError(f"runs of {len(models)} models ({', '.join(models)}): check each model's apart "
                         "(check_models)")
    model = models[0] if models else model
    ev = Evidence(runs, latency)
    excluded = uninformative(runs, tasks or {})
    out = []
    for c in claims or load_claims():
        where = (["latency"] if c["quantity"] in LATENCY_QUANTITIES else ["serving"]
                 if c["quantity"] in SERVING_QUANTITIES else sorted(ev.by_task))
        for task in where:
            value, ci, how = ALL_QUANTITIES[c["quantity"]](ev, task, **c["args"])
            if value is None:
                continue
            judged = verdict(value, ci, c["range"])
            if SUSPECT in how:  # a figure the harness itself doubts decides nothing
                judged = f"inconclusive ({SUSPECT})"
            if c["quantity"] in SCORE_QUANTITIES and task in excluded:
                judged = f"{EXCLUDED} (uninformative: {excluded[task]})"
            out.append({"id": c["id"], "claim": c["claim"], "source": c["source"], "model": model, "task": task,
                        "value": value, "ci95": ci, "range": c["range"], "how": how, "verdict": judged})
    return out


def check_models(runs: list[dict[str, Any]], latency_by_model: dict[str, dict[str, dict[str, Any]]],
                 claims: list[dict[str, Any]] | None = None,
                 tasks_by_model: dict[str, dict[str, dict[str, Any]]] | None = None) -> list[dict[str, Any]]:
    """``check`` for each base model of ``runs`` (each run's ``model``) and of ``latency_by_model`` (model ->
    method -> latency section), in the order first seen: no model's figures stand in for another's."""
    models = list(dict.fromkeys([*(r.get("model") or "?" for r in runs), *latency_by_model]))
    out = []
    for model in models:
        mine = [r for r in runs if (r.get("model") or "?") == model]
        out += check(mine, latency_by_model.get(model, {}), claims, (tasks_by_model or {}).get(model), model)
    return out


def uninformative(runs: list[dict[str, Any]], tasks: dict[str, dict[str, Any]]) -> dict[str, str]:
    """task -> why, for each task of ``runs`` whose leaderboard no method's 95 % CI lifts above its baselines
    (``tasks[name].baselines``); a task without recorded baselines is not excluded."""
    out = {}
    for task in dict.fromkeys(r["task"] for r in runs):
        info = tasks.get(task) or {}
        ok, why = informative(rows_for_task(runs, task, info.get("metric", "acc")), info.get("baselines"))
        if not ok:
            out[task] = why
    return out
