"""A session's folder: ``session.json`` (what was planned, with what, and the sha256 of every run file this
session wrote or verified), written under a lock that the shards of one session share, and the claim of a
live writer (``.peftbench-writer``) that keeps two sessions from filling one folder at once."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import socket
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from peftbench.api.options import to_jsonable
from peftbench.api.records import SCHEMA_VERSION
from peftbench.errors import PeftbenchError, UsageError
from peftbench.session.plan import Plan, recorded_configs
from peftbench.system import meta
from peftbench.system.files import leftover_tmp, move_aside, write_json

WRITER_FILE = ".peftbench-writer"    # the live writers of the folder: [{pid, host, shard, since}]
RESTARTED = ".restarted"             # --restart moves an earlier session's files to .restarted/<its id>/


class WriteFailed(PeftbenchError):
    """A file of the session could not be written (disk full, quota, read-only): the session stops cleanly."""

    def __init__(self, path: Path | str, error: OSError) -> None:
        self.path, self.error = Path(path), error
        super().__init__(f"could not write {error.filename or path}: {error.strerror or error}")


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


@contextlib.contextmanager
def writer_lock(folder: Path, shard: tuple[int, int] | None, say: Callable[[str], None]) -> Iterator[bool]:
    """Claim ``folder`` for this process while it runs cells. Another live writer refuses the claim (exit 2,
    naming its pid) unless both are shards (``--shard``) of one session; a writer whose process has ended
    (kill -9, a crash) is taken over. Yields whether this process is the folder's only writer."""
    path = folder / WRITER_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname(), "shard": list(shard) if shard else None, "since": now()}
    try:
        with folder_lock(folder):
            writers = [w for w in _writers(path) if _same_process(w, me) or _alive(w, path, say)]
            for w in writers:
                if not _same_process(w, me) and (shard is None or w.get("shard") is None):
                    raise _busy(folder, path, w, shard)
            write_json(path, [*writers, me])
    except OSError as e:
        raise WriteFailed(path, e) from None
    try:
        yield not writers
    finally:
        with contextlib.suppress(OSError), folder_lock(folder):
            rest = [w for w in _writers(path) if w != me]
            if rest:
                write_json(path, rest)
            else:
                path.unlink(missing_ok=True)


