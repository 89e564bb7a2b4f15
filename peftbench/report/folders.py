"""Results folders: one folder's data and the tables ``peftbench report`` prints for it, and several folders
(e.g. sessions made in separate GPU calls) merged into one set of runs and latency results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peftbench.errors import UsageError
from peftbench.report.alone_costs import with_alone_costs
from peftbench.report.latency_table import latency_tables, run_latencies
from peftbench.report.leaderboard_table import leaderboard_tables
from peftbench.report.merge_table import merge_tables
from peftbench.report.tuning_table import tuning_tables


def folder_data(output: Path) -> dict[str, Any]:
    """A results folder as one JSON-able dict: a run session's session and runs (and, when it has any, its
    ``gaps``: a ``Gaps``), or a latency session's. A run folder whose files do not verify is refused."""
    if not any((output / name).exists() for name in ("session.json", "runs", "latency")):
        raise UsageError(f"{output}: not a peftbench results folder (no session.json, runs/ or latency/).")
    if (output / "latency").is_dir():
        from peftbench.session.latency_only import load_latency

        session, results = load_latency(output)
        return {"session": session, "latency": results}
    from peftbench.report.baselines import with_baselines
    from peftbench.report.gaps import folder_gaps
    from peftbench.results.store import load_session, verify_run_files

    session = with_baselines(output, load_session(output))
    check = verify_run_files(output, session)
    data = {"session": session, "runs": with_alone_costs(output, list(check.runs.values()))}
    gaps = folder_gaps(output, session, check.runs, check.unrecorded)
    return {**data, "gaps": gaps} if gaps else data


def folder_tables(output: Path) -> tuple[list[Any], dict[str, dict[str, Any]]]:
    """The tables ``peftbench report`` prints for a results folder, and the methods that failed there
    (latency sessions; a run session shows failures in its leaderboard)."""
    tables, failed, _ = folder_report(output)
    return tables, failed


def folder_report(output: Path) -> tuple[list[Any], dict[str, dict[str, Any]], Any]:
    """``folder_tables`` and the folder's ``Gaps`` (None when it has none, and for a latency session)."""
    data = folder_data(output)
    session = data["session"]
    if session.get("bench") == "serving":
        return _serving_report(output, session)
    if "latency" in data:
        results = data["latency"]
        ok = {m: r["latency"] for m, r in results.items() if r.get("status") == "ok" and r.get("latency")}
        model = (session.get("model") or {}).get("source", "?")
        gpu = (session.get("env") or {}).get("gpu") or (session.get("env") or {}).get("device", "?")
        failed = {m: r for m, r in results.items() if r.get("status") != "ok"}
        return (latency_tables(ok, title=f"{model} ({gpu}) — ") if ok else []), failed, None
    runs = data["runs"]
    tables = leaderboard_tables(session, runs) + tuning_tables(runs) + merge_tables(runs)
    for task, lats in run_latencies(runs).items():
        tables += latency_tables(lats, title=f"{task} — ")
    return tables, {}, data.get("gaps")


def _serving_report(output: Path, session: dict[str, Any]) -> tuple[list[Any], dict[str, dict[str, Any]], None]:
    """A ``peftbench serve-bench`` folder's tables, as ``serve-bench --show`` prints them (a method cut short
    mid-sweep shows the points it finished), and its methods that did not finish."""
    from peftbench.report.serving_table import serving_tables
    from peftbench.session.serve_bench import load_serving

    _, results = load_serving(output)
    model = (session.get("model") or {}).get("source", "?")
    device = (session.get("env") or {}).get("gpu") or (session.get("env") or {}).get("device", "?")
    failed = {m: r for m, r in results.items() if r.get("status") != "ok"}
    return serving_tables(session, results, title=f"{model} ({device}) — "), failed, None


# ---- several folders at once (report, claims) ---------------------------------------------------------------
def session_model(session: dict[str, Any]) -> str:
    """The base model a session (run or latency) measured, by its source; ``?`` when it does not say."""
    return (session.get("model") or {}).get("source") or (session.get("config") or {}).get("model") or "?"


