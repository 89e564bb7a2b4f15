"""Tasks: ``<folder>/<name>/task.yaml`` plus the lm-eval YAML that scores it.

The lm-eval YAML is the single source of the prompt: training examples are built by lm-eval's own
``fewshot_context`` and ``construct_requests`` on the task's training split, so the text a method is
trained on is exactly the text lm-eval scores (the gold request's context + continuation). A task's YAML
may share its body with others through lm-eval's ``include:`` (``lm_eval_yaml`` reads and writes them).
"""

from __future__ import annotations

import functools
import importlib
import json
from pathlib import Path
from typing import Any

import yaml

from peftbench.errors import UsageError, unknown
from peftbench.tasks.checks import check_templates, check_test_labels, record_fields
from peftbench.tasks.data import PreparedData, prepare_generated
from peftbench.tasks.data import prepare as prepare_files
from peftbench.tasks.generation import GENERATE, answer_end
from peftbench.tasks.lm_eval_yaml import write_config, write_split_config
from peftbench.tasks.task_file import GENERATORS, BrokenTask, Task, generator, load_task_file

__all__ = ["GENERATORS", "BrokenTask", "Task", "discover_tasks", "example_prompt", "gold_request", "lm_eval_task",
           "load_task_file", "materialize", "prepare_data", "scored_request", "select_tasks", "task_manager",
           "training_pair", "training_pairs"]


def builtin_tasks_dir() -> Path:
    import peftbench_tasks

    return Path(peftbench_tasks.__file__).resolve().parent


def discover_tasks(dirs: list[Path], option_keys: tuple[str, ...] | list[str] | None = None
                   ) -> dict[str, Task | BrokenTask]:
    """Every ``task.yaml`` directly in, or one level below, each of ``dirs``; later dirs win. A file that does
    not load is kept as a ``BrokenTask`` under its declared name (else its folder's), so it affects only its
    own task. ``option_keys``: see ``load_task_file``."""
    tasks: dict[str, Task | BrokenTask] = {}
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise UsageError(f"Tasks folder {d} does not exist.")
        files = [d / "task.yaml"] if (d / "task.yaml").is_file() else sorted(d.glob("*/task.yaml"))
        for f in files:
            t = _load_or_broken(f, option_keys)
            tasks[t.name] = t
    return tasks


def _load_or_broken(path: Path, option_keys: Any) -> Task | BrokenTask:
    try:
        return load_task_file(path, option_keys)
    except UsageError as e:
        return BrokenTask(_declared_name(path), path, e)
    except Exception as e:  # an unreadable file, or a bug met on an odd file: still only this task's problem
        return BrokenTask(_declared_name(path), path,
                          UsageError(f"Task file {path}: could not be loaded ({type(e).__name__}: {e})."))


def _declared_name(path: Path) -> str:
    """The ``name:`` a task file declares, if it can be read; else its folder's name."""
    try:
        raw = yaml.safe_load(path.read_text())
        if isinstance(raw, dict) and isinstance(raw.get("name"), (str, int)) and str(raw["name"]).strip():
            return str(raw["name"])
    except Exception:  # noqa: S110 - the folder's name is the fallback
        pass
    return path.parent.name


def select_tasks(all_tasks: dict[str, Task | BrokenTask], names: list[str]) -> list[Task]:
    """The tasks named, in order; an unknown name or a broken task file is an error."""
    out = []
    for n in names:
        t = all_tasks.get(n)
        if t is None:
            raise unknown("task", n, all_tasks, "--tasks")
        if isinstance(t, BrokenTask):
            raise t.error
        out.append(t)
    return out


def prepare_data(task: Task, cache_dir: Path, data_root: Path | None, need_train: bool) -> PreparedData:
    """The task's data, checked and normalized into the cache (generated tasks are generated there), then
    checked against the lm-eval YAML: every template variable is a record field, and the test split is not
    one label throughout (a dummy label of an unlabelled test set)."""
    if task.spec is None:
        prepared = _generate(task, cache_dir)
    else:
        prepared = prepare_files(task.name, task.spec, data_root, cache_dir, need_train)
    check_templates(task.name, task.lm_eval_file, record_fields(prepared.folder))
    check_test_labels(task.name, prepared)
    return prepared


def _generate(task: Task, cache_dir: Path) -> PreparedData:
    module, _, attr = str(generator(task.data["generate"])).partition(":")
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
    sizes = {s: sum(1 for line in open(target / f"{s}.jsonl") if line.strip()) for s in ("train", "test")}
    empty = [s for s, n in sizes.items() if n == 0]
    if empty:
        raise UsageError(f"task {task.name!r}: its generator {module}:{attr} wrote no rows into "
                         f"{', '.join(str(target / f'{s}.jsonl') for s in empty)}; a split must not be empty.")
    source = {"kind": "generated", "generator": task.data["generate"], "version": task.version}
    return prepare_generated(task.name, target, source, task.validation, cache_dir)


