"""The cost phase of ``peftbench run --jobs``: what each method costs, measured with the device to itself.

Cells that ran beside other cells shared the GPU and the host, so their times are not the method's alone.
Once every worker has ended, one process (on the first worker's GPU and CPUs) measures, per method and task
with a finished cell:

- latency, as ``peftbench latency`` does (``latency_only.time_untrained``): latency depends on the shapes and
  placement of the method's weights, not on their trained values. As with ``latency_once``, one timing per
  method, configuration and grid (``timing.latency_key``): another task's file names the one it reuses;
- training throughput: a burst of optimizer steps of the method, untrained, on the task's real batches with
  the cell's options (compiled if the cell compiled): ``BURST_STEPS``, or as many as the cell trained when it
  trained fewer, timed after the first third of them (at most ``WARMUP_STEPS``: compilation, the
  allocator's first requests).

Each result is ``OUTPUT/cost/<method>--<task>.json``; the report takes its cost columns from there. A file
already there for the same options is kept (``--resume``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from peftbench.api.options import to_jsonable
from peftbench.api.records import SCHEMA_VERSION, RunContext, RunSpec, TuningInfo
from peftbench.session.folder import now
from peftbench.session.process import free_memory, pin, sigterm_as_interrupt
from peftbench.system import memory
from peftbench.system.files import write_json

COST_DIR = "cost"
BURST_STEPS, WARMUP_STEPS = 30, 5


def cost_main(session_cls: Any, config: Any, job: Any) -> None:
    """The cost phase's process: take the place, plan the session again, measure, write the files."""
    from peftbench.system.progress import NullProgress

    pin(job.place)
    code = 0
    try:
        with sigterm_as_interrupt():
            session = session_cls(dataclasses.replace(config, resume=True, restart=False), progress=NullProgress())
            plan = dataclasses.replace(session.plan(), session_id=job.session_id)
            CostPhase(plan, session, job).run()
    except KeyboardInterrupt:
        code = 130
    except Exception as e:
        print(f"peftbench cost phase stopped: {type(e).__name__}: {e}\n{traceback.format_exc()[-2000:]}",
              file=sys.stderr)
        code = 4
    sys.exit(code)


def cost_path(output: Path, method: str, task: str) -> Path:
    return output / COST_DIR / f"{method}--{task}.json"


