"""A session: every method x task x seed cell, each trained, scored, timed and written on its own.

    availability? -> load base -> prepare -> train -> save artifact -> evaluate (lm-eval, unmerged)
    -> latency: base / unmerged -> merge (if mergeable): parity, latency merged, unmerge, restore check
    -> reload artifact onto a fresh base: parity -> run file (ok | error | skipped | oom)

Everything the user can get wrong is checked in ``plan()`` before any training starts. A failure inside
a cell is recorded in that cell and the session goes on; Ctrl-C marks the remaining cells cancelled and
keeps what finished.
"""

from __future__ import annotations

import contextlib
import gc
import json
import shutil
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from peftbench.api.options import parse_sets, to_jsonable
from peftbench.api.plugins import PluginHost, make_plugin_manager
from peftbench.api.records import SCHEMA_VERSION, RunContext, RunSpec
from peftbench.api.registry import collect_methods
from peftbench.errors import UsageError
from peftbench.results.store import load_runs, load_session, sha256, write_json, write_run
from peftbench.session.options import OPTION_KEYS, CellOptions
from peftbench.system import meta
from peftbench.system.progress import NullProgress
from peftbench.tasks.task import (
    Task,
    discover_tasks,
    lm_eval_task,
    materialize,
    prepare_data,
    select_tasks,
    training_pairs,
)

FAILED = ("error", "oom", "cancelled")
BUDGET_KEYS = {"steps", "epochs", "max_tokens"}


@dataclass
class SessionConfig:
    methods: list[str]
    tasks: list[str] = field(default_factory=lambda: ["quickstart"])
    seeds: list[int] = field(default_factory=lambda: [0])
    model: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    device: str = "auto"
    output: Path | None = None
    sets: list[str] = field(default_factory=list)
    resume: bool = False
    tasks_dirs: list[Path] = field(default_factory=list)
    cache_dir: Path | None = None
    keep_artifacts: bool = False
    base_row: bool = True
    data_dir: Path | None = None         # local data folder (else $PEFTBENCH_DATA_DIR, else the hub)
    retention: list[str] | None = None   # eval-only tasks scored after training (None: each task's default)
    time_budget_s: float | None = None   # stop starting cells that would not finish within this many seconds
    shard: tuple[int, int] | None = None  # (k, n): run only the cells k, k+n, k+2n, ... of the plan (0-based)


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


BUDGET_REASON = "time budget"  # how a cell left for later by --time-budget starts its reason


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


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but torch sees no CUDA device. Use --device cpu or auto.")
    if device not in ("cpu", "cuda"):
        raise UsageError(f"--device {device!r} is not valid; use auto, cpu or cuda.")
    return device


