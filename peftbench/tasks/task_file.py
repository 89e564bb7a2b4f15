"""A task file (``task.yaml``): the ``Task`` it describes, read and checked completely when it is loaded.

Every mapping rejects keys it does not know (a misspelling names the file, the key's path, the closest valid
key and every valid one); names that become file names are checked; an explicit ``metric`` must be one the
lm-eval YAML computes. A file that does not load becomes a ``BrokenTask`` in discovery, so it affects only
its own task.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from peftbench.errors import UsageError, did_you_mean
from peftbench.tasks.data_spec import DataSpec, ValidationSpec, check_keys, parse_data_spec, parse_validation
from peftbench.tasks.generation import GenerationSpec, generation_spec
from peftbench.tasks.lm_eval_yaml import read_config

GENERATORS = {"quickstart": "peftbench.tasks.quickstart:generate",
              "quickstart_gen": "peftbench.tasks.quickstart_gen:generate"}
REQUIRED_FIELDS = ("name", "version", "description", "data", "lm_eval")
TOP_KEYS = (*REQUIRED_FIELDS, "metric", "retention", "budget", "methods")
DEVICES = ("cpu", "cuda")
# a task's name becomes folder and file names (run files, the data cache): no separators, no '..'
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
SCORED_SPLITS = ("test", "validation")  # the splits a task can be scored on (Task.on_split)


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
    file: Path | None = None      # the task.yaml it was read from
    validation: ValidationSpec = field(default_factory=ValidationSpec)  # data.validation: carved from train
    split: str = "test"           # the split it is scored on (on_split)
    generation: GenerationSpec | None = None  # a generative task's scoring (lm-eval generate_until); None: choices

    @property
    def splits(self) -> tuple[str, ...]:
        """The data's own splits (a carved validation split is not one: see ``validation_from``)."""
        return self.spec.splits if self.spec else ("train", "test")

    @property
    def eval_only(self) -> bool:
        """No train split: the task can only be scored (e.g. with --retention)."""
        return "train" not in self.splits

    @property
    def validation_from(self) -> str | None:
        """Where its validation split comes from: ``"dataset"`` (a split of the data's own), ``"train"``
        (carved out of train when the data is prepared; none for a train split under 5 rows) or None
        (eval-only: no train split, no validation split)."""
        return "dataset" if "validation" in self.splits else None if self.eval_only else "train"

    def on_split(self, split: str) -> Task:
        """The task scored on ``split``: itself for ``"test"``; for ``"validation"``, the same lm-eval config
        (the same template, metrics and few-shot split) scoring the validation split instead of test, under
        the lm-eval name ``<lm_eval_name>_validation``. ``materialize`` writes that config for every task whose
        prepared data has a validation split (``"validation" in PreparedData.sizes``)."""
        if split not in SCORED_SPLITS:
            raise UsageError(f"task {self.name!r}: cannot be scored on split {split!r}; a task is scored on "
                             f"{' or '.join(SCORED_SPLITS)}.")
        if split == self.split:
            return self
        if split == "validation" and self.validation_from is None:
            raise UsageError(f"task {self.name!r} has no validation split: it has no train split to carve one "
                             "from (an evaluation-only task).")
        base = self.lm_eval_name if self.split == "test" else self.lm_eval_name.removesuffix(f"_{self.split}")
        return replace(self, split=split, lm_eval_name=base if split == "test" else f"{base}_{split}")

    def train_overrides(self, device: str, method: str | None) -> dict[str, Any]:
        """Training options from the task: the device budget, then the method's section (for a variant
        ``NAME@LABEL``: NAME's section, then its own)."""
        out = dict(self.budget.get(device, {}))
        if method:
            base = method.split("@", 1)[0]
            for key in dict.fromkeys((base, method)):
                out.update(self.method_overrides.get(key, {}))
        return out

    def check_methods(self, canonical: Callable[[str, str], str]) -> None:
        """Each ``methods:`` section must name a registered method, alias or ``NAME@LABEL`` variant:
        ``canonical(name, where)`` (the method registry's) raises naming the valid ones. The sections are
        then keyed by the registered names, so an alias's section applies to its method."""
        out: dict[str, dict[str, Any]] = {}
        for name, options in self.method_overrides.items():
            key = canonical(str(name), f"methods.{name} in task file {self.file or self.folder}")
            if key in out:
                raise _fail(self.file or self.folder, f"methods names {key!r} twice (as {name!r} too).")
            out[key] = options
        self.method_overrides = out

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "description": self.description,
                "folder": str(self.folder), "lm_eval_task": self.lm_eval_name, "metric": self.metric,
                "eval_only": self.eval_only, "data": self.spec.describe() if self.spec else self.data,
                "validation": self.validation.describe() if self.validation_from == "train" else
                {"from": "dataset"} if self.validation_from else None,
                "retention": self.retention, "budget": self.budget, "methods": self.method_overrides,
                **({"generation": self.generation.describe()} if self.generation else {})}


@dataclass
class BrokenTask:
    """A task file that did not load: listed with its error, and the error is raised when it is selected, so
    one broken file affects only its own task."""

    name: str
    file: Path
    error: UsageError

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "folder": str(self.file.parent), "broken": True, "error": str(self.error),
                "description": "", "metric": "—", "eval_only": False, "data": None, "validation": None, "retention": [],
                "budget": {}, "methods": {}}


def _fail(path: Path, msg: str) -> UsageError:
    return UsageError(f"Task file {path}: {msg}")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise _fail(path, f"is not valid YAML ({e}).") from None
    if not isinstance(raw, dict):
        raise _fail(path, "must be a mapping of fields (name, version, description, data, lm_eval, ...).")
    return raw


