"""A session: plan every method x task x seed cell, then run them one by one, each written the moment it ends.

A failure inside a cell is recorded in that cell and the session goes on; Ctrl-C marks the remaining cells
cancelled and keeps what finished. ``--resume``, ``--shard`` and ``--time-budget`` are small policies beside
the loop (``peftbench.session.policies``).
"""

from __future__ import annotations

import gc
import time
from typing import Any

from peftbench.api.plugins import make_plugin_manager
from peftbench.api.records import RunSpec
from peftbench.api.registry import collect_methods
from peftbench.results.record import RunRecord
from peftbench.results.store import load_runs, run_json, write_run
from peftbench.session.cache import CellCache
from peftbench.session.cell import blank_record, run_cell
from peftbench.session.folder import folder_lock, machine, now, write_session
from peftbench.session.phases import CellEnv
from peftbench.session.plan import Plan, SessionConfig, make_plan
from peftbench.session.policies import CellBudget, folder_status, kept, shard_share
from peftbench.system.progress import NullProgress
from peftbench.tasks.task import materialize

__all__ = ["Session", "SessionConfig"]


class Session:
    """``Session(config).run()``: plan, then run every cell. ``plan()`` alone validates the whole session."""

    clock = staticmethod(time.monotonic)  # seconds; tests replace it

    def __init__(self, config: SessionConfig, host: Any = None, progress: Any = None) -> None:
        self.created = self.clock()
        self.config = config
        self.host = host or make_plugin_manager()
        self.progress = progress or NullProgress()
        self._plan: Plan | None = None

    def plan(self) -> Plan:
        if self._plan is None:
            self._plan = make_plan(self.config, self.host, collect_methods(self.host), self.progress.message)
        return self._plan

    def run(self) -> list[dict[str, Any]]:
        plan, hook = self.plan(), self.host.hook
        started, env_info = now(), machine(plan.device)
        hook.configure.call_historic(kwargs={"config": self.config})
        done = load_runs(plan.output) if self.config.continues else {}
        write_session(plan, env_info, started, "running")
        hook.session_start(session=plan)
        env = self.cell_env(plan)
        cache = CellCache.from_runs(done.values(), plan.output if self.config.shard is not None else None)
        records: list[dict[str, Any]] = []
        status = "interrupted"
        try:
            status = self.run_cells(plan, done, cache, env, records)
        except KeyboardInterrupt:
            self.cancel_rest(plan, done, records)
        finally:
            self.progress.stop()
            write_session(plan, env_info, started, folder_status(status, self.config.shard, plan.all_cells(),
                                                                  plan.output))
        hook.session_finish(session=plan, results=records)
        return records

    def cell_env(self, plan: Plan) -> CellEnv:
        """The tokenizer, the materialized task files (under the lock: other shards may write the same
        files at the same moment) and where artifacts go."""
        with folder_lock(plan.output):
            include_path = materialize(plan.eval_tasks, plan.prepared, plan.output)
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
            why = budget.too_long(spec)
            if why:  # would not finish in time: left for a later --resume; a shorter cell may still fit
                deferred.append((spec, why))
                continue
            started = self.clock()
            record = self.run_cell(plan, spec, cache, env)
            if record.status == "ok":
                budget.record(spec.method, spec.task, self.clock() - started)
            self.finish(plan, spec, record, records)
            _free_memory(plan.device)
        for spec, why in deferred:
            left = blank_record(plan, spec, "cancelled")
            left.reason = why
            self.finish(plan, spec, left, records)
        return "interrupted" if deferred else "finished"

    run_cell = staticmethod(run_cell)  # tests replace it

    def finish(self, plan: Plan, spec: RunSpec, record: RunRecord, records: list[dict[str, Any]]) -> None:
        data = run_json(record)
        write_run(plan.output, spec.key, data)
        records.append(data)
        self.progress.cell_done(spec, data)

    def cancel_rest(self, plan: Plan, done: dict[str, Any], records: list[dict[str, Any]]) -> None:
        """Ctrl-C: every cell of this process's share without a result is written as cancelled."""
        finished = {r["key"] for r in records}
        for spec in shard_share(plan.all_cells(), self.config.shard):
            if spec.key not in finished and not kept(done, spec):
                cancelled = run_json(blank_record(plan, spec, "cancelled"))
                write_run(plan.output, spec.key, cancelled)
                records.append(cancelled)


def _free_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()
