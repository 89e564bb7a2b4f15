"""A session's folder: ``session.json`` (what was planned, with what, and every run file's hash), written
under a lock that the shards of one session share."""

from __future__ import annotations

import contextlib
import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from peftbench.api.options import to_jsonable
from peftbench.api.records import SCHEMA_VERSION
from peftbench.session.plan import Plan
from peftbench.system import meta
from peftbench.system.files import sha256, write_json


@contextlib.contextmanager
def folder_lock(folder: Path):
    """An exclusive lock on a results folder (``.peftbench-lock`` in it), held while writing what several
    shards of one session share: ``session.json`` and the materialized task files. A no-op where ``fcntl``
    does not exist."""
    try:
        import fcntl
    except ImportError:  # not POSIX: shards are not supported there, and a single process needs no lock
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".peftbench-lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def machine(device: str) -> dict[str, Any]:
    """The session's ``env``: the device, versions of everything, the code's git hash and digest."""
    return {**meta.device_info(device), "versions": meta.versions(), "git": meta.git_hash(),
            "source_sha256": meta.source_digest()}


def write_session(plan: Plan, env: dict[str, Any], started: str, status: str) -> None:
    """Write ``session.json`` under the folder's lock: the last shard to end writes last, so its record
    hashes every run file."""
    with folder_lock(plan.output):
        write_json(plan.output / "session.json", session_record(plan, env, started, status))


def session_record(plan: Plan, env: dict[str, Any], started: str, status: str) -> dict[str, Any]:
    runs = sorted((plan.output / "runs").glob("*.json"))
    return {"schema_version": SCHEMA_VERSION, "session_id": plan.session_id, "status": status,
            "command": meta.command_line(), "started": started, "updated": now(),
            "config": {**to_jsonable(plan.config), "output": str(plan.output), "device_resolved": plan.device},
            "plan": [c.key for c in plan.cells], "model": to_jsonable(plan.model.info),
            "tasks": {t.name: {**t.describe(), "data_source": plan.prepared[t.name].source,
                               "sizes": plan.prepared[t.name].sizes} for t in plan.eval_tasks},
            "retention": {k: [t.name for t in v] for k, v in plan.retention.items()},
            "train_configs": {f"{m}--{t}": o.flat() for (m, t), o in plan.options.items()},
            "method_configs": to_jsonable(dict(plan.method_configs)),
            "config_sha256": config_digest(plan),
            "env": env, "run_files": {p.name: sha256(p) for p in runs}}


def config_digest(plan: Plan) -> str:
    """sha256 of the canonical JSON of what decides the numbers: the model, methods, tasks, seeds and every
    cell's training and method configuration (not the output folder or resume flag)."""
    c = plan.config
    what = {"model": c.model, "methods": list(plan.methods), "tasks": [t.name for t in plan.tasks],
            "seeds": c.seeds, "retention": {k: [t.name for t in v] for k, v in plan.retention.items()},
            "train_configs": {f"{m}--{t}": o.flat() for (m, t), o in plan.options.items()},
            "method_configs": to_jsonable(dict(plan.method_configs))}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()
