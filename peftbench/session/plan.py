"""Planning a session: every choice resolved and every user mistake caught before anything trains.

``make_plan`` turns a ``SessionConfig`` (what the user asked for) into a frozen ``Plan``: the resolved model,
methods, tasks with their retention tasks and prepared data, each cell's method and shared options, the
output folder. Running a cell reads the plan; nothing writes back into it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from peftbench.api.options import parse_sets, to_jsonable
from peftbench.api.plugins import task_dirs
from peftbench.api.records import RunSpec
from peftbench.errors import UsageError
from peftbench.results.store import load_session
from peftbench.session.options import OPTION_KEYS, CellOptions
from peftbench.session.policies import plan_changes
from peftbench.session.tuning import (
    TuningPlan,
    cell_options,
    final_cell,
    grid_cells,
    make_tuning,
    method_config,
)
from peftbench.system.files import unsafe_name
from peftbench.tasks.task import Task, discover_tasks, prepare_data, select_tasks

BUDGET_KEYS = {"steps", "epochs", "max_tokens"}
DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


@dataclass
class SessionConfig:
    """What the user asked for (``peftbench run``'s options)."""

    methods: list[str]
    tasks: list[str] = field(default_factory=lambda: ["quickstart"])
    seeds: list[int] = field(default_factory=lambda: [0])
    model: str = DEFAULT_MODEL
    device: str = "auto"
    output: Path | None = None
    sets: list[str] = field(default_factory=list)
    resume: bool = False
    restart: bool = False                # start over in --output: its earlier files are moved aside, none kept
    tasks_dirs: list[Path] = field(default_factory=list)
    cache_dir: Path | None = None
    keep_artifacts: bool = False
    base_row: bool = True
    data_dir: Path | None = None         # local data folder (else $PEFTBENCH_DATA_DIR, else the hub)
    retention: list[str] | None = None   # eval-only tasks scored after training (None: each task's default)
    time_budget_s: float | None = None   # stop starting cells that would not finish within this many seconds
    shard: tuple[int, int] | None = None  # (k, n): run only the cells k, k+n, k+2n, ... of the plan (0-based)
    tune: list[str] = field(default_factory=list)  # keys tuned on the validation split (lr, lora.r)
    grid: list[str] = field(default_factory=list)  # KEY=V1,V2,...: the values tried (else each method's default)

    @property
    def continues(self) -> bool:
        """Whether this process continues what is in --output (--resume, or one shard among others)."""
        return (self.resume or self.shard is not None) and not self.restart


@dataclass(frozen=True)
class Plan:
    """A session, resolved. ``cells`` are the trained cells; ``all_cells()`` adds the base rows."""

    config: SessionConfig
    session_id: str
    output: Path
    device: str
    cache_dir: Path
    model: Any                                    # peftbench.models ResolvedModel
    registry: Any                                 # peftbench.api.registry.MethodRegistry
    methods: tuple[str, ...]
    tasks: tuple[Task, ...]
    retention: Mapping[str, tuple[Task, ...]]     # task trained on -> tasks scored for forgetting
    prepared: Mapping[str, Any]                   # task name -> PreparedData (its files and sizes)
    method_configs: Mapping[str, Any]
    options: Mapping[tuple[str, str], CellOptions]  # (method or "base", task) -> shared options
    cells: tuple[RunSpec, ...]
    tuning: TuningPlan | None = None              # --tune: each (method, task)'s grid
    baselines: Mapping[str, Any] = field(default_factory=dict)  # task -> chance and majority class of its scored test

    @property
    def eval_tasks(self) -> list[Task]:
        """Every task scored: those trained on, then their retention tasks, each once."""
        tasks = [*self.tasks, *(t for ts in self.retention.values() for t in ts)]
        return list({t.name: t for t in tasks}.values())

    def all_cells(self) -> list[RunSpec]:
        """Every cell of the session in run order: the base rows first, then the plan."""
        base = [RunSpec("base", t.name, 0) for t in self.tasks] if self.config.base_row else []
        return [*base, *self.cells]

    def task(self, name: str) -> Task:
        return next(t for t in self.tasks if t.name == name)

    def method(self, name: str) -> Any:
        """The Method object of a cell's method (None for the base row)."""
        return self.registry.get(name) if name != "base" else None

    def options_of(self, spec: RunSpec) -> CellOptions:
        """A cell's shared options: its method's on its task, with its tuned values (``tuning.cell_options``)."""
        return cell_options(self.options[(spec.method, spec.task)], spec)

    def method_config_of(self, spec: RunSpec) -> Any:
        """A cell's method config (None for the base row), with its tuned method options."""
        config = self.method_configs.get(spec.method)
        return method_config(config, spec) if config is not None else None

    def scored_task(self, spec: RunSpec) -> Task:
        """The task a cell is scored on: a grid cell scores the task's validation split, every other its test."""
        task = self.task(spec.task)
        return task.on_split(spec.tuning.split) if spec.tuning is not None else task

    def retention_of(self, spec: RunSpec) -> tuple[Task, ...]:
        """The tasks a cell scores for forgetting (none for a grid cell: it only ranks grid points)."""
        grid = spec.tuning is not None and spec.tuning.role == "grid"
        return () if grid else tuple(self.retention.get(spec.task) or ())


def all_tasks(host: Any, tasks_dirs: list[Path]) -> dict[str, Task]:
    """Every task the plugins register (in load order) plus those in ``tasks_dirs``; a later folder's task
    of the same name wins."""
    return discover_tasks([*task_dirs(host), *tasks_dirs], OPTION_KEYS)


def make_plan(config: SessionConfig, host: Any, registry: Any, say: Any = None) -> Plan:
    """Resolve ``config`` into a Plan, or raise a UsageError/ConfigError naming what is wrong."""
    from peftbench.models.sources import default_cache_dir, resolve_model
    from peftbench.tasks.data import data_root

    methods = _methods(config, registry)
    every = all_tasks(host, config.tasks_dirs)
    tasks = _trained_tasks(config, every, methods)
    retention = _retention(config, every, tasks)
    device = resolve_device(config.device)
    cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    root = data_root(config.data_dir)
    scored = list({t.name: t for t in [*tasks, *(r for rs in retention.values() for r in rs)]}.values())
    check_names(methods, scored)
    method_configs, options = _options(config, registry, methods, tasks, device)
    tuning = make_tuning(config.tune, config.grid, config.seeds, methods, tasks, registry, method_configs, options,
                         _set_keys(config, registry))
    session_id = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    output = _output_folder(config, session_id)
    cells = tuple(_cells(tasks, methods, config.seeds, tuning))
    old = _check_output(config, output)
    recorded = (old or {}).get("train_configs") or {}
    for (m, t), opts in options.items():  # 'auto' options: for the device, or as the continued folder ran them
        opts.resolve(device, recorded.get(f"{m}--{t}"))
    prepared = {t.name: prepare_data(t, cache_dir, root, need_train=t in tasks and bool(methods)) for t in scored}
    if tuning is not None:
        _check_validation(tasks, prepared)
    if old is not None:  # continuing: the cells it keeps must be the cells this plan asks for
        _check_same_plan(old, output, {**recorded_configs(method_configs, options), "plan": [c.key for c in cells],
                                       "tasks": {t.name: {"version": t.version, "data_source": prepared[t.name].source}
                                                 for t in scored},
                                       "retention": {k: [t.name for t in v] for k, v in retention.items()}})
        if (old.get("tuning") or None) != (tuning.describe() if tuning else None):
            raise UsageError(f"--resume: {output} was tuned otherwise (--tune/--grid: "
                             f"{_tuned(old.get('tuning'))} then, {_tuned(tuning.describe() if tuning else None)} now); "
                             "its grid cells were chosen from, so the tuning cannot change. Run it as before, pass "
                             "--restart to start over there, or choose a new --output.")
        session_id = old.get("session_id") or session_id
    model = resolve_model(config.model, cache_dir=cache_dir, progress=say)
    return Plan(config=config, session_id=session_id, output=output, device=device, cache_dir=cache_dir,
                model=model, registry=registry, methods=tuple(methods), tasks=tuple(tasks),
                retention={k: tuple(v) for k, v in retention.items()}, prepared=prepared,
                method_configs=method_configs, options=options, cells=cells, tuning=tuning,
                baselines=_baselines(scored, prepared, options))


def _baselines(tasks: list[Task], prepared: Mapping[str, Any], options: Mapping[tuple[str, str], CellOptions]
               ) -> dict[str, Any]:
    """Each scored task's chance and majority-class accuracy over the test examples lm-eval scores (the
    first ``limit``), so that every report can say whether a method learnt anything the test shows. Tasks
    whose records have no fixed choices (free-form answers) have none."""
    from peftbench.tasks.baselines import prepared_baselines

    out = {}
    for task in tasks:
        # a trained task's own limit; a retention task is scored with the cells' (--limit: one for all)
        opts = options.get(("base", task.name)) or next(iter(options.values()), None)
        try:
            out[task.name] = prepared_baselines(prepared[task.name].folder, opts.eval.limit if opts else None)
        except (KeyError, TypeError, ValueError, OSError):  # no choices or labels to count
            continue
    return out


def _check_validation(tasks: list[Task], prepared: Mapping[str, Any]) -> None:
    """--tune scores grid points on each trained task's validation split: every one must have one."""
    for task in tasks:
        if "validation" not in prepared[task.name].sizes:
            raise UsageError(f"--tune: task {task.name!r} has no validation split (its train split has "
                             f"{prepared[task.name].sizes.get('train', 0)} rows; one is carved from 5 or more, or "
                             "set data.validation in its task.yaml), so its grid points cannot be scored.")


def _cells(tasks: list[Task], methods: list[str], seeds: list[int], tuning: TuningPlan | None) -> list[RunSpec]:
    """Per task: the tuning grids' cells (when tuned), then every method on every seed."""
    cells = []
    for task in tasks:
        if tuning is not None:
            cells += [c for m in methods for c in grid_cells(tuning, m, task.name)]
        cells += [final_cell(tuning, m, task.name, s) for s in seeds for m in methods]
    return cells


def _set_keys(config: SessionConfig, registry: Any) -> set[str]:
    """The keys ``--set`` fixes, as ``--tune`` names them (``lr``, ``lora.r``)."""
    shared, per_method = parse_sets(config.sets, [*registry.entries, *registry.aliases], OPTION_KEYS)
    return {*shared, *(f"{registry.canonical(m)}.{k}" for m, values in per_method.items() for k in values)}


def _tuned(described: dict[str, Any] | None) -> str:
    if not described:
        return "none"
    return f"{', '.join(described.get('keys') or [])} over {len(described.get('grids') or {})} grid(s)"


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but torch sees no CUDA device. Use --device cpu or auto.")
    if device not in ("cpu", "cuda"):
        raise UsageError(f"--device {device!r} is not valid; use auto, cpu or cuda.")
    return device


def _methods(config: SessionConfig, registry: Any) -> list[str]:
    methods = [registry.canonical(m, "--methods") for m in config.methods]
    if len(set(methods)) != len(methods):
        raise UsageError(f"--methods names a method twice: {', '.join(config.methods)}.")
    return methods


def _trained_tasks(config: SessionConfig, every: dict[str, Task], methods: list[str]) -> list[Task]:
    tasks = select_tasks(every, config.tasks)
    for task in tasks:
        if task.eval_only and methods:
            raise UsageError(f"task {task.name!r} has no train split, so methods cannot be trained on it. Score "
                             f"it as a retention task instead: --retention {task.name}.")
    return tasks


def _retention(config: SessionConfig, every: dict[str, Task], tasks: list[Task]) -> dict[str, list[Task]]:
    retention: dict[str, list[Task]] = {}
    for task in tasks:
        names = config.retention if config.retention is not None else task.retention
        chosen = select_tasks(every, names) if names else []
        if any(r.name == task.name for r in chosen):
            raise UsageError(f"--retention names {task.name!r}, the task being trained on; retention scores "
                             "tasks the model was not trained on.")
        retention[task.name] = chosen
    return retention


def _options(config: SessionConfig, registry: Any, methods: list[str], tasks: list[Task], device: str
             ) -> tuple[dict[str, Any], dict[tuple[str, str], CellOptions]]:
    """Each method's own config, and each (method, task)'s shared options: the task's defaults for the
    device, then ``--set`` (whose budget replaces the task's, not adds to it)."""
    shared, per_method = parse_sets(config.sets, [*registry.entries, *registry.aliases], OPTION_KEYS)
    per_method = {registry.canonical(k): v for k, v in per_method.items()}
    unused = set(per_method) - set(methods)
    if unused:
        raise UsageError(f"--set gives options for {', '.join(sorted(unused))}, which --methods does not run.")
    method_configs = {m: registry.get(m).make_config(per_method.get(m, {})) for m in methods}
    options: dict[tuple[str, str], CellOptions] = {}
    for task in tasks:
        task.check_methods(registry.canonical)  # its methods: sections name registered methods
        for m in [*methods, "base"]:
            values = task.train_overrides(device, m if m != "base" else None)
            if BUDGET_KEYS & set(shared):
                values = {k: v for k, v in values.items() if k not in BUDGET_KEYS}
            opts = CellOptions.build({**values, **shared}, where=f"training options for {m} on task {task.name}")
            if m != "base" and opts.train.lr == 0:
                opts.train.lr = registry.get(m).default_lr
            options[(m, task.name)] = opts
    return method_configs, options


def recorded_configs(method_configs: Mapping[str, Any], options: Mapping[tuple[str, str], CellOptions]
                     ) -> dict[str, Any]:
    """Each cell's training options and each method's options as ``session.json`` records them (JSON)."""
    return json.loads(json.dumps({"train_configs": {f"{m}--{t}": o.flat() for (m, t), o in options.items()},
                                  "method_configs": to_jsonable(dict(method_configs))}, default=str))


def check_names(methods: list[str], tasks: list[Task]) -> None:
    """Names that become file and folder names (run files, artifacts, the data cache, lm-eval task files) must
    stay inside their folder: a task file's ``name: ../../x`` would write outside --output and the cache."""
    for task in tasks:
        where = task.folder / "task.yaml"
        for key, value, file in (("name", task.name, where), ("version", task.version, where),
                                 ("task", task.lm_eval_name, task.lm_eval_file)):
            why = unsafe_name(str(value))
            if why:
                raise UsageError(f"Task file {file}: {key} {str(value)!r} cannot name a file or folder: {why} "
                                 "(e.g. my_task-2).")
    for method in methods:
        why = unsafe_name(method)
        if why:
            raise UsageError(f"method {method!r} cannot name a run file: {why}; a plugin registered that name.")


def _output_folder(config: SessionConfig, session_id: str) -> Path:
    if config.output is not None and not str(config.output).strip():
        raise UsageError("--output is empty; give a folder for the results (or leave --output out for "
                         f"peftbench-results/{session_id}).")
    if config.resume and config.output is None:
        raise UsageError("--resume needs --output: the folder of the session to continue.")
    if config.restart and (config.resume or config.shard is not None):
        raise UsageError("--restart starts the session in --output over and keeps no earlier cell; it cannot be "
                         "used with " + ("--resume (choose one)." if config.resume else
                                         "--shard (restart once without --shard, or choose a new --output)."))
    return Path(config.output) if config.output is not None else Path("peftbench-results") / session_id


def _check_output(config: SessionConfig, out: Path) -> dict[str, Any] | None:
    """Refuse an --output that would mix sessions; return the session.json of the folder a session continues."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output {out} exists and is not a folder.")
    has_session = (out / "session.json").is_file()
    existing = has_session or any((out / "runs").glob("*.json"))
    if config.shard is not None and not config.output:
        raise UsageError("--shard needs --output: the shards of a session work in one folder.")
    if config.resume and not has_session:
        raise UsageError(f"--resume: {out} " + (
            "holds run files but no session.json, so none of them can be verified. Pass --restart instead to "
            "start over there (its files are moved aside), or choose another --output." if existing else
            "holds no peftbench session (no session.json), so there is nothing to resume. Leave out --resume to "
            "start a session there." if out.is_dir() else
            "does not exist, so there is no session to resume. Leave out --resume to start one there."))
    if existing and not config.continues and not config.restart:
        raise UsageError(f"--output {out} already holds another session's results. Pass --resume to continue "
                         "that session (finished cells are kept), --restart to start over there (its files are "
                         "moved aside), or choose an empty --output folder.")
    if not (has_session and config.continues):
        return None
    old = load_session(out)
    if old.get("kind") == "latency":
        raise UsageError(f"--output {out} holds a `peftbench latency` session; choose another --output.")
    if old.get("config", {}).get("model") not in (None, config.model):
        raise UsageError(f"--resume: {out} was run with model {old['config']['model']!r}, not "
                         f"{config.model!r}; results of different base models cannot be mixed.")
    return old


def _check_same_plan(old: dict[str, Any], out: Path, new: dict[str, Any]) -> None:
    changes = plan_changes(old, new)
    if changes:
        shown = "; ".join(changes[:8]) + (f"; and {len(changes) - 8} more" if len(changes) > 8 else "")
        raise UsageError(f"--resume: {out} was run with another plan: {shown}. A continued session keeps the "
                         "cells it finished, so their settings cannot change (cells may be added: more methods, "
                         "tasks or seeds). Run it as before, pass --restart instead of --resume to start over "
                         "there (its files are moved aside), or choose a new --output.")