class CostPhase:
    def __init__(self, plan: Any, session: Any, job: Any) -> None:
        self.plan, self.session, self.job = plan, session, job
        self.timed: dict[str, str] = {}   # latency key -> the cost file that timed it

    def run(self) -> list[dict[str, Any]]:
        from peftbench.session.policies import shard_share

        plan = self.plan
        cells = shard_share(plan.all_cells(), self.session.config.shard)
        firsts: dict[tuple[str, str], tuple[RunSpec, dict[str, Any]]] = {}
        for spec in cells:
            run = _read(plan.output / "runs" / f"{spec.key}.json")
            grid = spec.tuning is not None and spec.tuning.role == "grid"
            if spec.method == "base" or grid or run is None or run.get("status") != "ok":
                continue
            firsts.setdefault((spec.method, spec.task), (_as_run(spec, run), run))
        self.env = self.session.cell_env(plan)
        results = []
        for (method, task), (spec, run) in firsts.items():
            path = cost_path(plan.output, method, task)
            identity = self.identity(spec)
            kept = _read(path)
            if kept is not None and kept.get("status") == "ok" and kept.get("identity") == identity:
                self.note_timed(spec, path, kept)
                continue
            result = self.measure(spec, run, identity, path)
            write_json(path, result)
            results.append(result)
        return results

    def identity(self, spec: RunSpec) -> dict[str, Any]:
        """What a cost file measured with: the method's configuration and the cell's options."""
        return json.loads(json.dumps({"method_config": to_jsonable(self.plan.method_config_of(spec)),
                                      "train": self.plan.options_of(spec).flat()}, default=str))

    def context(self, spec: RunSpec, progress: Any = None) -> RunContext:
        plan, options = self.plan, self.plan.options_of(spec)
        return RunContext(spec=spec, method=plan.method(spec.method), method_config=plan.method_config_of(spec),
                          task=plan.scored_task(spec), train_config=options.train, eval_config=options.eval,
                          latency_config=options.latency, device=plan.device, include_path=self.env.include_path,
                          hook=self.env.hook, progress=progress)

    def note_timed(self, spec: RunSpec, path: Path, result: dict[str, Any]) -> None:
        from peftbench.session.timing import latency_key

        if (result.get("latency") or {}).get("regimes"):
            self.timed.setdefault(latency_key(self.context(spec)), path.name)

    def measure(self, spec: RunSpec, run: dict[str, Any], identity: dict[str, Any], path: Path) -> dict[str, Any]:
        result: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION, "kind": "cost", "method": spec.method, "task": spec.task,
            "cell": spec.key, "status": "ok", "identity": identity, "model": self.plan.model.info.source,
            "session_id": self.plan.session_id, "pid": os.getpid(), "place": self.job.place.describe(),
            "device": self.plan.device, "started": now(), "started_unix": round(time.time(), 3)}
        errors = {}
        for part, measure in (("latency", self.latency), ("train", self.throughput)):
            try:
                section = measure(spec, run, path)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # one part failing keeps the other
                errors[part] = {"type": type(e).__name__, "message": str(e)[:1000],
                                "traceback": traceback.format_exc()[-3000:]}
                section = None
            if section is not None:
                result[part] = section
            free_memory(self.plan.device)
        if errors:
            result.update(status="error", errors=errors)
        result.update(finished=now(), ended_unix=round(time.time(), 3))
        return result

    def latency(self, spec: RunSpec, run: dict[str, Any], path: Path) -> dict[str, Any] | None:
        """Latency timed from an untrained artifact, once per latency key (None: the cell times none)."""
        from peftbench.session.latency_only import base_loader, time_untrained
        from peftbench.session.timing import latency_key

        ctx = self.context(spec)
        if not ctx.latency_config.rounds:
            return None
        key = latency_key(ctx)
        if ctx.latency_config.once and key in self.timed:
            return {"measured_in": f"{COST_DIR}/{self.timed[key]}"}
        seconds: dict[str, float] = {}
        section = time_untrained(self.env.hook, ctx, base_loader(self.plan.model, self.plan.device), seconds)
        section["seconds"] = seconds
        if not section.get("errors"):
            self.timed[key] = path.name
        return section

    def throughput(self, spec: RunSpec, run: dict[str, Any], path: Path) -> dict[str, Any]:
        """Training throughput alone: a burst of steps on the task's batches (see the module's docstring)."""
        import torch

        from peftbench.session.cell import train_split

        clock = StepClock()
        ctx = self.context(spec, progress=clock)
        compiled = str(((run.get("train") or {}).get("loop") or {}).get("compile") or "off").startswith("blocks")
        steps = max(1, min(BURST_STEPS, int((run.get("train") or {}).get("steps") or BURST_STEPS)))
        warmup = min(WARMUP_STEPS, steps // 3)
        cfg = dataclasses.replace(ctx.train_config, steps=steps, epochs=0.0, max_tokens=0,
                                  compile="on" if compiled else "off")
        ctx = dataclasses.replace(ctx, train_config=cfg)
        data = train_split(ctx.task, self.env, cfg.max_length, self.plan.cache_dir)  # the cells' tokens, from disk
        torch.manual_seed(spec.seed)
        prepared = ctx.hook.prepare_model(run=ctx, base_model=self.plan.model.load(ctx.device)[0])
        seen: dict[str, Any] = {}
        with memory.watch_neighbours(seen):
            trained = ctx.hook.train_model(run=ctx, prepared=prepared, train_data=data)
        steady = clock.rate(warmup)
        return {"steps": trained.steps, "warmup_steps": warmup if steady is not None else 0, "tokens": trained.tokens,
                "wall_time_s": trained.wall_time_s,
                "tokens_per_s": steady if steady is not None else trained.tokens_per_s,
                "tokens_per_s_with_warmup": trained.tokens_per_s, "first_step_s": trained.first_step_s,
                "peak_memory_bytes": trained.peak_memory_bytes, "peak_memory_kind": trained.peak_memory_kind,
                "compile": "on" if compiled else "off", "loop": trained.loop, **seen}


class StepClock:
    """A progress sink that keeps (tokens so far, seconds so far) after each training step."""

    def __init__(self) -> None:
        self.marks: list[tuple[int, float]] = []

    def step(self, step: int, metrics: dict[str, Any]) -> None:
        self.marks.append((int(metrics["tokens"]), float(metrics["elapsed_s"])))

    def rate(self, warmup: int) -> float | None:
        """Tokens per second over the steps after the first ``warmup`` (None: too few steps for that)."""
        if len(self.marks) < warmup + 2:
            return None
        (t0, s0), (t1, s1) = self.marks[warmup - 1] if warmup else (0, 0.0), self.marks[-1]
        return round((t1 - t0) / (s1 - s0), 1) if s1 > s0 else None

    def __getattr__(self, name: str) -> Any:  # every other progress call: nothing to show
        return lambda *a, **k: None


def _read(path: Path) -> dict[str, Any] | None:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else None
    return None


def _as_run(spec: RunSpec, run: dict[str, Any]) -> RunSpec:
    """The cell as it ran: a tuned final with the values its run file records."""
    tuning = run.get("tuning")
    if spec.tuning is None or not isinstance(tuning, dict) or not tuning.get("values"):
        return spec
    info = TuningInfo(**{f.name: tuning.get(f.name, getattr(spec.tuning, f.name))
                         for f in dataclasses.fields(TuningInfo)})
    return dataclasses.replace(spec, tuning=info)


def load_costs(output: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """The cost files of a results folder by (method, task), each latency that reuses another file's with
    that file's section (``measured_in`` kept)."""
    files = {p.name: d for p in sorted((output / COST_DIR).glob("*.json")) if (d := _read(p)) is not None}
    out = {}
    for data in files.values():
        lat = data.get("latency") or {}
        src = lat.get("measured_in", "").removeprefix(f"{COST_DIR}/") if "regimes" not in lat else None
        if src and (files.get(src) or {}).get("latency"):
            data = {**data, "latency": {**files[src]["latency"], "measured_in": lat["measured_in"]}}
        if data.get("method") and data.get("task"):
            out[(data["method"], data["task"])] = data
    return out
