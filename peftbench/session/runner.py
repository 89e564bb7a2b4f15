"""A session: plan every method x task x seed cell, then run them one by one, each written the moment it ends.

A failure inside a cell is recorded in that cell and the session goes on; Ctrl-C or SIGTERM marks the
remaining cells cancelled and keeps what finished; a file that cannot be written (a full disk) stops the
session cleanly, keeping every file written before. ``session.json`` records each run file's sha256 as it is
written, so a continued session keeps only the files that prove themselves. ``--resume``, ``--shard`` and
``--time-budget`` are small policies beside the loop (``peftbench.session.policies``); ``--jobs`` runs the cells
in worker processes instead (``peftbench.session.jobs``). Under torchrun (``--nproc``) rank 0 runs the session
and each other rank follows it, training every cell rank 0 announces in step with it and writing nothing
(``peftbench.session.sharded``; docs/distributed.md).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from peftbench.api.plugins import make_plugin_manager
from peftbench.api.records import RunSpec
from peftbench.api.registry import collect_methods
from peftbench.errors import PeftbenchError, UsageError
from peftbench.results.record import ErrorInfo, RunRecord
from peftbench.results.store import load_session, run_json, write_run
from peftbench.session.cache import CellCache
from peftbench.session.cell import blank_record, run_cell
from peftbench.session.cost import cost_main
from peftbench.session.folder import (
    WriteFailed,
    clean_leftovers,
    folder_lock,
    machine,
    now,
    set_aside_earlier,
    start_session,
    write_session,
    writer_lock,
)
from peftbench.session.phases import CellEnv
from peftbench.session.plan import Plan, SessionConfig, make_plan
from peftbench.session.policies import (
    BUDGET_REASON,
    CellBudget,
    Verified,
    folder_status,
    kept,
    shard_share,
    verify_kept,
)
from peftbench.session.process import free_memory, sigterm_as_interrupt
from peftbench.session.sharded import together
from peftbench.session.tuning import awaits_choice, choose_for, resolved
from peftbench.system.files import sha256
from peftbench.system.progress import NullProgress
from peftbench.tasks.task import materialize
from peftbench.train.distributed import World, announce, announced, run_together, wait_for_all

__all__ = ["Session", "SessionConfig"]


class Session:
    """``Session(config).run()``: plan, then run every cell. ``plan()`` alone validates the whole session."""

    clock = staticmethod(time.monotonic)  # seconds; tests replace it

    def __init__(self, config: SessionConfig, host: Any = None, progress: Any = None, jobs: int | str | None = None,
                 world: World | None = None) -> None:
        self.created = self.clock()
        self.config = config
        self.world = world or World()  # the processes training each cell together (torchrun): rank 0 leads
        self.jobs = jobs      # cells at once: a number, "auto" (``system.topology.auto_jobs``), None: one
        self.worker = None    # in a worker of --jobs: its WorkerJob
        self.workers_live = False  # the parent, while its workers may write session.json
        self.host = host or make_plugin_manager()
        self.progress = progress or NullProgress()
        self._plan: Plan | None = None
        self.files: dict[str, str] = {}      # run file name -> sha256: what this process wrote or verified
        self.unwritten: list[tuple[RunSpec, dict[str, Any]]] = []  # finished cells whose file failed to write
        self._stamp: tuple[dict[str, Any], str] = ({}, "")  # the session's env and start time

    def plan(self) -> Plan:
        if self._plan is None:
            world = self.world
            if together(world) and not world.main:
                wait_for_all(world)  # rank 0 plans first: it fills the data cache the others then read
            self._plan = make_plan(self.config, self.host, collect_methods(self.host), self.progress.message)
            if together(world):
                if world.main:
                    wait_for_all(world)
                wait_for_all(world)  # every rank planned before rank 0 writes in the folder
        return self._plan

    def run(self) -> list[dict[str, Any]]:
        plan = self.plan()
        if together(self.world) and not self.world.main:
            return self.follow(plan)
        existed = plan.output.is_dir()
        try:
            with writer_lock(plan.output, self.config.shard, warn) as alone, sigterm_as_interrupt():
                return self._run(plan, alone and existed)
        finally:
            if together(self.world):
                announce(self.world, None)  # the other ranks' session ends with this one's

    def follow(self, plan: Plan) -> list[dict[str, Any]]:
        """A rank other than 0: train each cell rank 0 announces, in step with it, until it announces none (or
        a rank hung); write nothing, show nothing."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="peftbench-rank") as tmp:
            env = CellEnv(hook=self.host.hook, progress=self.progress, tokenizer=plan.model.load_tokenizer(),
                          include_path=materialize(plan.eval_tasks, plan.prepared, Path(tmp)), artifacts=None)
            cache = CellCache()
            while not self.world.broken and (spec := announced(self.world)) is not None:
                self.cell_together(plan, spec, cache, env)
                free_memory(plan.device)
        return []

    def cell_together(self, plan: Plan, spec: RunSpec, cache: CellCache, env: CellEnv) -> RunRecord:
        """One cell on every rank (``run_together``); its record, with the failure of any rank: the first
        rank's error, every rank's traceback."""
        world = self.world
        if world.main:
            announce(world, spec)
        record = blank_record(plan, spec, "ok")

        def in_step() -> RunRecord:
            self.run_cell(plan, spec, cache, env, world, record)
            wait_for_all(world, patient=True)  # the others wait here while rank 0 scores, checks and times alone
            return record

        done = run_together(world, in_step)
        if done.failures:
            first = done.failures[0]
            kind = first.error.partition(":")[0]
            oom = "out of memory" in first.error.lower() or kind in ("OutOfMemoryError", "MemoryError")
            tracebacks = "\n".join(f"--- rank {f.rank} ({'failed first' if f.order == 1 else 'then'}) ---\n"
                                   f"{f.traceback}" for f in done.failures)
            record.failed("oom" if oom else "error", ErrorInfo(kind, done.error() or "", tracebacks))
        return record

    def _run(self, plan: Plan, clean: bool) -> list[dict[str, Any]]:
        hook = self.host.hook
        self._stamp = (machine(plan.device), now())
        hook.configure.call_historic(kwargs={"config": self.config})
        done = self.prepare_folder(plan, clean)
        self.files = dict(done.files)
        places = self.job_places(plan, done.runs)
        try:
            plan = self._plan = start_session(plan, *self._stamp, self.files)
        except OSError as e:
            raise WriteFailed(plan.output / "session.json", e) from None
        hook.session_start(session=plan)
        records: list[dict[str, Any]] = []
        status, failure, hung = "interrupted", None, None
        try:
            if places is not None:
                from peftbench.session.jobs import Parent

                status = Parent(self, plan, done.runs, *places).run(records)
            else:
                env = self.cell_env(plan)
                cache = CellCache.from_runs(done.runs.values(), plan.output if self.config.shard is not None else None)
                status = self.run_cells(plan, done.runs, cache, env, records)
        except KeyboardInterrupt:
            failure = self.cancel_rest(plan, done.runs, records)
        except WorldBroken as e:  # a rank hung: no new process group can form
            hung = e
            failure = self.cancel_rest(plan, done.runs, records)
        except WriteFailed as e:
            failure = e
            self.write_unwritten(plan, records)
            self.cancel_rest(plan, done.runs, records)
        finally:
            self.progress.stop()
            closing = self.record(plan, folder_status(status, self.config.shard, plan.all_cells(), plan.output))
        hook.session_finish(session=plan, results=records)
        if hung is not None:
            ok = sum(1 for r in records if r.get("status") == "ok")
            raise WorldBroken(f"{hung}; the session stopped: a process of the {self.world.size} did not finish "
                              f"that cell, so no new process group can form. The {ok} finished cell(s) are kept in "
                              f"{plan.output}; run the same command with --resume to continue.")
        if failure or closing:
            raise self.stopped(plan, failure, closing, done, records)
        return records

    def prepare_folder(self, plan: Plan, clean: bool) -> Verified:
        """Before any cell: --restart moves the earlier session aside; a new session finds the folder still
        empty; a continued one removes the temp files interrupted writes left (when no other shard is at work)
        and keeps the run files that prove themselves."""
        out = plan.output
        try:
            if self.config.restart:
                aside = set_aside_earlier(out)
                if aside:
                    warn(f"--restart: the earlier session's files in {out} were moved to {aside}.")
            elif not self.config.continues and ((out / "session.json").is_file() or any((out / "runs").glob("*.json"))):
                raise UsageError(f"--output {out}: another session started writing there while this one was being "
                                 "planned; choose another --output.")
            if clean:
                clean_leftovers(out, warn)
            if not self.config.continues:
                return Verified()
            recorded = load_session(out).get("run_files") if (out / "session.json").is_file() else None
            recorded = recorded if isinstance(recorded, dict) else {}
            cells = shard_share(plan.all_cells(), self.config.shard)
            verified = verify_kept(out, recorded, [c for c in cells if not awaits_choice(c)],
                                   lambda s: _identity(plan, s), warn)
            # a tuned method's kept seeds must hold what its kept grid chooses again
            finals = [_chosen(plan, c, verified.runs) for c in cells if awaits_choice(c)]
            more = verify_kept(out, recorded, finals, lambda s: _identity(plan, s), warn)
            return Verified({**verified.runs, **more.runs}, {**verified.files, **more.files})
        except OSError as e:
            raise WriteFailed(e.filename or out, e) from None

    def job_places(self, plan: Plan, done: dict[str, Any]) -> tuple[list[Any], str] | None:
        """Where the workers of --jobs go, and why that many (None: the cells run one by one, here)."""
        from peftbench.system import topology

        if self.jobs in (None, 1) or together(self.world):  # (several processes share each cell instead)
            return None
        todo = [s for s in shard_share(plan.all_cells(), self.config.shard) if not kept(done, s)]
        gpus = topology.visible_gpus() if plan.device == "cuda" else None
        if self.jobs == "auto":
            from peftbench.session.jobs import weight_bytes

            n, why = topology.auto_jobs(plan.device, gpus, weight_bytes(plan.model), len(topology.allowed_cpus()))
        else:
            n, why = int(self.jobs), f"--jobs {self.jobs}"
        n = min(n, len(todo))
        beside = any("jobs" in (r.get("env") or {}) for r in done.values())
        if n <= 1 and not beside:
            return None
        # a continued session whose kept cells ran beside others goes on so: its cost phase may still be due
        self.progress.message(f"{n} cell(s) at once: {why}")
        return topology.place_workers(max(n, 1), plan.device, gpus), why

    def cell_env(self, plan: Plan) -> CellEnv:
        """The tokenizer, the materialized task files (under the lock: other shards may write the same
        files at the same moment) and where artifacts go."""
        try:
            with folder_lock(plan.output):
                include_path = materialize(plan.eval_tasks, plan.prepared, plan.output)
        except OSError as e:
            raise WriteFailed(plan.output / "lm_eval_tasks", e) from None
        return CellEnv(hook=self.host.hook, progress=self.progress, tokenizer=plan.model.load_tokenizer(),
                       include_path=include_path,
                       artifacts=plan.output / "artifacts" if self.config.keep_artifacts else None)

    def run_cells(self, plan: Plan, done: dict[str, Any], cache: CellCache, env: CellEnv,
                  records: list[dict[str, Any]]) -> str:
        """Run this process's share of the cells; return 'finished', or 'interrupted' when the time budget
        left cells for a later --resume."""
        todo = shard_share(plan.all_cells(), self.config.shard)
        budget = CellBudget(self.config.time_budget_s, self.clock, self.created)
        budget.record_kept(done.values())
        deferred: list[tuple[RunSpec, str]] = []
        self.progress.start(len(todo))
        for spec in todo:
            if kept(done, spec):
                records.append(done[spec.key])
                self.progress.cell_done(spec, done[spec.key], resumed=True)
                continue
            if awaits_choice(spec):  # a tuned method's seed: trained with what its grid chose
                choice = choose_for(plan, spec, {**done, **{r["key"]: r for r in records}})
                if choice.values is None:
                    if choice.waiting:  # its grid cells were left for later: so is it
                        deferred.append((spec, f"{BUDGET_REASON}: its tuning grid is not finished "
                                               f"({choice.why_not})"))
                    else:
                        self.finish(plan, spec, self.no_choice(plan, spec, choice.why_not), records)
                    continue
                spec = resolved(spec, choice)
            why = budget.too_long(spec)
            if why:  # would not finish in time: left for a later --resume; a shorter cell may still fit
                deferred.append((spec, why))
                continue
            started = self.clock()
            if together(self.world):
                record = self.cell_together(plan, spec, cache, env)
            else:
                record = self.run_cell(plan, spec, cache, env)
            if record.status == "ok":
                budget.record(spec.method, spec.task, self.clock() - started)
            self.finish(plan, spec, record, records)
            free_memory(plan.device)
            if self.world.broken:
                raise WorldBroken(record.error.message if record.error else "a process hung")
        for spec, why in deferred:
            left = blank_record(plan, spec, "cancelled")
            left.reason = why
            self.finish(plan, spec, left, records)
        return "interrupted" if deferred else "finished"

    run_cell = staticmethod(run_cell)  # tests replace it
    cost_main = staticmethod(cost_main)  # --jobs: the cost phase's process (tests replace it)

    @staticmethod
    def no_choice(plan: Plan, spec: RunSpec, why: str) -> RunRecord:
        """A final cell whose grid gave no value to train with (every grid point failed)."""
        record = blank_record(plan, spec, "skipped")
        record.reason = why
        return record

    def finish(self, plan: Plan, spec: RunSpec, record: RunRecord, records: list[dict[str, Any]]) -> None:
        """Write the cell's run file and record its sha256 in session.json at once (a file session.json does
        not list is not kept by --resume); a write that fails stops the session (WriteFailed)."""
        data = run_json(record)
        try:
            self.write_file(plan, spec, data)
        except OSError as e:
            self.unwritten.append((spec, data))
            raise WriteFailed(plan.output / "runs" / f"{spec.key}.json", e) from None
        records.append(data)
        self.progress.cell_done(spec, data)
        failed = self.record(plan, "running")
        if failed:
            raise failed

    def write_file(self, plan: Plan, spec: RunSpec, data: dict[str, Any]) -> None:
        path = write_run(plan.output, spec.key, data)
        self.files[path.name] = sha256(path)

    def record(self, plan: Plan, status: str) -> WriteFailed | None:
        """Write session.json; the failure, if it could not be. While workers of --jobs run, each process only
        adds its run files' hashes to it."""
        try:
            if self.worker is not None or self.workers_live:
                from peftbench.session.jobs import add_run_files

                add_run_files(plan.output, self.files)
            else:
                write_session(plan, *self._stamp, status, self.files)
        except OSError as e:
            return WriteFailed(plan.output / "session.json", e)
        return None

    def write_unwritten(self, plan: Plan, records: list[dict[str, Any]]) -> None:
        """After a failed write, one more try for the finished cell whose file it was (space may be free now)."""
        for spec, data in list(self.unwritten):
            with contextlib.suppress(OSError):
                self.write_file(plan, spec, data)
                self.unwritten.remove((spec, data))
                records.append(data)

    def cancel_rest(self, plan: Plan, done: dict[str, Any], records: list[dict[str, Any]]) -> WriteFailed | None:
        """Ctrl-C, SIGTERM or a failed write: every cell of this process's share without a result is written as
        cancelled, as far as files can still be written; the first write failure, if any."""
        finished, failed = {r["key"] for r in records}, None
        for spec in shard_share(plan.all_cells(), self.config.shard):
            if spec.key not in finished and not kept(done, spec):
                cancelled = run_json(blank_record(plan, spec, "cancelled"))
                try:
                    self.write_file(plan, spec, cancelled)
                except OSError as e:
                    failed = failed or WriteFailed(plan.output / "runs" / f"{spec.key}.json", e)
                    continue
                records.append(cancelled)
        return failed

    def stopped(self, plan: Plan, failure: WriteFailed | None, closing: WriteFailed | None, done: Verified,
                records: list[dict[str, Any]]) -> PeftbenchError:
        """The one-line error of a session stopped by a write that failed: what failed, what is kept, what is
        not, and what to do."""
        ok = [r["key"] for r in records if r.get("status") == "ok"]
        not_run = [s.key for s in shard_share(plan.all_cells(), self.config.shard) if s.key not in set(ok)]
        parts = [str(failure or closing), f"the session stopped; the {len(ok)} finished cell(s) written are kept "
                                          f"in {plan.output}"]
        parts += [f"{spec.key} finished but its run file could not be written" for spec, _ in self.unwritten]
        if not_run:
            parts.append(f"{len(not_run)} cell(s) have no result: {', '.join(not_run[:5])}"
                         + (" ..." if len(not_run) > 5 else ""))
        if closing and failure is not None:
            parts.append(f"{closing} (its status may still say 'running')")
        parts.append("free some space and run the same command with --resume")
        return PeftbenchError("; ".join(parts) + ".")


class WorldBroken(PeftbenchError):
    """A rank of the processes training together did not finish a cell (hung): the session stops."""


def _chosen(plan: Plan, spec: RunSpec, runs: dict[str, Any]) -> RunSpec:
    """A final cell with its grid's choice, or as it is while the grid cannot choose yet."""
    choice = choose_for(plan, spec, runs)
    return resolved(spec, choice) if choice.values is not None else spec


def _identity(plan: Plan, spec: RunSpec) -> dict[str, Any]:
    """What a kept run file of ``spec`` must hold: its cell and the configuration the plan gives it (as JSON)."""
    blank = run_json(blank_record(plan, spec, "ok"))
    return json.loads(json.dumps({k: blank.get(k) for k in ("method", "task", "seed", "config", "tuning")},
                                 default=str))


def warn(text: str) -> None:
    print(text, file=sys.stderr)
