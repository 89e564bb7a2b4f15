"""Checks of a task's prepared data against its lm-eval YAML, run at planning (before anything trains):
every variable the prompt templates use is a field of the records, and the test split being scored is not
one label throughout (the dummy label of an unlabelled test set)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from peftbench.errors import UsageError, did_you_mean
from peftbench.tasks.lm_eval_yaml import read_config

TEMPLATE_KEYS = ("doc_to_text", "doc_to_choice", "doc_to_target")
_FIELD = re.compile(r"[A-Za-z_]\w*")


def record_fields(folder: Path) -> list[str]:
    """The fields of the task's normalized records (every split has the same), from the test split's first."""
    path = folder / "test.jsonl"
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                return list(json.loads(line))
    return []


def template_variables(template: str) -> set[str]:
    """The variables a Jinja template reads from the document (its own ``set``/loop names and Jinja's
    globals left out). Raises ``jinja2.TemplateSyntaxError``."""
    import jinja2
    from jinja2 import meta

    env = jinja2.Environment()
    return set(meta.find_undeclared_variables(env.parse(template))) - set(env.globals)


def check_templates(task_name: str, lm_file: Path, fields: list[str]) -> None:
    """Every Jinja variable of doc_to_text / doc_to_choice / doc_to_target (with the YAML's includes merged
    in) is a field of the records; a bare name there must be a field too (lm-eval would take it as constant
    text). Skipped for a YAML whose ``process_docs`` makes fields of its own, or when there are no records."""
    import jinja2

    config = read_config(lm_file)
    if "process_docs" in config or not fields:
        return
    for key in TEMPLATE_KEYS:
        value = config.get(key)
        if not isinstance(value, str):
            continue
        if "{{" in value or "{%" in value:
            try:
                missing = sorted(template_variables(value) - set(fields))
            except jinja2.TemplateSyntaxError as e:
                raise UsageError(f"Task file {lm_file}: {key} is not a valid Jinja template ({e.message}, line "
                                 f"{e.lineno} of the template): {value!r}") from None
        elif _FIELD.fullmatch(value.strip()) and value.strip() not in fields:
            missing = [value.strip()]
        else:
            continue
        if missing:
            name = missing[0]
            raise UsageError(f"Task file {lm_file}: {key} uses the variable {name!r}, which is not a field of task "
                             f"{task_name!r}'s records.{did_you_mean(name, fields)} Fields available: "
                             f"{', '.join(fields)} (data.fields, then choices and label: see docs/tasks.md).")


def check_test_labels(task_name: str, prepared: Any) -> None:
    """The test split is scored against its labels: one label on every example (of two or more) is what an
    unlabelled test set shipped with a dummy label looks like, and scoring it would report nonsense."""
    path = Path(prepared.folder) / "test.jsonl"
    labels: Counter[str] = Counter()
    first: dict[str, Any] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                record = json.loads(line)
                first = first or record
                labels[json.dumps(record.get("label"))] += 1
    n = sum(labels.values())
    if n < 2 or len(labels) != 1 or "label" not in first:
        return
    label = first["label"]
    choices = first.get("choices")
    word = f" ({choices[label]!r})" if isinstance(label, int) and isinstance(choices, list) and \
        0 <= label < len(choices) else ""
    test = (prepared.source.get("splits") or {}).get("test")
    files = [f["file"] for f in test if isinstance(f, dict) and "file" in f] if isinstance(test, list) else []
    origin = (f" ({', '.join(files)})" if files else
              f" (hub split {test['split']!r})" if isinstance(test, dict) and "split" in test else "")
    raise UsageError(f"task {task_name!r}: every one of the {n} examples of its test split{origin} has label "
                     f"{label!r}{word}. Unlabelled test sets (shipped with a dummy label) cannot be scored; use a "
                     "labelled split as the task's test split (e.g. the official validation split).")
