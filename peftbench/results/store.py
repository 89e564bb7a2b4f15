"""Result files: one JSON per cell, written atomically the moment the cell ends, plus session.json."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from peftbench.api.records import SCHEMA_VERSION, STATUSES
from peftbench.errors import PeftbenchError, UsageError
from peftbench.results.record import RunRecord
from peftbench.system.files import atomic_write, sha256, write_json  # noqa: F401  (the store's writers)

RUN_KEYS = ("schema_version", "status", "method", "task", "seed", "config", "params", "train", "eval",
            "latency", "artifact", "merge", "env")


def schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of a ``run`` file or a ``session`` record (``peftbench/results/schema/``)."""
    return json.loads((Path(__file__).parent / "schema" / f"{kind}.schema.json").read_text())


def schema_errors(data: Any, kind: str) -> list[str]:
    """Where ``data`` breaks its JSON Schema: 'path: message' lines (empty: valid)."""
    try:
        import jsonschema
    except ImportError:
        raise PeftbenchError("peftbench validates result files with the 'jsonschema' package, which is not "
                             "installed here (it is one of peftbench's dependencies): pip install "
                             "'jsonschema>=4.18'") from None

    validator = jsonschema.Draft202012Validator(schema(kind))
    return [f"{e.json_path}: {e.message[:200]}" for e in sorted(validator.iter_errors(data), key=lambda e: e.json_path)]


def validate_run(data: Any, where: str) -> None:
    if not isinstance(data, dict):
        raise UsageError(f"{where}: not a peftbench run file (expected a JSON object).")
    missing = [k for k in RUN_KEYS if k not in data]
    if missing:
        raise UsageError(f"{where}: not a valid peftbench run file; missing keys {', '.join(missing)}.")
    if data["schema_version"] != SCHEMA_VERSION:
        raise UsageError(f"{where}: schema_version {data['schema_version']!r}; this peftbench reads {SCHEMA_VERSION}.")
    if data["status"] not in STATUSES:
        raise UsageError(f"{where}: status {data['status']!r} is not one of {', '.join(STATUSES)}.")
    errors = schema_errors(data, "run")
    if errors:
        raise UsageError(f"{where}: does not match the run-file schema (docs/results-schema.md): {errors[0]}"
                         + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))


def run_json(record: RunRecord) -> dict[str, Any]:
    """A record as its run file's JSON: sections in declared order, ``optional`` fields left out while None."""
    return _json(record)


def _json(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _json(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not (f.metadata.get("optional") and getattr(obj, f.name) is None)}
    if isinstance(obj, dict):
        return {str(k): _json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json(v) for v in obj]
    return obj


def write_run(output: Path, key: str, data: RunRecord | dict[str, Any]) -> Path:
    """Write a run file atomically, then check it against the schema: a mismatch (a bug in peftbench or a
    plugin) or a check that cannot run (no jsonschema) is reported on stderr, never at the cost of the cell's
    results or of the session's remaining cells."""
    if isinstance(data, RunRecord):
        data = run_json(data)
    path = output / "runs" / f"{key}.json"
    write_json(path, data)
    try:
        validate_run(data, str(path))
    except PeftbenchError as e:
        import sys

        print(f"warning: {path} was written, but: {e}", file=sys.stderr)
    return path


def load_runs(output: Path) -> dict[str, dict[str, Any]]:
    """Every run file in ``output/runs``, by key; a damaged or invalid one raises, naming it."""
    return {path.stem: read_run(path) for path in sorted((output / "runs").glob("*.json"))}


def read_run(path: Path) -> dict[str, Any]:
    """One run file, checked against the run-file schema (UsageError naming the file when it is not one)."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); the file is damaged.") from None
    validate_run(data, str(path))
    return data


def load_session(output: Path) -> dict[str, Any]:
    path = Path(output) / "session.json"
    if not path.is_file():
        raise UsageError(f"{output} holds no peftbench session (no session.json). Pass the --output folder of "
                         "a `peftbench run`.")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}: not valid JSON ({e.msg}); the file is damaged.") from None
    if data.get("kind") != "latency":
        errors = schema_errors(data, "session")
        if errors:
            raise UsageError(f"{path}: does not match the session schema (docs/results-schema.md): {errors[0]}")
    return data


RERUN = "`peftbench run --resume` re-runs it, or restore the file"  # what to do about a damaged run file


@dataclasses.dataclass
class FolderCheck:
    """What a session folder's run files prove. ``runs``: the files that can be shown, by key (those
    ``session.json`` hashed, unchanged, and this session's own files written after it last recorded them);
    ``problems``: why the folder does not verify, one line per file naming it and what to do; ``unrecorded``:
    the keys of this session's files that ``session.json`` holds no sha256 for yet."""

    runs: dict[str, dict[str, Any]]
    problems: list[str]
    unrecorded: list[str]


def check_run_files(output: Path, session: dict[str, Any]) -> FolderCheck:
    """Check every run file against ``session.json``: a listed file must exist with the sha256 recorded for
    it; every file must be a valid run file; a file it does not list must carry this session's id (one
    written after the session last recorded its files: a stopped session), else it came from another one."""
    runs_dir, listed = Path(output) / "runs", session.get("run_files") or {}
    check = FolderCheck({}, [], [])
    bad = set()
    for name, digest in listed.items():
        path = runs_dir / name
        if not path.is_file():
            check.problems.append(f"{path}: listed in session.json but missing; {RERUN}.")
        elif sha256(path) != digest:
            bad.add(path)
            check.problems.append(f"{path}: its sha256 differs from the one session.json recorded; the file was "
                                  f"changed or truncated after the session wrote it: {RERUN}.")
    for path in sorted(set(runs_dir.glob("*.json")) - bad):
        try:
            data = read_run(path)
        except UsageError as e:
            check.problems.append(f"{e} {RERUN}.")
            continue
        owner = (data.get("env") or {}).get("session_id")
        if owner != session.get("session_id") and (owner is not None or path.name not in listed):
            whose = f"written by another session ({owner})" if owner else "naming no session (env.session_id)"
            check.problems.append(
                f"{path}: " + (whose if path.name in listed else f"not listed in session.json, and {whose}")
                + ": a run file copied in is not this session's result. Remove it; to show that session's cells "
                  "beside these, pass its own folder to `peftbench report` as well.")
            continue
        if path.name not in listed:
            check.unrecorded.append(path.stem)
        check.runs[path.stem] = data
    return check


def verify_run_files(output: Path, session: dict[str, Any]) -> FolderCheck:
    """``check_run_files``, raising a UsageError that names every file that does not verify."""
    check = check_run_files(output, session)
    if check.problems:
        raise UsageError(_does_not_verify(output, check.problems))
    return check


def _does_not_verify(output: Path, problems: list[str]) -> str:
    if len(problems) == 1:
        return problems[0]
    return f"{output} does not verify ({len(problems)} run files):\n" + "\n".join(f"  {p}" for p in problems)


def planned_cells(session: dict[str, Any]) -> list[str]:
    """The keys of every cell the session planned, in run order: each trained task's base row (unless
    --no-base), then ``plan``."""
    plan = list(session.get("plan") or [])
    config = session.get("config") or {}
    tasks = list(dict.fromkeys(key.split("--", 1)[1].rsplit("--seed", 1)[0] for key in plan if "--" in key))
    base = [f"base--{t}--seed0" for t in tasks] if config.get("base_row", True) else []
    return [*(k for k in base if k not in plan), *plan]