class Session:
    def __init__(self, config: SessionConfig, host: PluginHost | None = None, progress=None) -> None:
        self.created = self.clock()
        self.config = config
        self.host = host or make_plugin_manager()
        self.hook = self.host.hook
        self.progress = progress or NullProgress()
        self.registry = collect_methods(self.host)
        self.id = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]

    # ---- planning: every user mistake is caught here, before any training ---------------------------
    def all_tasks(self) -> dict[str, Task]:
        dirs: list[Path] = []
        for impl in self.hook.register_tasks.get_hookimpls():
            impl.function(register=dirs.append)
        return discover_tasks([*dirs, *self.config.tasks_dirs])

    def plan(self) -> None:
        from peftbench.models.sources import default_cache_dir, resolve_model

        c = self.config
        self.methods = [self.registry.canonical(m, "--methods") for m in c.methods]
        if len(set(self.methods)) != len(self.methods):
            raise UsageError(f"--methods names a method twice: {', '.join(c.methods)}.")
        from peftbench.tasks.data import data_root

        every = self.all_tasks()
        self.tasks = select_tasks(every, c.tasks)
        for task in self.tasks:
            if task.eval_only and self.methods:
                raise UsageError(f"task {task.name!r} has no train split, so methods cannot be trained on it. Score "
                                 f"it as a retention task instead: --retention {task.name}.")
        self.retention: dict[str, list[Task]] = {}
        for task in self.tasks:
            names = c.retention if c.retention is not None else task.retention
            chosen = select_tasks(every, names) if names else []
            if any(r.name == task.name for r in chosen):
                raise UsageError(f"--retention names {task.name!r}, the task being trained on; retention scores "
                                 "tasks the model was not trained on.")
            self.retention[task.name] = chosen
        self.eval_tasks = list({t.name: t for t in [*self.tasks, *(r for rs in self.retention.values() for r in rs)]}
                               .values())
        self.device = resolve_device(c.device)
        self.cache_dir = Path(c.cache_dir) if c.cache_dir else default_cache_dir()
        root = data_root(c.data_dir)
        self.prepared = {t.name: prepare_data(t, self.cache_dir, root, need_train=t in self.tasks and bool(self.methods))
                         for t in self.eval_tasks}
        train_sets, method_sets = parse_sets(c.sets, [*self.registry.entries, *self.registry.aliases], OPTION_KEYS)
        method_sets = {self.registry.canonical(k): v for k, v in method_sets.items()}
        unused = set(method_sets) - set(self.methods)
        if unused:
            raise UsageError(f"--set gives options for {', '.join(sorted(unused))}, which --methods does not run.")
        self.method_configs = {m: self.registry.get(m).make_config(method_sets.get(m, {})) for m in self.methods}
        self.options: dict[tuple[str, str], CellOptions] = {}
        for task in self.tasks:
            for m in [*self.methods, "base"]:
                task_values = task.train_overrides(self.device, self.registry.base(m) if m != "base" else None)
                if BUDGET_KEYS & set(train_sets):  # the user's budget replaces the task's, not adds to it
                    task_values = {k: v for k, v in task_values.items() if k not in BUDGET_KEYS}
                values = {**task_values, **train_sets}
                opts = CellOptions.build(values, where=f"training options for {m} on task {task.name}")
                if m != "base" and opts.train.lr == 0:
                    opts.train.lr = self.registry.get(m).default_lr
                self.options[(m, task.name)] = opts
        self.output = Path(c.output) if c.output else Path("peftbench-results") / self.id
        self._check_output()
        self.model = resolve_model(c.model, cache_dir=self.cache_dir, progress=self.progress.message)
        self.cells = [RunSpec(m, t.name, s) for t in self.tasks for s in c.seeds for m in self.methods]

    def _check_output(self) -> None:
        out = self.output
        if out.exists() and not out.is_dir():
            raise UsageError(f"--output {out} exists and is not a folder.")
        existing = (out / "session.json").is_file() or any((out / "runs").glob("*.json"))
        if self.config.shard is not None and not self.config.output:
            raise UsageError("--shard needs --output: the shards of a session work in one folder.")
        if existing and not self.continues:
            raise UsageError(f"--output {out} already holds another session's results. Pass --resume to continue "
                             "that session (finished cells are kept), or choose an empty --output folder.")
        if existing and self.continues and (out / "session.json").is_file():
            old = load_session(out)
            if old.get("config", {}).get("model") not in (None, self.config.model):
                raise UsageError(f"--resume: {out} was run with model {old['config']['model']!r}, not "
                                 f"{self.config.model!r}; results of different base models cannot be mixed.")
            self.id = old.get("session_id", self.id)

    # ---- running ------------------------------------------------------------------------------------
    def session_record(self, status: str, results: list[dict[str, Any]]) -> dict[str, Any]:
        runs = sorted((self.output / "runs").glob("*.json"))
        return {"schema_version": SCHEMA_VERSION, "session_id": self.id, "status": status,
                "command": meta.command_line(), "started": self.started, "updated": _now(),
                "config": {**to_jsonable(self.config), "output": str(self.output), "device_resolved": self.device},
                "plan": [c.key for c in self.cells], "model": to_jsonable(self.model.info),
                "tasks": {t.name: {**t.describe(), "data_source": self.prepared[t.name].source,
                                   "sizes": self.prepared[t.name].sizes} for t in self.eval_tasks},
                "retention": {k: [t.name for t in v] for k, v in self.retention.items()},
                "train_configs": {f"{m}--{t}": o.flat() for (m, t), o in self.options.items()},
                "method_configs": to_jsonable(self.method_configs),
                "config_sha256": _config_digest(self),
                "env": self.env, "run_files": {p.name: sha256(p) for p in runs}}

    def run(self) -> list[dict[str, Any]]:
        import torch

        if not hasattr(self, "cells"):
            self.plan()
        self.started = _now()
        self.env = {**meta.device_info(self.device), "versions": meta.versions(), "git": meta.git_hash(),
                    "source_sha256": meta.source_digest()}
        self.hook.configure.call_historic(kwargs={"config": self.config})
        shard = self.config.shard
        done = load_runs(self.output) if self.continues else {}
        self.base_retention: dict[str, Any] = {}
        self.latency_cache: dict[str, Any] = {}  # latency_key -> the first cell's latency (latency_once)
        for r in done.values():  # a resumed session reuses the base model's retention scores
            if r.get("method") == "base" and r.get("status") == "ok":
                for name, entry in (r.get("retention") or {}).items():
                    self.base_retention.setdefault(name, entry)
        self.remember_latency(done.values())  # ... and, with latency_once, the timings its kept cells measured
        with folder_lock(self.output):
            write_json(self.output / "session.json", self.session_record("running", []))
        self.hook.session_start(session=self)
        self.tokenizer = self.model.load_tokenizer()
        with folder_lock(self.output):  # other shards may write the same task files at the same moment
            self.include_path = materialize(self.eval_tasks, self.prepared, self.output)
        results: list[dict[str, Any]] = []
        todo = self.all_cells()
        if shard is not None:  # this process's share; the others run the rest in the same folder
            todo = [spec for i, spec in enumerate(todo) if i % shard[1] == shard[0]]
        self.progress.start(len(todo))
        status = "finished"
        budget = CellBudget(self.config.time_budget_s, self.clock, self.created)
        for r in done.values():
            if r.get("status") == "ok":
                budget.record(r["method"], r["task"], sum(v for v in (r.get("timings") or {}).values()
                                                          if isinstance(v, (int, float))))
        deferred: list[tuple[RunSpec, str]] = []
        try:
            for spec in todo:
                if done.get(spec.key, {}).get("status") == "ok":
                    results.append(done[spec.key])
                    self.progress.cell_done(spec, done[spec.key], resumed=True)
                    continue
                why = budget.too_long(spec)
                if why:  # would not finish in time: left for a later --resume; a shorter cell may still fit
                    deferred.append((spec, why))
                    continue
                started = self.clock()
                result = self.run_cell(spec)
                if result["status"] == "ok":
                    budget.record(spec.method, spec.task, self.clock() - started)
                write_run(self.output, spec.key, result)
                results.append(result)
                self.progress.cell_done(spec, result)
                gc.collect()
                if self.device == "cuda":
                    torch.cuda.empty_cache()
            for spec, why in deferred:
                left = {**self._blank(spec, "cancelled"), "reason": why}
                write_run(self.output, spec.key, left)
                results.append(left)
                self.progress.cell_done(spec, left)
            if deferred:
                status = "interrupted"
        except KeyboardInterrupt:
            status = "interrupted"
            finished = {r["key"] for r in results}
            for spec in todo:
                if spec.key not in finished and done.get(spec.key, {}).get("status") != "ok":
                    cancelled = self._blank(spec, "cancelled")
                    write_run(self.output, spec.key, cancelled)
                    results.append(cancelled)
        finally:
            self.progress.stop()
            with folder_lock(self.output):  # the last shard to end writes last: its record hashes every file
                write_json(self.output / "session.json", self.session_record(self._folder_status(status), results))
        self.hook.session_finish(session=self, results=results)
        return results

    def _folder_status(self, own: str) -> str:
        """This process's status, except that a shard that finished its share leaves the session
        'interrupted' (for --resume) while any cell of the plan has no final result yet: another shard is
        still at work or was stopped."""
        if own != "finished" or self.config.shard is None:
            return own
        for spec in self.all_cells():
            path = self.output / "runs" / f"{spec.key}.json"
            try:
                if json.loads(path.read_text()).get("status") == "cancelled":
                    return "interrupted"
            except (OSError, ValueError):
                return "interrupted"
        return "finished"

    clock = staticmethod(time.monotonic)  # seconds; tests replace it

    @property
    def continues(self) -> bool:
        """Whether this process continues what is in --output (--resume, or one shard among others)."""
        return self.config.resume or self.config.shard is not None

    def all_cells(self) -> list[RunSpec]:
        """Every cell of the session in run order: the base rows first, then the plan."""
        return ([RunSpec("base", t.name, 0) for t in self.tasks] if self.config.base_row else []) + self.cells

    def remember_latency(self, runs: Any) -> None:
        """Add to the latency_once cache the timings these run files measured themselves."""
        from peftbench.session.cell import latency_key_of_result

        for r in runs:
            latency = r.get("latency") or {}
            key = latency_key_of_result(r) if r.get("status") == "ok" else None
            if key and latency.get("regimes") and not latency.get("errors") and "measured_in" not in latency:
                self.latency_cache.setdefault(key, {"latency": latency, "cell": r.get("key")})

    def latency_of_other_shards(self) -> None:
        """With --shard, another process may have timed this method since this one started: read the folder's
        run files again, so a session times each method once, not once per shard."""
        if self.config.shard is None:
            return
        runs = []
        for path in (self.output / "runs").glob("*.json"):
            try:
                runs.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        self.remember_latency(runs)

    def _blank(self, spec: RunSpec, status: str) -> dict[str, Any]:
        method = self.registry.get(spec.method) if spec.method != "base" else None
        return {"schema_version": SCHEMA_VERSION, "key": spec.key, "status": status, "method": spec.method,
                "task": spec.task, "seed": spec.seed, "model": self.model.info.source,
                "config": {"method": to_jsonable(self.method_configs.get(spec.method)),
                           "train": self.options[(spec.method, spec.task)].flat()},
                "capabilities": to_jsonable(method.capabilities) if method else None,
                "data": self.prepared[spec.task].source, "limit": self.options[(spec.method, spec.task)].eval.limit,
                "params": None, "train": None, "eval": None, "retention": None, "latency": None, "artifact": None,
                "merge": None,
                "reload": None, "timings": {}, "extras": {}, "error": None, "reason": None,
                "env": {"device": self.device, "session_id": self.id}}

    def run_cell(self, spec: RunSpec) -> dict[str, Any]:
        from peftbench.session.cell import run_base_cell, run_method_cell

        task = next(t for t in self.tasks if t.name == spec.task)
        result = self._blank(spec, "ok")
        method = self.registry.get(spec.method) if spec.method != "base" else None
        run = RunContext(spec=spec, method=method, method_config=self.method_configs.get(spec.method), task=task,
                         train_config=self.options[(spec.method, spec.task)].train,
                         eval_config=self.options[(spec.method, spec.task)].eval,
                         latency_config=self.options[(spec.method, spec.task)].latency, device=self.device,
                         include_path=self.include_path, hook=self.hook, progress=self.progress)
        self.progress.cell_start(spec)
        if method is not None:
            avail = method.availability(self.device)
            if not avail:
                result.update(status="skipped", reason=avail.reason)
                return result
        self.hook.run_start(run=run)
        try:
            if method is None:
                run_base_cell(self, run, result)
            else:
                run_method_cell(self, run, result, self._train_data(task, run.train_config))
        except KeyboardInterrupt:
            raise
        except Exception as e:  # one failing cell never ends the session
            result.update(status="oom" if _is_oom(e) else "error",
                          error={"type": type(e).__name__, "message": str(e), "traceback": traceback.format_exc()})
        result["extras"] = run.extras  # the live dict: record() calls from run_finish land too
        self.hook.run_finish(run=run, result=result)
        return result

    def _train_data(self, task: Task, cfg: Any):
        from peftbench.train.loop import tokenize_pairs

        key = (task.name, cfg.max_length)
        cache = self.__dict__.setdefault("_data_cache", {})
        if key not in cache:
            pairs = training_pairs(lm_eval_task(task, self.include_path))
            cache[key] = tokenize_pairs(pairs, self.tokenizer, cfg.max_length)
        return cache[key]

    @contextlib.contextmanager
    def artifact_dir(self, spec: RunSpec):
        if self.config.keep_artifacts:
            d = self.output / "artifacts" / spec.key
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
            yield d
        else:
            d = Path(tempfile.mkdtemp(prefix=f"peftbench-{spec.key}-"))
            try:
                yield d
            finally:
                shutil.rmtree(d, ignore_errors=True)


def _is_oom(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _config_digest(session: Session) -> str:
    """sha256 of the canonical JSON of what decides the numbers: the model, methods, tasks, seeds and every
    cell's training and method configuration (not the output folder or resume flag)."""
    import hashlib
    import json

    c = session.config
    what = {"model": c.model, "methods": session.methods, "tasks": [t.name for t in session.tasks], "seeds": c.seeds,
            "retention": {k: [t.name for t in v] for k, v in session.retention.items()},
            "train_configs": {f"{m}--{t}": o.flat() for (m, t), o in session.options.items()},
            "method_configs": to_jsonable(session.method_configs)}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()