def load_folders(folders: list[Path], allow_mixed: bool = False, by_model: bool = False) -> dict[str, Any]:
    """Merge result folders (e.g. sessions made in several GPU calls): their runs (each with its ``model``),
    their latency results per model (``latency_by_model``: model -> method -> the first latency section found
    for it; ``latency``: the first model's) and the gaps of each (``Gaps``, only the folders that have any).

    Different versions of a task are refused unless ``allow_mixed``: their numbers do not compare. Different
    base models are refused too (one leaderboard cannot mix them) unless ``allow_mixed``, or ``by_model``:
    the caller keeps the models apart (``peftbench claims``: one table per model), and only versions within one
    model must agree."""
    runs: list[dict[str, Any]] = []
    latency: dict[str, dict[str, dict[str, Any]]] = {}
    sessions: list[tuple[Path, dict[str, Any]]] = []
    gaps = []
    for folder in folders:
        data = folder_data(Path(folder))
        sessions.append((Path(folder), data["session"]))
        model = session_model(data["session"])
        if data.get("gaps"):
            gaps.append(data["gaps"])
        if "latency" in data:
            for method, r in data["latency"].items():
                if r.get("status") == "ok" and r.get("latency"):
                    latency.setdefault(model, {}).setdefault(method, r["latency"])
        else:
            _add_runs(runs, latency, [{**r, "model": r.get("model") or model} for r in data["runs"]], folder)
    if not allow_mixed:
        _refuse_mixed(folders, [session for _, session in sessions], by_model)
    first = next((session_model(s) for _, s in sessions if s.get("kind") != "latency"), None) \
        or next(iter(latency), None)
    return {"sessions": sessions, "runs": runs, "latency": latency.get(first, {}) if first else {},
            "latency_by_model": latency, "gaps": gaps}


def _add_runs(runs: list[dict[str, Any]], latency: dict[str, dict[str, dict[str, Any]]], new: list[dict[str, Any]],
              folder: Path) -> None:
    """Append one folder's runs, refusing a cell an earlier folder already holds a result for (of the same
    model); a cell one folder left without a result (cancelled, e.g. by a command's time limit) and another
    finished is taken from the one that finished it. Note each method's latency under its model."""
    seen = {(r["model"], r["key"]): i for i, r in enumerate(runs)}
    for r in new:
        earlier = seen.get((r["model"], r["key"]))
        if earlier is not None:
            done = [x.get("status") == "ok" for x in (runs[earlier], r)]
            if all(done):
                raise UsageError(f"{folder}: {r['key']} is also in an earlier folder; merge sessions of different "
                                 "cells only (or pass one of them).")
            if not done[1]:
                continue
            runs[earlier] = r  # the earlier folder's copy had no result
        else:
            seen[(r["model"], r["key"])] = len(runs)
            runs.append(r)
        lat = r.get("latency") or {}
        if r.get("status") == "ok" and lat.get("regimes"):
            latency.setdefault(r["model"], {}).setdefault(r["method"], lat)


def _refuse_mixed(folders: list[Path], sessions: list[dict[str, Any]], by_model: bool) -> None:
    """Raise when the folders measured different base models (unless ``by_model``) or different versions of a
    task (with ``by_model``: of one model)."""
    models: dict[str, list[str]] = {}
    versions: dict[tuple[str, str], set[Any]] = {}
    for folder, session in zip(folders, sessions, strict=True):
        model = session_model(session)
        models.setdefault(model, []).append(str(folder))
        for name, info in (session.get("tasks") or {}).items():
            versions.setdefault((model if by_model else "", name), set()).add(info.get("version"))
    known = {m: fs for m, fs in models.items() if m != "?"}
    if len(known) > 1 and not by_model:
        raise UsageError("these folders measured different base models (" + "; ".join(
            f"{m}: {', '.join(fs)}" for m, fs in known.items()) + "); pass --allow-mixed to merge anyway.")
    mixed = {(m, t): v for (m, t), v in versions.items() if len(v) > 1}
    if mixed:
        raise UsageError("these folders used different versions of task(s) " + ", ".join(
            f"{t} ({', '.join(map(str, sorted(v, key=str)))}{f' on {m}' if m else ''})" for (m, t), v in mixed.items())
            + "; pass --allow-mixed to merge anyway.")


def merged_session(sessions: list[tuple[Path, dict[str, Any]]]) -> dict[str, Any]:
    """A session record standing for several run sessions: their tasks, the first one's model and env."""
    run_sessions = [s for _, s in sessions if s.get("kind") != "latency"]
    if not run_sessions:
        return {}
    first = dict(run_sessions[0])
    tasks: dict[str, Any] = {}
    for s in run_sessions:
        for name, info in (s.get("tasks") or {}).items():
            if name not in tasks or info.get("baselines") and not tasks[name].get("baselines"):
                tasks[name] = info
    first["tasks"] = tasks
    return first
