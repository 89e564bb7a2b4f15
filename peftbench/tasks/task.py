"""Tasks: ``<folder>/<name>/task.yaml`` plus the lm-eval YAML that scores it.

The lm-eval YAML is the single source of the prompt: training examples are built by lm-eval's own
``fewshot_context`` and ``construct_requests`` on the task's training split, so the text a method is
trained on is exactly the text lm-eval scores (the gold request's context + continuation). A task's YAML
may share its body with others through lm-eval's ``include:`` (``lm_eval_yaml`` reads and writes them).
"""

from __future__ import annotations

import functools
import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from peftbench.errors import UsageError, unknown
from peftbench.tasks.data import PreparedData
from peftbench.tasks.data import prepare as prepare_files
from peftbench.tasks.data_spec import DataSpec, parse_data_spec
from peftbench.tasks.lm_eval_yaml import read_config, write_config

GENERATORS = {"quickstart": "peftbench.tasks.quickstart:generate"}
REQUIRED_FIELDS = ("name", "version", "description", "data", "lm_eval")


@dataclass
class Task:
    name: str
    version: int | str
    description: str
    folder: Path
    data: dict[str, Any]
    lm_eval_file: Path
    metric: str = "acc"
    budget: dict[str, dict[str, Any]] = field(default_factory=dict)
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    lm_eval_name: str = ""
    spec: DataSpec | None = None  # file/hub data (None for a generated task)
    retention: list[str] = field(default_factory=list)  # eval-only tasks scored after training by default

    @property
    def splits(self) -> tuple[str, ...]:
        return self.spec.splits if self.spec else ("train", "test")

    @property
    def eval_only(self) -> bool:
        """No train split: the task can only be scored (e.g. with --retention)."""
        return "train" not in self.splits

    def train_overrides(self, device: str, method: str | None) -> dict[str, Any]:
        """Training options from the task: the device budget, then the method's overrides."""
        out = dict(self.budget.get(device, {}))
        if method:
            out.update(self.method_overrides.get(method, {}))
        return out

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "description": self.description,
                "folder": str(self.folder), "lm_eval_task": self.lm_eval_name, "metric": self.metric,
                "eval_only": self.eval_only, "data": self.spec.describe() if self.spec else self.data,
                "retention": self.retention, "budget": self.budget, "methods": self.method_overrides}


def _fail(path: Path, msg: str) -> UsageError:
    return UsageError(f"Task file {path}: {msg}")


def load_task_file(path: Path) -> Task:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise _fail(path, f"is not valid YAML ({e}).") from None
    if not isinstance(raw, dict):
        raise _fail(path, "must be a mapping of fields (name, version, description, data, lm_eval, ...).")
    missing = [f for f in REQUIRED_FIELDS if f not in raw]
    if missing:
        raise _fail(path, f"missing required field(s) {', '.join(missing)}. Required: {', '.join(REQUIRED_FIELDS)}; "
                    "see docs/tasks.md.")
    data = raw["data"]
    if not isinstance(data, dict) or not ({"generate", "local", "hub"} & set(data)):
        raise _fail(path, "field 'data' must have 'generate: <generator>', or 'local' and/or 'hub' with 'fields' "
                    "and 'label' (see docs/tasks.md).")
    spec = None
    if "generate" in data:
        if _generator(data["generate"]) is None:
            raise _fail(path, f"data.generate {data['generate']!r} is neither a built-in generator ("
                        f"{', '.join(GENERATORS)}) nor 'package.module:function' (a function that writes "
                        "train.jsonl and test.jsonl into the folder it is given).")
    else:
        spec = parse_data_spec(data, str(path))
    retention = raw.get("retention") or []
    if not isinstance(retention, list) or not all(isinstance(r, str) for r in retention):
        raise _fail(path, "field 'retention' must be a list of task names.")
    lm_file = path.parent / str(raw["lm_eval"])
    if not lm_file.is_file():
        raise _fail(path, f"lm_eval file {lm_file} does not exist.")
    lm_raw = read_config(lm_file)  # with its include: files merged in, as lm-eval reads it
    if "task" not in lm_raw:
        raise _fail(lm_file, "lm-eval task YAML needs a 'task' name.")
    budget = raw.get("budget") or {}
    if not isinstance(budget, dict) or set(budget) - {"cpu", "cuda"}:
        raise _fail(path, "field 'budget' must map 'cpu' and/or 'cuda' to training options.")
    return Task(name=str(raw["name"]), version=raw["version"], description=str(raw["description"]).strip(),
                folder=path.parent, data=data, lm_eval_file=lm_file, metric=str(raw.get("metric", "acc")),
                budget=budget, method_overrides=raw.get("methods") or {}, lm_eval_name=str(lm_raw["task"]),
                spec=spec, retention=list(retention))


def _generator(name: Any) -> str | None:
    """``module:function`` of a task's data generator: a built-in name, or a dotted path given as is."""
    name = str(name)
    if name in GENERATORS:
        return GENERATORS[name]
    return name if re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", name) else None


