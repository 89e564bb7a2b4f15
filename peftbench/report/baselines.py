"""Chance and the majority class beside every leaderboard, and whether a task can decide anything.

A task is **informative** when at least one method (not the base row) has a 95 % CI whose lower bound
clears both its chance and its majority-class accuracy (``peftbench.tasks.baselines``). One where no method
does is marked *uninformative* in every table and decides no score claim: its scores sit where guessing the
most frequent answer puts them, so their differences are not about the methods.

Where the baselines come from: ``session.json``'s ``tasks[<name>].baselines`` (written by the session), else
the folder's ``baselines.json`` (``benchmarks/task_baselines.py``, for folders written before), used only when
it was computed from the same data files as the session's ``data_source``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from peftbench.report.stats import Z95

BASELINES_FILE = "baselines.json"
NOT_RECORDED = "baselines not recorded"


# ---- reading them --------------------------------------------------------------------------------------------
def source_digests(source: dict[str, Any] | None) -> Any:
    """What identifies a task's data source: the sha256 of each local file per split, a hub dataset's split
    fingerprints, a generator and its version. ``None`` when the source is not recorded."""
    if not source:
        return None
    if source.get("kind") == "local":
        return {split: [f.get("sha256") for f in files] for split, files in (source.get("splits") or {}).items()}
    if source.get("kind") == "hub":
        return {"hub": source.get("path"), "name": source.get("name"),
                "splits": {s: (v or {}).get("fingerprint") for s, v in (source.get("splits") or {}).items()}}
    return {k: source.get(k) for k in ("kind", "generator", "version")}


def with_baselines(folder: Path, session: dict[str, Any]) -> dict[str, Any]:
    """``session`` with each task's ``baselines``: its own, else those of the folder's ``baselines.json`` whose
    data source is the session's. A file computed from other data is not used; the task then says why
    (``baselines_note``)."""
    path = Path(folder) / BASELINES_FILE
    if not path.is_file() or not session.get("tasks"):
        return session
    try:
        stored = json.loads(path.read_text()).get("tasks") or {}
    except (OSError, ValueError, AttributeError) as e:
        stored, broken = {}, f"{path} cannot be read ({type(e).__name__})"
    else:
        broken = None
    tasks = {}
    for name, info in session["tasks"].items():
        entry = stored.get(name)
        if info.get("baselines") or (entry is None and broken is None):
            tasks[name] = info
        elif broken is not None:
            tasks[name] = {**info, "baselines_note": broken}
        elif entry.get("data_source") != source_digests(_session_source(info)):
            tasks[name] = {**info, "baselines_note": f"{path} was computed from other data than this session's"}
        else:
            tasks[name] = {**info, "baselines": entry["baselines"]}
    return {**session, "tasks": tasks}


def _session_source(info: dict[str, Any]) -> dict[str, Any] | None:
    """A task's recorded data source; a generated task of a session that predates ``data_source`` is known by
    its generator and version."""
    if info.get("data_source"):
        return info["data_source"]
    generate = (info.get("data") or {}).get("generate")
    return {"kind": "generated", "generator": generate, "version": info.get("version")} if generate else None


def task_baselines(session: dict[str, Any], task: str) -> dict[str, Any] | None:
    return ((session.get("tasks") or {}).get(task) or {}).get("baselines")


# ---- judging a task ------------------------------------------------------------------------------------------
def lower_bound(row: dict[str, Any]) -> float | None:
    """The lower end of a leaderboard row's 95 % score CI (``score_ci``) and of score - 1.96 standard errors
    (lm-eval's, over the test examples), whichever is lower: a CI over seeds alone does not count the test
    examples' sampling (BoolQ: three seeds of QLoRA within [0.624, 0.630], each ± 0.008 over its examples)."""
    bounds = []
    if row.get("score_ci"):
        bounds.append(row["score_ci"][0])
    if row.get("score") is not None and row.get("stderr") is not None:
        bounds.append(row["score"] - Z95 * row["stderr"])
    return min(bounds) if bounds else None


def bar(baselines: dict[str, Any]) -> tuple[str, float]:
    """The baseline a method must clear: the higher of the majority class and chance."""
    if baselines["majority"] >= baselines["chance"]:
        return "the majority class", baselines["majority"]
    return "chance", baselines["chance"]


def informative(rows: list[dict[str, Any]], baselines: dict[str, Any] | None) -> tuple[bool, str]:
    """(informative, why): whether some method's (not the base row's) 95 % CI lower bound clears both chance and
    the majority class. Without baselines, or without a CI to judge by, the task is not marked uninformative
    and the reason says so."""
    if not baselines:
        return True, NOT_RECORDED
    name, level = bar(baselines)
    bounds = {r["method"]: lower_bound(r) for r in rows if r["method"] != "base"}
    judged = {m: b for m, b in bounds.items() if b is not None}
    if not judged:
        return True, "no method's score has a CI to compare with the baselines"
    best = max(judged, key=lambda m: judged[m])
    if judged[best] > level:
        return True, f"{best}'s 95 % CI clears {name} ({level:.3f})"
    return False, f"no method's 95 % CI clears {name} ({level:.3f})"


def baselines_text(baselines: dict[str, Any] | None, note: str | None = None) -> str:
    """One line for a table: ``chance 0.500, majority 0.622 ('yes', n = 3,270)``."""
    if not baselines:
        return note or NOT_RECORDED
    limit = f", first {baselines['limit']}" if baselines.get("limit") else ""
    return (f"chance {baselines['chance']:.3f}, majority class {baselines['majority']:.3f} "
            f"('{baselines['majority_label']}', n = {baselines['n']:,}{limit})")


def uninformative_tasks(session: dict[str, Any], rows_by_task: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    """task -> why, for each task of ``rows_by_task`` that no method's CI lifts above its baselines."""
    out = {}
    for task, rows in rows_by_task.items():
        ok, why = informative(rows, task_baselines(session, task))
        if not ok:
            out[task] = why
    return out