def load_task_file(path: Path, option_keys: tuple[str, ...] | list[str] | None = None) -> Task:
    """Read and check a task.yaml. ``option_keys``: the training options a ``budget`` or ``methods`` section may
    set (the session's; None leaves those keys to be checked when a plan builds the options)."""
    raw = _read_yaml(path)
    check_keys(raw, TOP_KEYS, str(path))
    missing = [f for f in REQUIRED_FIELDS if f not in raw]
    if missing:
        raise _fail(path, f"missing required field(s) {', '.join(missing)}. Required: {', '.join(REQUIRED_FIELDS)}; "
                    "see docs/tasks.md.")
    name = _safe_name(raw["name"], path, "name")
    data = raw["data"]
    spec = _data(data, path)
    validation = spec.validation if spec else parse_validation(data.get("validation", {}), str(path))
    retention = raw.get("retention") or []
    if not isinstance(retention, list) or not all(isinstance(r, str) for r in retention):
        raise _fail(path, "field 'retention' must be a list of task names.")
    lm_file = path.parent / str(raw["lm_eval"])
    if not lm_file.is_file():
        raise _fail(path, f"lm_eval file {lm_file} does not exist.")
    lm_raw = read_config(lm_file)  # with its include: files merged in, as lm-eval reads it
    if "task" not in lm_raw:
        raise _fail(lm_file, "lm-eval task YAML needs a 'task' name.")
    generation = generation_spec(lm_raw, lm_file)
    metric = str(raw.get("metric", "exact_match" if generation else "acc"))
    _check_metric(raw, metric, lm_raw, path, lm_file)
    if generation and not any(isinstance(m, dict) and m.get("metric") == metric for m in lm_raw.get("metric_list") or []):
        raise _fail(path, f"metric {metric!r} is not computed by {lm_file} (its metric_list): a generative task's "
                    "leaderboard metric (default exact_match) must be one of its metrics.")
    budget, methods = _options(raw, path, option_keys)
    return Task(name=name, version=raw["version"], description=str(raw["description"]).strip(),
                folder=path.parent, data=data, lm_eval_file=lm_file, metric=metric, budget=budget,
                method_overrides=methods, lm_eval_name=_safe_name(lm_raw["task"], lm_file, "task"), spec=spec,
                retention=list(retention), file=path, validation=validation, generation=generation)


def _safe_name(value: Any, path: Path, key: str) -> str:
    name = str(value)
    if not SAFE_NAME.fullmatch(name) or ".." in name:
        raise _fail(path, f"{key} {name!r} is not a valid task name: use letters, digits, '_', '-' and '.' "
                    "(starting with a letter, digit or '_'; no '/' and no '..'), as it names files and folders.")
    return name


def _data(data: Any, path: Path) -> DataSpec | None:
    """The ``data:`` mapping: a generator (None: no spec), or local files and/or a hub dataset."""
    if not isinstance(data, dict) or not ({"generate", "local", "hub"} & set(data)):
        raise _fail(path, "field 'data' must have 'generate: <generator>', or 'local' and/or 'hub' with 'fields' "
                    "and 'label' (see docs/tasks.md).")
    if "generate" not in data:
        return parse_data_spec(data, str(path))
    check_keys(data, ("generate", "validation"), str(path), "data")
    if generator(data["generate"]) is None:
        raise _fail(path, f"data.generate {data['generate']!r} is neither a built-in generator ("
                    f"{', '.join(GENERATORS)}) nor 'package.module:function' (a function that writes "
                    "train.jsonl and test.jsonl into the folder it is given).")
    return None


def _check_metric(raw: dict[str, Any], metric: str, lm_raw: dict[str, Any], path: Path, lm_file: Path) -> None:
    """An explicit ``metric`` must be one the lm-eval YAML's ``metric_list`` computes."""
    listed = [m.get("metric") for m in lm_raw.get("metric_list") or [] if isinstance(m, dict)]
    if "metric" in raw and listed and all(isinstance(m, str) for m in listed) and metric not in listed:
        raise _fail(path, f"metric {metric!r} is not computed by {lm_file} (its metric_list)."
                    f"{did_you_mean(metric, listed)} Valid metrics: {', '.join(listed)}.")


def _options(raw: dict[str, Any], path: Path, option_keys: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``budget`` ({cpu: {...}, cuda: {...}}) and ``methods`` ({method: {...}}): mappings of training options."""
    budget, methods = raw.get("budget") or {}, raw.get("methods") or {}
    if not isinstance(budget, dict):
        raise _fail(path, "field 'budget' must map 'cpu' and/or 'cuda' to training options.")
    check_keys(budget, DEVICES, str(path), "budget")
    if not isinstance(methods, dict):
        raise _fail(path, "field 'methods' must map method names to training options (e.g. {full: {lr: 5.0e-5}}).")
    for at, section in [*((f"budget.{d}", v) for d, v in budget.items()),
                        *((f"methods.{m}", v) for m, v in methods.items())]:
        if not isinstance(section, dict):
            raise _fail(path, f"{at} must be a mapping of training options (e.g. {{steps: 60, lr: 5.0e-4}}), "
                        f"not {section!r}.")
        if option_keys is not None:
            check_keys(section, tuple(option_keys), str(path), at)
    return budget, methods


def generator(name: Any) -> str | None:
    """``module:function`` of a task's data generator: a built-in name, or a dotted path given as is."""
    name = str(name)
    if name in GENERATORS:
        return GENERATORS[name]
    return name if re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", name) else None