def builtin_tasks_dir() -> Path:
    import peftbench_tasks

    return Path(peftbench_tasks.__file__).resolve().parent


def discover_tasks(dirs: list[Path]) -> dict[str, Task]:
    """Every ``task.yaml`` directly in, or one level below, each of ``dirs``; later dirs win."""
    tasks: dict[str, Task] = {}
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise UsageError(f"Tasks folder {d} does not exist.")
        files = [d / "task.yaml"] if (d / "task.yaml").is_file() else sorted(d.glob("*/task.yaml"))
        for f in files:
            t = load_task_file(f)
            tasks[t.name] = t
    return tasks


def select_tasks(all_tasks: dict[str, Task], names: list[str]) -> list[Task]:
    return [all_tasks[n] if n in all_tasks else _raise(unknown("task", n, all_tasks, "--tasks")) for n in names]


def _raise(e: Exception) -> Any:
    raise e


def prepare_data(task: Task, cache_dir: Path, data_root: Path | None, need_train: bool) -> PreparedData:
    """The task's data, checked and normalized into the cache (generated tasks are generated there)."""
    if task.spec is None:
        module, _, attr = str(_generator(task.data["generate"])).partition(":")
        target = cache_dir / "data" / task.name / f"v{task.version}"
        try:
            generate = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise UsageError(f"task {task.name!r}: its data generator {module}:{attr} cannot be imported "
                             f"({type(e).__name__}: {e}); is the package that provides it installed?") from None
        generate(target)
        missing = [s for s in ("train", "test") if not (target / f"{s}.jsonl").is_file()]
        if missing:
            raise UsageError(f"task {task.name!r}: its generator {module}:{attr} did not write "
                             f"{', '.join(s + '.jsonl' for s in missing)} into {target}.")
        sizes = {s: sum(1 for _ in open(target / f"{s}.jsonl")) for s in ("train", "test")}
        return PreparedData(folder=target, source={"kind": "generated", "generator": task.data["generate"],
                                                   "version": task.version}, sizes=sizes)
    return prepare_files(task.name, task.spec, data_root, cache_dir, need_train)


def materialize(tasks: list[Task], prepared: dict[str, PreparedData], workdir: Path) -> Path:
    """Write each task's lm-eval YAML (and the files it includes) with its data folder filled in; return the
    include path."""
    out = workdir / "lm_eval_tasks"
    out.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        write_config(task.lm_eval_file, out / f"{task.lm_eval_name}.yaml", prepared[task.name].folder.resolve())
    return out


_MANAGERS: dict[str, Any] = {}


def cache_lm_eval_templates() -> None:
    """lm-eval compiles a task's Jinja template anew for every document (``env.from_string`` each call):
    ~1 ms, which made building 60k SST-2 training prompts take minutes. Memoize the compilation on lm-eval's
    own environment; rendering is unchanged. Idempotent."""
    from lm_eval import utils

    if getattr(utils.apply_template, "_peftbench_cached", False):
        return
    compile_template = functools.lru_cache(maxsize=512)(utils.env.from_string)

    def apply_template(template: str, doc: dict) -> str:
        return compile_template(template).render(**doc)

    apply_template._peftbench_cached = True  # type: ignore[attr-defined]
    utils.apply_template = apply_template


def task_manager(include_path: Path) -> Any:
    from lm_eval.tasks import TaskManager

    cache_lm_eval_templates()
    key = str(include_path)
    if key not in _MANAGERS:
        _MANAGERS[key] = TaskManager(include_path=key, include_defaults=False)
    return _MANAGERS[key]


def lm_eval_task(task: Task, include_path: Path) -> Any:
    return task_manager(include_path).load([task.lm_eval_name])["tasks"][task.lm_eval_name]


def gold_request(lm_task: Any, doc: dict, num_fewshot: int = 0) -> tuple[str, str]:
    """The (context, continuation) lm-eval scores as the correct answer for ``doc``."""
    ctx = lm_task.fewshot_context(doc, num_fewshot)
    if lm_task.OUTPUT_TYPE == "multiple_choice":
        target = lm_task.doc_to_target(doc)
        choices = lm_task.doc_to_choice(doc)
        if lm_task.multiple_input:  # one context per option (WinoGrande-style): doc_to_text is the gold index
            index = lm_task.doc_to_text(doc)
        else:
            index = target if isinstance(target, int) else choices.index(target)
        requests = lm_task.construct_requests(doc, ctx, metadata=(lm_task.config.task, 0, 1))
        return tuple(requests[index].arguments)
    target = lm_task.doc_to_target(doc)
    if isinstance(target, list):
        target = target[0]
    return ctx, f"{lm_task.config.target_delimiter}{target}"


def training_pairs(lm_task: Any) -> list[tuple[str, str]]:
    """(prompt, answer) for every training document, in the file's order."""
    if not lm_task.has_training_docs():
        raise UsageError(f"lm-eval task {lm_task.config.task!r} has no training split (set training_split).")
    return [gold_request(lm_task, doc) for doc in lm_task.training_docs()]
