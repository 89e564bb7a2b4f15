"""A task's lm-eval YAML and the files it ``include:``s, read and written the way lm-eval handles them.

lm-eval resolves ``include:`` relative to the including file and merges each included file under it
(later includes over earlier ones, the file's own keys over all; a shallow merge of top-level keys). The
YAMLs are written into the folder lm-eval loads from with ``${data_dir}`` filled in: the task's own file as
``<lm-eval name>.yaml``, and every file it includes (they may hold ``${data_dir}`` too) as a copy for that
task alone under ``_included/<lm-eval name>/``. The copies are named ``..._yaml``, not ``.yaml``: lm-eval
registers every ``*.yaml`` of the folder as a task, and an included task file (arc_challenge includes
arc_easy's) would register a second copy of a task with another task's data.

A task scored on its validation split gets a config of its own, ``<lm-eval name>_validation.yaml``, that
includes the task's written config and changes only its name, ``test_split`` and the data file of that split:
the prompt is the test config's, byte for byte.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import yaml

from peftbench.errors import UsageError

INCLUDED_DIR = "_included"
_INCLUDE_ENTRY = re.compile(r"^include:[^\n]*\n(?:[ \t]*-[^\n]*\n)*", re.M)  # the key and any block-list items


def read_config(path: Path) -> dict[str, Any]:
    """The lm-eval task config at ``path`` with its includes merged in, as lm-eval will see it."""
    return _merged(path, set())


def write_config(source: Path, dest: Path, data_dir: Path) -> None:
    """Write ``source`` to ``dest`` and each file it includes (recursively) beside it, ``${data_dir}`` filled
    in and every ``include:`` pointing at the copies."""
    _write(source, dest, data_dir, dest.parent / INCLUDED_DIR / dest.stem, {source.resolve()}, [])


def write_split_config(base: Path, dest: Path, task_name: str, split: str, data_file: Path, source: Path) -> None:
    """Write ``dest``: the config written at ``base`` (from the task's lm-eval YAML ``source``), scoring
    ``split`` instead of test, as the task ``task_name``. It includes ``base`` and sets only its name,
    ``test_split`` and the split's data file; templates, choices, metrics and the few-shot split are base's."""
    config = read_config(base)
    kwargs = config.get("dataset_kwargs")
    files = kwargs.get("data_files") if isinstance(kwargs, dict) else None
    if not isinstance(files, dict):
        raise UsageError(f"Task file {source}: dataset_kwargs.data_files must map each split to its file "
                         "(train: ${data_dir}/train.jsonl, test: ${data_dir}/test.jsonl) for the task to be scored "
                         f"on its {split} split too.")
    own: dict[str, Any] = {"include": base.name, "task": task_name, "test_split": split}
    if files.get(split) != str(data_file):
        own["dataset_kwargs"] = {**kwargs, "data_files": {**files, split: str(data_file)}}
    dest.write_text(f"# {config['task']} (written from {source}) scored on its {split} split: the same prompt.\n"
                    + yaml.safe_dump(own, sort_keys=False))


def _read(path: Path, text: str | None = None) -> dict[str, Any]:
    """One YAML file as a mapping; ``!function`` tags are kept as plain strings (nothing is imported)."""
    try:
        raw = yaml.safe_load((path.read_text() if text is None else text).replace("!function", "")) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"Task file {path}: is not valid YAML ({e}).") from None
    if not isinstance(raw, dict):
        raise UsageError(f"Task file {path}: an lm-eval task YAML must be a mapping of fields.")
    return raw


def _includes(path: Path, raw: dict[str, Any], seen: set[Path]) -> list[Path]:
    """The files ``raw`` (read from ``path``) includes, checked: each exists and none is met twice in one
    task's walk (lm-eval refuses that as an include cycle, even where two branches share a file)."""
    refs = raw.get("include") or []
    out = []
    for ref in refs if isinstance(refs, list) else [refs]:
        target = (path.parent / str(ref)).resolve()
        if not target.is_file():
            raise UsageError(f"Task file {path}: include {ref!r} names no file ({target}); an include is "
                             "relative to the file that includes it.")
        if target in seen:
            raise UsageError(f"Task file {path}: include {ref!r} makes a cycle ({target} is included twice).")
        seen.add(target)
        out.append(target)
    return out


def _merged(path: Path, seen: set[Path]) -> dict[str, Any]:
    seen.add(path.resolve())
    raw = _read(path)
    merged: dict[str, Any] = {}
    for included in _includes(path, raw, seen):
        below = _merged(included, seen)
        below.pop("task_list", None)  # as lm-eval does: a task list belongs to the file that names it
        merged.update(below)
    merged.update({k: v for k, v in raw.items() if k != "include"})
    return merged


def _write(source: Path, dest: Path, data_dir: Path, included_dir: Path, seen: set[Path],
           copied: list[Path]) -> None:
    text = source.read_text().replace("${data_dir}", str(data_dir))
    refs = []
    for included in _includes(source, _read(source, text), seen):
        copied.append(included)
        copy = included_dir / f"{len(copied)}-{included.parent.name}-{included.stem}_yaml"
        _write(included, copy, data_dir, included_dir, seen, copied)
        refs.append(os.path.relpath(copy, dest.parent))
    if refs:
        text = _point_includes(text, refs, source)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text)


def _point_includes(text: str, copies: list[str], source: Path) -> str:
    """``text`` with its ``include:`` entry replaced by ``copies``, checked by reading both back."""
    value: str | list[str] = copies[0] if len(copies) == 1 else copies
    text = text if text.endswith("\n") else text + "\n"  # the entry's pattern ends each line with its newline
    out = _INCLUDE_ENTRY.sub(lambda _m: f"include: {json.dumps(value)}\n", text, count=1)
    before, after = _read(source, text), _read(source, out)
    if after.get("include") != value or {**before, "include": value} != after:
        raise UsageError(f"Task file {source}: its include: entry could not be rewritten for lm-eval; write it "
                         "as one line (include: FILE or include: [FILE, ...]) or a block list under 'include:'.")
    return out