def materialize(tasks: list[Task], prepared: dict[str, PreparedData], workdir: Path) -> Path:
    """Write each task's lm-eval YAML (and the files it includes) with its data folder filled in, and for a
    task whose data has a validation split the same config scoring that split (``Task.on_split``); return the
    include path."""
    out = workdir / "lm_eval_tasks"
    out.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        task = task.on_split("test")
        folder = prepared[task.name].folder.resolve()
        write_config(task.lm_eval_file, out / f"{task.lm_eval_name}.yaml", folder)
        if "validation" in prepared[task.name].sizes:
            variant = task.on_split("validation").lm_eval_name
            write_split_config(out / f"{task.lm_eval_name}.yaml", out / f"{variant}.yaml", variant, "validation",
                               folder / "validation.jsonl", task.lm_eval_file)
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


def _gold_requests(lm_task: Any, doc: dict, num_fewshot: int = 0) -> tuple[list[tuple[str, str]], int]:
    """Every (context, continuation) lm-eval scores for a multiple-choice ``doc``, and the gold one's index."""
    ctx = lm_task.fewshot_context(doc, num_fewshot)
    target = lm_task.doc_to_target(doc)
    choices = lm_task.doc_to_choice(doc)
    if lm_task.multiple_input:  # one context per option (WinoGrande-style): doc_to_text is the gold index
        index = lm_task.doc_to_text(doc)
    else:
        index = target if isinstance(target, int) else choices.index(target)
    requests = lm_task.construct_requests(doc, ctx, metadata=(lm_task.config.task, 0, 1))
    return [tuple(r.arguments) for r in requests], index


def gold_request(lm_task: Any, doc: dict, num_fewshot: int = 0) -> tuple[str, str]:
    """The (context, continuation) lm-eval scores as the correct answer for ``doc``."""
    if lm_task.OUTPUT_TYPE == "multiple_choice":
        requests, index = _gold_requests(lm_task, doc, num_fewshot)
        return requests[index]
    ctx = lm_task.fewshot_context(doc, num_fewshot)
    target = lm_task.doc_to_target(doc)
    if isinstance(target, list):
        target = target[0]
    return ctx, f"{lm_task.config.target_delimiter}{target}"


def training_pair(lm_task: Any, doc: dict) -> tuple[str, str]:
    """(prompt, answer) a method is trained on for ``doc``: the gold request lm-eval scores, and for a
    generative task the answer followed by its first stop sequence (``generation.answer_end``), so that the
    model learns to stop where scoring stops it."""
    context, continuation = gold_request(lm_task, doc)
    return context, continuation + answer_end(lm_task)


def training_pairs(lm_task: Any) -> list[tuple[str, str]]:
    """(prompt, answer) for every training document, in the file's order."""
    if not lm_task.has_training_docs():
        raise UsageError(f"lm-eval task {lm_task.config.task!r} has no training split (set training_split).")
    return [training_pair(lm_task, doc) for doc in lm_task.training_docs()]


def scored_request(lm_task: Any, doc: dict, num_fewshot: int = 0) -> tuple[str, dict[str, Any]]:
    """A generative task's request for ``doc`` as lm-eval builds it for ``generate_until``: (the prompt,
    the generation settings)."""
    ctx = lm_task.fewshot_context(doc, num_fewshot)
    request = lm_task.construct_requests(doc, ctx, metadata=(lm_task.config.task, 0, 1))
    request = request[0] if isinstance(request, list) else request
    return request.arguments[0], request.arguments[1]


_EXAMPLES: dict[tuple[str, str], dict[str, Any]] = {}


def example_prompt(task: Task, include_path: Path) -> dict[str, Any]:
    """The task's first training example as a method is trained on it, beside the same example as lm-eval
    scores it (zero-shot): a run file keeps it so that "the training prompt is the scored prompt" can be
    checked from the file (``train_context == scored_context``, and ``train_target == scored_choices[gold]``
    or, for a generative task, ``train_target == scored_target + answer_end``)."""
    key = (str(include_path), task.lm_eval_name)
    if key not in _EXAMPLES:
        lm_task = lm_eval_task(task, include_path)
        doc = next(iter(lm_task.training_docs()))
        context, target = training_pair(lm_task, doc)
        out: dict[str, Any] = {"split": "train", "index": 0, "train_context": context, "train_target": target}
        if lm_task.OUTPUT_TYPE == "multiple_choice":
            requests, gold = _gold_requests(lm_task, doc)
            out.update(scored_context=requests[gold][0], scored_choices=[c for _, c in requests], gold=gold)
            if lm_task.multiple_input:  # one context per option: the continuation is shared
                out["scored_contexts"] = [c for c, _ in requests]
        elif lm_task.OUTPUT_TYPE == GENERATE:  # train_target == scored_target + answer_end
            scored_context, kwargs = scored_request(lm_task, doc)
            out.update(scored_context=scored_context, scored_choices=None, gold=None,
                       scored_target=gold_request(lm_task, doc)[1], answer_end=answer_end(lm_task),
                       until=list(kwargs.get("until") or []), max_gen_toks=kwargs.get("max_gen_toks"))
        else:
            out.update(scored_context=lm_task.fewshot_context(doc, 0), scored_choices=None, gold=None)
        _EXAMPLES[key] = json.loads(json.dumps(out, default=str))
    return dict(_EXAMPLES[key])
