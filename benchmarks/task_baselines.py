"""Chance and majority-class baselines for result folders written before sessions recorded them.

A session records each task's baselines in ``session.json`` (``tasks[<name>].baselines``); older folders do
not. This prepares each task of a folder's session from a local data folder with the code a session uses
(the task definitions ``peftbench run`` discovers, ``prepare_data``), checks that the data is the data the
session scored (the sha256 of every file equals the session's ``tasks[<name>].data_source``), and writes
``<folder>/baselines.json``, which ``peftbench report`` and ``peftbench claims`` read when ``session.json``
has none. The baselines respect the session's eval ``limit`` (lm-eval scores the first ``limit`` examples).

    python benchmarks/task_baselines.py --data-dir ../shared/data results/reference/sst2 results/reference/boolq

A folder whose data does not match, or a task with no data here, is named and skipped (exit 1); a folder
that is not a run session exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from peftbench.errors import UsageError
from peftbench.report.baselines import BASELINES_FILE, source_digests
from peftbench.tasks.baselines import prepared_baselines


def task_limits(session: dict[str, Any]) -> dict[str, int | None]:
    """Each scored task's eval ``limit`` (None: all examples), from the session's cell configurations; a
    retention task is scored with the limit of the cells that retain it."""
    per_task: dict[str, set[int]] = {}
    retention = session.get("retention") or {}
    for key, train in (session.get("train_configs") or {}).items():
        task = key.split("--", 1)[1]
        for name in (task, *retention.get(task, [])):
            per_task.setdefault(name, set()).add(int(train.get("limit") or 0))
    out = {}
    for name, limits in per_task.items():
        if len(limits) > 1:
            raise UsageError(f"task {name!r} was scored with different limits ({sorted(limits)}) in this session; "
                             "one baseline cannot stand for them.")
        out[name] = next(iter(limits)) or None
    return out


def folder_baselines(folder: Path, data_dir: Path, cache_dir: Path) -> tuple[dict[str, Any], list[str]]:
    """(the baselines.json content, a problem per task that could not be done)."""
    from peftbench.api.plugins import make_plugin_manager
    from peftbench.session.plan import all_tasks
    from peftbench.tasks.data import data_root
    from peftbench.tasks.data_spec import DataError
    from peftbench.tasks.task import BrokenTask, prepare_data

    path = folder / "session.json"
    if not path.is_file() or not (folder / "runs").is_dir():
        raise UsageError(f"{folder}: not a run session folder (no session.json and runs/).")
    session = json.loads(path.read_text())
    tasks_dirs = [Path(d) for d in (session.get("config") or {}).get("tasks_dirs") or []]
    every = all_tasks(make_plugin_manager(), tasks_dirs)
    limits = task_limits(session)
    root = data_root(data_dir)
    out: dict[str, Any] = {}
    problems = []
    for name, info in (session.get("tasks") or {}).items():
        task = every.get(name)
        if task is None or isinstance(task, BrokenTask):
            problems.append(f"{folder}: task {name!r} is not defined here" + (f" ({task.error})" if task else ""))
            continue
        if task.version != info.get("version"):
            problems.append(f"{folder}: task {name!r} is version {task.version} here, the session ran version "
                            f"{info.get('version')}")
            continue
        try:
            prepared = prepare_data(task, cache_dir, root, need_train=False)
        except (UsageError, DataError) as e:
            problems.append(f"{folder}: task {name!r}: {e}")
            continue
        recorded = info.get("data_source") or {"kind": "generated", "generator": (info.get("data") or {}).get(
            "generate"), "version": info.get("version")}
        digests = source_digests(prepared.source)
        if digests != source_digests(recorded):
            problems.append(f"{folder}: task {name!r}: the data in {data_dir} is not the data the session scored "
                            f"(sha256 {json.dumps(digests)} vs {json.dumps(source_digests(recorded))})")
            continue
        out[name] = {"baselines": prepared_baselines(prepared.folder, limits.get(name)), "data_source": digests}
    return out, problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", type=Path, help="run session folders (results/reference/sst2, ...)")
    ap.add_argument("--data-dir", type=Path, required=True, help="the local data folder (../shared/data)")
    ap.add_argument("--cache-dir", type=Path, help="where prepared data goes (default: peftbench's cache)")
    args = ap.parse_args(argv)
    from peftbench.models.sources import default_cache_dir

    cache_dir = args.cache_dir or default_cache_dir()
    failed = False
    for folder in args.folders:
        try:
            tasks, problems = folder_baselines(folder, args.data_dir, cache_dir)
        except UsageError as e:
            print(f"task_baselines: {e}", file=sys.stderr)
            return 2
        for p in problems:
            print(f"task_baselines: {p}", file=sys.stderr)
        failed |= bool(problems)
        if not tasks:
            continue
        record = {"note": "chance and majority-class baselines of each task's scored test examples, derived from "
                          "the data (not a measurement); written by `python benchmarks/task_baselines.py "
                          f"--data-dir DATA {folder}`", "tasks": tasks}
        (folder / BASELINES_FILE).write_text(json.dumps(record, indent=1) + "\n")
        print(f"{folder / BASELINES_FILE}: " + "; ".join(
            f"{t} chance {v['baselines']['chance']:.3f} majority {v['baselines']['majority']:.3f}"
            for t, v in tasks.items()))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
