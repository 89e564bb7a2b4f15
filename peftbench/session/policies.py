"""The runner's policies, each small and on its own: which cells this process runs (``--shard``), which it
keeps from an earlier run (``--resume``: only files that prove themselves, and only for an unchanged plan) and
which it leaves for later (``--time-budget``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftbench.api.options import to_jsonable
from peftbench.api.records import RunSpec
from peftbench.errors import UsageError
from peftbench.results.store import validate_run
from peftbench.system.files import move_aside, sha256

REJECTED = ".rejected"  # runs/.rejected/: run files a resumed session would not keep, moved aside

BUDGET_REASON = "time budget"  # how a cell left for later by --time-budget starts its reason


def shard_share(cells: list[RunSpec], shard: tuple[int, int] | None) -> list[RunSpec]:
    """This process's cells: every n-th of the plan from the k-th; the other shards run the rest. A tuned
    method's grid and seeds on a task go to one shard together, so no shard waits for another's grid."""
    if shard is None:
        return cells
    k, n = shard
    groups: dict[Any, int] = {}
    for spec in cells:
        groups.setdefault(_shard_group(spec), len(groups))
    return [spec for spec in cells if groups[_shard_group(spec)] % n == k]


def _shard_group(spec: RunSpec) -> Any:
    return (spec.method, spec.task) if spec.tuning is not None else spec.key


def kept(done: dict[str, dict[str, Any]], spec: RunSpec) -> dict[str, Any] | None:
    """The finished run file a continued session keeps for ``spec`` (None: run it)."""
    run = done.get(spec.key)
    return run if run is not None and run.get("status") == "ok" else None


@dataclass
class Verified:
    """The run files of a continued session's cells that prove themselves: ``runs`` by key, ``files`` (name ->
    sha256) to record again in ``session.json``."""

    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)


def verify_kept(output: Path, recorded: dict[str, str], cells: list[RunSpec],
                expected: Callable[[RunSpec], dict[str, Any]], say: Callable[[str], None]) -> Verified:
    """Check the run file of each of ``cells`` against the sha256 ``session.json`` recorded (``recorded``), its
    schema and the cell it must hold (``expected(spec)``: its method, task, seed and config). A file that does
    not prove itself is not kept: it is moved to ``runs/.rejected/`` (nothing is deleted), ``say`` names it and
    why, and its cell runs again. A kept file's hash is the recorded one, never one taken now."""
    verified = Verified()
    for spec in cells:
        path = output / "runs" / f"{spec.key}.json"
        if not path.is_file():
            continue
        why, data = None, None
        if path.name not in recorded:
            why = "it is not listed in session.json (copied in, or written after the session last recorded its files)"
        elif sha256(path) != recorded[path.name]:
            why = "its sha256 differs from the one session.json recorded (changed or truncated since it was written)"
        else:
            try:
                data = json.loads(path.read_text())
                validate_run(data, str(path))
            except ValueError as e:
                why = f"it is not valid JSON ({e})"
            except UsageError as e:
                why = f"it is not a valid run file ({str(e).removeprefix(f'{path}: ')})"
            else:
                why = _other_cell(data, expected(spec))
        if why:
            aside = move_aside(path, output / "runs" / REJECTED)
            say(f"warning: {path} is not kept: {why}; moved to {aside}, and its cell runs again.")
            continue
        verified.runs[spec.key], verified.files[path.name] = data, recorded[path.name]
    return verified


def _other_cell(data: dict[str, Any], expected: dict[str, Any]) -> str | None:
    data = _with_option_defaults(data, expected)
    differ = [k for k, v in expected.items() if _canonical(data.get(k)) != _canonical(v)]
    return f"it does not hold what the plan gives this cell (it differs in {', '.join(differ)})" if differ else None


def plan_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What the plan ``new`` (in session.json's terms: plan, train_configs, method_configs, tasks, retention)
    changes in the cells of the folder's ``old`` session.json, one line each. Cells added (more methods, tasks
    or seeds) change nothing the earlier cells were run with; cells left out of the plan do."""
    changes = []
    removed = [k for k in old.get("plan") or [] if k not in set(new["plan"])]
    if removed:
        changes.append(f"cells of the earlier plan left out: {', '.join(removed[:4])}"
                       + (f" and {len(removed) - 4} more" if len(removed) > 4 else ""))
    for section, label in (("train_configs", "training options of {}"), ("method_configs", "options of {}")):
        before, after = old.get(section) or {}, new[section]
        for name in [n for n in after if n in before]:
            was = _with_defaults(before[name], after[name]) if section == "train_configs" else before[name]
            changes += _differences(label.format(name.replace("--", " on ", 1)), was, after[name])
    for name, task in new["tasks"].items():
        was = (old.get("tasks") or {}).get(name)
        if isinstance(was, dict):
            changes += _differences(f"task {name}", {"version": was.get("version")}, {"version": task["version"]})
            if not _same_data(was.get("data_source"), task["data_source"]):
                changes.append(f"task {name}: its data differ from the earlier run's (data_source)")
    for name, tasks in new["retention"].items():
        was = (old.get("retention") or {}).get(name)
        if was is not None:
            changes += _differences(f"retention tasks of {name}", was, tasks)
    return changes


def option_defaults() -> dict[str, Any]:
    """Every shared option's default, under its ``--set`` key: what a session or run file recorded before the
    option existed ran as far as the option is concerned, so an added option left at its default changes
    nothing a continued session kept (``--resume`` keeps its cells)."""
    from peftbench.session.options import describe_options

    return {r["name"]: to_jsonable(r["default"]) for r in describe_options()}


def _with_defaults(recorded: Any, planned: Any) -> Any:
    """``recorded`` options with those the plan records but they do not (added since) at their defaults."""
    if not (isinstance(recorded, dict) and isinstance(planned, dict)):
        return recorded
    defaults = option_defaults()
    return {**{k: defaults[k] for k in planned if k in defaults and k not in recorded}, **recorded}


def _with_option_defaults(run: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
    """A run file with the options it does not record (written before they existed) at their defaults."""
    config, planned = run.get("config"), (expected.get("config") or {}).get("train")
    if not (isinstance(config, dict) and isinstance(config.get("train"), dict)):
        return run
    return {**run, "config": {**config, "train": _with_defaults(config["train"], planned)}}


def _differences(label: str, before: Any, after: Any) -> list[str]:
    if not (isinstance(before, dict) and isinstance(after, dict)):
        return [] if _canonical(before) == _canonical(after) else [f"{label}: {_show(before)} -> {_show(after)}"]
    keys = [k for k in sorted({*before, *after}) if _canonical(before.get(k, _UNSET)) != _canonical(after.get(k, _UNSET))]
    return [f"{label}: {k} {_show(before.get(k, _UNSET))} -> {_show(after.get(k, _UNSET))}" for k in keys]


def _same_data(before: Any, after: Any) -> bool:
    """Whether two data sources are the same data (where their files lie aside)."""
    if not isinstance(before, dict):
        return True  # not recorded: nothing to compare
    strip = lambda d: {k: v for k, v in d.items() if k != "folder"}  # noqa: E731
    return _canonical(strip(before)) == _canonical(strip(after))


_UNSET = "(not set)"


def _canonical(value: Any) -> str:
    return json.dumps(json.loads(json.dumps(value, default=str)), sort_keys=True)


def _show(value: Any) -> str:
    text = value if value == _UNSET else json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


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