def _writers(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [w for w in data if isinstance(w, dict)] if isinstance(data, list) else []


def _same_process(w: dict[str, Any], me: dict[str, Any]) -> bool:
    return w.get("pid") == me["pid"] and w.get("host") == me["host"]


def _alive(w: dict[str, Any], path: Path, say: Callable[[str], None]) -> bool:
    """Whether the writer ``w`` still runs (one on another host is taken to: it cannot be asked)."""
    if w.get("host") != socket.gethostname():
        return True
    pid = w.get("pid")
    try:
        if isinstance(pid, int) and pid > 0:
            os.kill(pid, 0)
            return True
    except PermissionError:  # a process of another user
        return True
    except OSError:
        pass
    say(f"{path}: pid {pid} was writing this folder and has ended without releasing it; taking over.")
    return False


def _busy(folder: Path, path: Path, w: dict[str, Any], shard: tuple[int, int] | None) -> UsageError:
    theirs = f", shard {w['shard'][0] + 1}/{w['shard'][1]}" if w.get("shard") else ""
    hint = " (shards of one session may share a folder: give every process --shard K/N)" \
        if (shard is None) != (w.get("shard") is None) else ""
    gone = f" If that process is gone (it runs on {w.get('host')}), delete {path}." \
        if w.get("host") != socket.gethostname() else ""
    return UsageError(f"--output {folder} is being written by another peftbench process (pid {w.get('pid')} on "
                      f"{w.get('host')}{theirs}, since {w.get('since')}): two runs in one folder would each train "
                      f"every cell{hint}. Wait for it to end, or choose another --output.{gone}")


def clean_leftovers(folder: Path, say: Callable[[str], None]) -> None:
    """Remove the temp files interrupted atomic writes left (only the writer's own ``.NAME.XXXXXXXX.tmp``)."""
    gone = []
    for sub in (folder, folder / "runs", folder / "lm_eval_tasks"):
        for p in leftover_tmp(sub):
            p.unlink(missing_ok=True)
            gone.append(p.name)
    if gone:
        say(f"{folder}: removed {len(gone)} temp file(s) interrupted writes left: {', '.join(gone[:5])}"
            + (" ..." if len(gone) > 5 else ""))


def set_aside_earlier(folder: Path) -> Path | None:
    """``--restart``: move the earlier session's session.json, run files and artifacts to
    ``.restarted/<its session id>/`` (nothing is deleted); return where, or None when there was nothing."""
    session, runs = folder / "session.json", sorted((folder / "runs").glob("*.json"))
    if not session.is_file() and not runs:
        return None
    try:
        old_id = str(json.loads(session.read_text()).get("session_id"))
    except (OSError, ValueError, AttributeError):
        old_id = "unknown"
    target = folder / RESTARTED / f"{old_id}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"
    for path in [p for p in (session, folder / "artifacts") if p.exists()]:
        move_aside(path, target)
    for path in runs:
        move_aside(path, target / "runs")
    return target


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def machine(device: str) -> dict[str, Any]:
    """The session's ``env``: the device, versions of everything, the code's git hash and digest."""
    return {**meta.device_info(device), "versions": meta.versions(), "git": meta.git_hash(),
            "source_sha256": meta.source_digest()}


def start_session(plan: Plan, env: dict[str, Any], started: str, files: dict[str, str]) -> Plan:
    """Write ``session.json`` as 'running'. A shard takes the session id the folder already has (shards
    planned at the same moment each made one). Returns the plan with that id."""
    with folder_lock(plan.output):
        if plan.config.shard is not None:
            old_id = _recorded(plan.output).get("session_id")
            if isinstance(old_id, str) and old_id != plan.session_id:
                plan = dataclasses.replace(plan, session_id=old_id)
        _write_session(plan, env, started, "running", files)
    return plan


def write_session(plan: Plan, env: dict[str, Any], started: str, status: str, files: dict[str, str]) -> None:
    """Write ``session.json`` under the folder's lock. ``files`` are the run files this process wrote or
    verified, by name, with their sha256; the hashes other shards recorded are kept beside them."""
    with folder_lock(plan.output):
        _write_session(plan, env, started, status, files)


def _write_session(plan: Plan, env: dict[str, Any], started: str, status: str, files: dict[str, str]) -> None:
    recorded = _recorded(plan.output).get("run_files") if plan.config.continues else None
    run_files = {**(recorded if isinstance(recorded, dict) else {}), **files}
    write_json(plan.output / "session.json", session_record(plan, env, started, status, dict(sorted(run_files.items()))))


def _recorded(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / "session.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def session_record(plan: Plan, env: dict[str, Any], started: str, status: str, run_files: dict[str, str]
                   ) -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "session_id": plan.session_id, "status": status,
            "command": meta.command_line(), "started": started, "updated": now(),
            "config": {**to_jsonable(plan.config), "output": str(plan.output), "device_resolved": plan.device},
            "plan": [c.key for c in plan.cells], "model": to_jsonable(plan.model.info),
            "tasks": {t.name: {**t.describe(), "data_source": plan.prepared[t.name].source,
                               "sizes": plan.prepared[t.name].sizes,
                               **({"baselines": plan.baselines[t.name]} if t.name in plan.baselines else {})}
                      for t in plan.eval_tasks},
            "retention": {k: [t.name for t in v] for k, v in plan.retention.items()},
            **recorded_configs(plan.method_configs, plan.options),
            **({"tuning": plan.tuning.describe()} if plan.tuning is not None else {}),
            "config_sha256": config_digest(plan),
            "env": env, "run_files": run_files}


def config_digest(plan: Plan) -> str:
    """sha256 of the canonical JSON of what decides the numbers: the model, methods, tasks, seeds and every
    cell's training and method configuration (not the output folder or resume flag)."""
    c = plan.config
    what = {"model": c.model, "methods": list(plan.methods), "tasks": [t.name for t in plan.tasks],
            "seeds": c.seeds, "retention": {k: [t.name for t in v] for k, v in plan.retention.items()},
            "train_configs": {f"{m}--{t}": o.flat() for (m, t), o in plan.options.items()},
            "method_configs": to_jsonable(dict(plan.method_configs)),
            **({"tuning": plan.tuning.describe()} if plan.tuning is not None else {})}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()
